"""The control plane's record protocol: chains, conflicts, lagging hints, crashes, history pages."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from model_registry.control import POINTER, ControlPlane, Record
from model_registry.errors import Conflict, InvalidControl, ReleaseNotFound
from model_registry.registry import Registry
from model_registry.storage import BlobStore, MemoryStore, open_store

EXPERIMENT = {
    "name": "exp",
    "salt": "s",
    "arms": [
        {"name": "control", "model": "als", "weight": 50},
        {"name": "treatment", "model": "ncf", "weight": 50},
    ],
}


def fake_release(store: BlobStore, version: str) -> None:
    """Just enough of a release for the pointer: a manifest (content is not loaded here)."""
    store.put(f"{version}/manifest.json", json.dumps({"version": version, "parts": {}}).encode())


def _plane(versions: int = 4, clock=None) -> ControlPlane:
    store = MemoryStore(uuid.uuid4().hex)
    for minor in range(1, versions + 1):
        fake_release(store, f"v0.{minor}")
    return ControlPlane(Registry(store), **({"clock": clock} if clock else {}))


def _chain_ok(records: list[Record]) -> bool:
    """Newest first: every record's `from` is the next older record's `to`."""
    return all(
        newer.previous == older.data and newer.seq == older.seq + 1
        for newer, older in itertools.pairwise(records)
    )


def test_promote_appends_numbered_records_with_who_when_why() -> None:
    ticks = iter(range(100, 200))
    cp = _plane(clock=lambda: float(next(ticks)))
    assert cp.pointer() is None
    first = cp.promote("v0.1", by="alice", reason="first")
    second = cp.promote("v0.2", by="bob", reason="better")
    assert (first.seq, second.seq) == (1, 2)
    assert second.to_json()["from"] == "v0.1" and second.to_json()["to"] == "v0.2"
    assert (second.by, second.reason, second.at) == ("bob", "better", 101.0)
    assert cp.pointer() == second
    records, cursor = cp.history(POINTER)
    assert [r.seq for r in records] == [2, 1] and cursor is None


def test_stale_writer_gets_a_conflict_naming_the_current_state() -> None:
    cp = _plane()
    cp.promote("v0.1", by="a", reason="")
    read = cp.pointer().seq
    cp.promote("v0.2", by="b", reason="")  # someone else got there first
    with pytest.raises(Conflict, match=r"v0\.2") as info:
        cp.promote("v0.3", by="a", reason="", expected_seq=read)
    assert info.value.current.data["version"] == "v0.2"
    assert cp.pointer().data["version"] == "v0.2"  # nothing written


def test_unknown_or_incomplete_release_and_bad_actor_are_refused() -> None:
    cp = _plane(versions=1)
    with pytest.raises(ReleaseNotFound):
        cp.promote("v0.9", by="a", reason="")
    for bad in ("", "a@evil.example", "x" * 65, "with space", "new\nline"):
        with pytest.raises(InvalidControl):
            cp.promote("v0.1", by=bad, reason="")
    with pytest.raises(InvalidControl):
        cp.promote("v0.1", by="a", reason="r" * 501)
    assert cp.pointer() is None


def test_readers_walk_past_a_lagging_head_and_skip_unreadable_records() -> None:
    cp = _plane()
    cp.promote("v0.1", by="a", reason="")
    cp.promote("v0.2", by="a", reason="")
    cp.store.put("control/pointer/HEAD", b'{"seq": 1}')  # a writer died before the hint
    assert cp.head_seq(POINTER) == 2
    assert ControlPlane(cp.registry).pointer().data["version"] == "v0.2"
    cp.store.delete("control/pointer/HEAD")  # no hint at all: one listing of the stream
    assert ControlPlane(cp.registry).pointer().data["version"] == "v0.2"
    # A corrupt newest record: readers fall back to the newest readable one, counted.
    cp.store.put_if_absent("control/pointer/000000000003.json", b"{not json")
    fresh = ControlPlane(cp.registry)
    assert fresh.pointer().data["version"] == "v0.2" and fresh.unreadable == 1
    # ... and a writer appends after it, so the chain continues from the readable state.
    record = fresh.promote("v0.3", by="a", reason="")
    assert record.seq == 4 and record.previous == {"version": "v0.2"}


def test_history_pages_cost_their_limit_not_the_history() -> None:
    cp = _plane()
    for i in range(30):
        cp.promote(f"v0.{1 + i % 4}", by="a", reason=str(i))
    reads = []
    original = cp.store.get
    cp.store.get = lambda key: reads.append(key) or original(key)  # type: ignore[method-assign]
    cp._cache.clear()
    page, cursor = cp.history(POINTER, limit=5)
    assert [r.seq for r in page] == [30, 29, 28, 27, 26] and cursor == 26
    assert len(reads) <= 5 + 2  # five records, the HEAD hint, nothing listed
    page2, _ = cp.history(POINTER, limit=5, before=cursor)
    assert [r.seq for r in page2] == [25, 24, 23, 22, 21]
    assert _chain_ok(page + page2)


def test_rollback_goes_to_the_previous_release_and_not_back_again() -> None:
    cp = _plane()
    for version in ("v0.1", "v0.2", "v0.3"):
        cp.promote(version, by="a", reason="")
    assert cp.rollback(by="a", reason="bad").data["version"] == "v0.2"
    assert cp.rollback(by="a", reason="also bad").data["version"] == "v0.1"  # not v0.3 again
    assert cp.rollback(by="a", reason="x", to="v0.3").data["version"] == "v0.3"
    empty = _plane()
    with pytest.raises(InvalidControl, match="nothing to roll back"):
        empty.rollback(by="a", reason="")


def test_experiment_weights_apply_to_the_current_record() -> None:
    cp = _plane()
    with pytest.raises(InvalidControl, match="no experiment"):
        cp.set_weights({"control": 1, "treatment": 1}, by="a", reason="")
    cp.set_experiment(EXPERIMENT, by="a", reason="start")
    record = cp.set_weights({"control": 90, "treatment": 10}, by="b", reason="ramp")
    assert [a["weight"] for a in record.data["arms"]] == [90, 10]
    assert record.data["salt"] == "s" and record.previous["arms"][0]["weight"] == 50
    for bad in ({"control": 1}, {"control": -1, "treatment": 1}, {"control": 0, "treatment": 0},
                {"control": float("nan"), "treatment": 1}):
        with pytest.raises(InvalidControl):
            cp.set_weights(bad, by="a", reason="")
    with pytest.raises(InvalidControl, match=r"v0\.9 not found"):
        cp.set_experiment({**EXPERIMENT, "arms": [{"name": "x", "model": "v0.9/als",
                                                   "weight": 1}]}, by="a", reason="")
    assert cp.experiment().seq == 2


def test_concurrent_writers_on_disk_never_lose_an_update(tmp_path: Path) -> None:
    """Eight threads promote through their own ControlPlane objects on one file store."""
    store = open_store((tmp_path / "reg").as_uri())
    for minor in (1, 2):
        fake_release(store, f"v0.{minor}")
    conflicts = []

    def writer(n: int) -> None:
        cp = ControlPlane(Registry(open_store((tmp_path / "reg").as_uri())))
        for i in range(10):
            version = f"v0.{1 + (n + i) % 2}"
            if i % 3 == 0:  # some writers insist on what they read
                try:
                    cp.promote(version, by=f"w{n}", reason=str(i),
                               expected_seq=cp.head_seq(POINTER))
                except Conflict:
                    conflicts.append(n)
            else:
                cp.promote(version, by=f"w{n}", reason=str(i))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records, _ = ControlPlane(Registry(store)).history(POINTER, limit=1000)
    assert len(records) == 80 - len(conflicts)
    assert [r.seq for r in records] == list(range(len(records), 0, -1))
    assert _chain_ok(records)


class CrashingStore(MemoryStore):
    """A memory store whose writes can fail (before or after taking effect) on demand."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.fail: str | None = None  # "before": nothing written; "after": written, then error

    def put(self, key: str, data: bytes) -> None:
        self._maybe("before")
        super().put(key, data)
        self._maybe("after")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self._maybe("before")
        created = super().put_if_absent(key, data)
        self._maybe("after")
        return created

    def _maybe(self, when: str) -> None:
        if self.fail == when:
            from model_registry.errors import StorageError

            self.fail = None
            raise StorageError(f"injected failure {when} the write")


class RecordProtocol(RuleBasedStateMachine):
    """Writers with stale or fresh reads, crashes before/after a record or its hint: the
    newest record is always the last successful write, and the chain never breaks."""

    def __init__(self) -> None:
        super().__init__()
        self.store = CrashingStore(uuid.uuid4().hex)
        for minor in range(1, 4):
            fake_release(self.store, f"v0.{minor}")
        self.writers = [ControlPlane(Registry(self.store)) for _ in range(3)]
        self.read_seq = [0, 0, 0]
        self.acknowledged: list[str] = []
        self.maybe_written: set[str] = set()

    @rule(w=st.integers(0, 2))
    def read(self, w: int) -> None:
        self.read_seq[w] = self.writers[w].head_seq(POINTER)

    @rule(w=st.integers(0, 2), minor=st.integers(1, 3), stale=st.booleans(),
          crash=st.sampled_from([None, "before", "after"]))
    def promote(self, w: int, minor: int, stale: bool, crash: str | None) -> None:
        from model_registry.errors import StorageError

        self.store.fail = crash
        version = f"v0.{minor}"
        try:
            self.writers[w].promote(version, by=f"w{w}", reason="",
                                    expected_seq=self.read_seq[w] if stale else None)
            self.acknowledged.append(version)
        except Conflict:
            pass
        except StorageError:
            self.maybe_written.add(version)  # the truth is in the store; readers follow it
        self.store.fail = None

    @invariant()
    def newest_is_a_real_write_and_the_chain_holds(self) -> None:
        fresh = ControlPlane(Registry(self.store))
        records, _ = fresh.history(POINTER, limit=1000)
        assert [r.seq for r in records] == list(range(len(records), 0, -1))
        assert _chain_ok(records)
        if records:
            assert records[0].data["version"] in set(self.acknowledged) | self.maybe_written
        assert len(records) >= len(self.acknowledged)


TestRecordProtocol = RecordProtocol.TestCase
TestRecordProtocol.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_file_store_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    from model_registry.errors import StorageError

    root = tmp_path / "reg"
    store = open_store(root.as_uri())
    fake_release(store, "v0.1")
    cp = ControlPlane(Registry(store))
    cp.promote("v0.1", by="a", reason="")
    shutil.rmtree(root / "control" / "pointer")
    (root / "control" / "pointer").write_text("not a folder")  # the disk refuses the write
    with pytest.raises(StorageError):
        cp.store.put_if_absent("control/pointer/000000000002.json", b"{}")


def test_a_release_the_gate_refused_needs_force_and_is_recorded_as_forced() -> None:
    cp = _plane()
    cp.promote("v0.1", by="a", reason="")
    cp.store.put("v0.2/manifest.json", json.dumps(
        {"version": "v0.2", "parts": {}, "gate": {"decision": "refuse"}}).encode())
    with pytest.raises(InvalidControl, match="refused by the gate"):
        cp.promote("v0.2", by="a", reason="")
    assert cp.promote("v0.2", by="a", reason="read the numbers", force=True).action == (
        "promote-forced")
    assert cp.rollback(by="a", reason="").data["version"] == "v0.1"
    with pytest.raises(InvalidControl, match="refused by the gate"):
        cp.rollback(by="a", reason="", to="v0.2")  # named by hand: the gate applies
    assert cp.rollback(by="a", reason="", to="v0.2", force=True).action == "rollback-forced"
