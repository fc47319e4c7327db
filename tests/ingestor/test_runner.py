"""The ingest loop over memory source and store: batching, dead letters, commits, replay."""

from __future__ import annotations

import io
import itertools
import json
import threading

import pyarrow.parquet as pq
import pytest

from ingestor.runner import Ingestor
from ingestor.snapshot import durable_ranges, list_snapshots, snapshot_id
from ingestor.source import MemorySource, Record
from model_registry.errors import StorageError
from model_registry.storage import MemoryStore

TS = 1763650561609
KINDS = {"rate": "rate", "watch": "watch"}


def rate(offset: int, partition: int = 0, user: int = 1, bad: bool = False) -> Record:
    value = (
        b"{broken"
        if bad
        else json.dumps(
            {"user_id": user, "movie_id": offset + 1, "rating": 4, "ts": TS + offset}
        ).encode()
    )
    return Record("rate", partition, offset, value)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def offsets_in_store(store: MemoryStore) -> list[tuple[str, int, int]]:
    out = []
    for f in list_snapshots(store):
        table = pq.read_table(io.BytesIO(store.get(f.key)))
        out += zip(
            table["topic"].to_pylist(),
            table["partition"].to_pylist(),
            table["offset"].to_pylist(),
            strict=True,
        )
    return sorted(out)


def make(store: MemoryStore, **kw) -> Ingestor:
    return Ingestor(store, KINDS, clock=kw.pop("clock", Clock()), sleep=lambda s: None, **kw)


def test_size_flush_writes_deterministic_keys_and_commits_after() -> None:
    store = MemoryStore("size")
    source = MemorySource([rate(i) for i in range(10)])
    ing = make(store, batch_size=4)
    ing.source = source
    while ing.step():
        pass
    ing.complete_writes(wait=True)
    keys = [f.key for f in list_snapshots(store)]
    assert keys == [
        "snapshots/rate/date=2025-11-20/part-00000-00000000000000000000-00000000000000000003.parquet",
        "snapshots/rate/date=2025-11-20/part-00000-00000000000000000004-00000000000000000007.parquet",
    ]
    assert source.committed == {("rate", 0): 8}  # 8 and 9 still buffered: not committed
    ing.flush_all()
    assert source.committed == {("rate", 0): 10}
    assert offsets_in_store(store) == [("rate", 0, i) for i in range(10)]


def test_time_flush_uses_the_injected_clock() -> None:
    store, clock = MemoryStore("time"), Clock()
    source = MemorySource([rate(0), rate(1)])
    ing = make(store, batch_size=100, flush_seconds=30, clock=clock)
    ing.source = source
    ing.step()
    ing.complete_writes(wait=True)
    assert source.committed == {} and list_snapshots(store) == []
    clock.now = 31
    ing.step()
    ing.complete_writes(wait=True)
    assert source.committed == {("rate", 0): 2}


def test_dead_letters_keep_partition_offset_raw_and_reason() -> None:
    store = MemoryStore("dlq")
    source = MemorySource([rate(0), rate(1, bad=True), Record("rate", 0, 2, b"\xff\x00"), rate(3)])
    ing = make(store, batch_size=100)
    ing.source = source
    ing.step()
    ing.flush_all()
    dlq = store.get("dlq/rate/part-00000-00000000000000000000-00000000000000000003.jsonl")
    lines = [json.loads(x) for x in dlq.decode().splitlines()]
    assert [(x["offset"], x["reason"], x["raw_encoding"]) for x in lines] == [
        (1, "bad_json", "utf-8"),
        (2, "not_utf8", "base64"),
    ]
    assert lines[1]["raw"] == "/wA="
    assert offsets_in_store(store) == [("rate", 0, 0), ("rate", 0, 3)]
    metrics = ing.metrics
    assert metrics.invalid.labels("rate", "bad_json")._value.get() == 1


def test_store_outage_retries_keeps_buffer_and_does_not_commit() -> None:
    class Flaky(MemoryStore):
        failures = 3

        def put(self, key: str, data: bytes) -> None:
            if self.failures:
                self.failures -= 1
                raise StorageError("S3 is down")
            super().put(key, data)

    store = Flaky("flaky")
    commits_seen_during_outage = []
    source = MemorySource([rate(i) for i in range(3)])
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        commits_seen_during_outage.append(dict(source.committed))

    ing = Ingestor(store, KINDS, batch_size=3, clock=Clock(), sleep=sleep)
    ing.source = source
    ing.step()
    ing.complete_writes(wait=True)
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff
    assert all(c == {} for c in commits_seen_during_outage)
    assert source.committed == {("rate", 0): 3}
    assert ing.metrics.store_errors._value.get() == 3
    assert offsets_in_store(store) == [("rate", 0, i) for i in range(3)]


def test_crash_replay_writes_every_event_exactly_once() -> None:
    store = MemoryStore("crash")
    records = [rate(i, p) for p in range(3) for i in range(50)]
    source = MemorySource(records)
    first = make(store, batch_size=7)
    first.source = source
    first.step(max_records=80)  # then "crash": buffers lost, nothing else flushed
    first.complete_writes(wait=True)
    # A second crash window: a batch written but its commit lost (marker exists, offset not).
    source.committed = {tp: max(0, o - 7) for tp, o in source.committed.items()}
    source.rewind_to_committed()
    second = make(store, batch_size=5)  # a different batch size: boundaries differ on replay
    second.on_assign([("rate", p) for p in range(3)])
    second.source = source
    while second.step():
        pass
    second.flush_all()
    assert offsets_in_store(store) == sorted(("rate", p, i) for p in range(3) for i in range(50))
    assert second.metrics.skipped.labels("rate")._value.get() > 0
    ranges = durable_ranges(store, "rate")
    for spans in ranges.values():  # no overlaps, no gaps
        assert spans[0][0] == 0 and spans[-1][1] == 49
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))


def test_revoke_flushes_without_committing() -> None:
    store = MemoryStore("revoke")
    source = MemorySource([rate(0, 0), rate(0, 1)])
    ing = make(store, batch_size=100)
    ing.source = source
    ing.step()
    ing.on_revoke([("rate", 1)])
    assert source.committed == {} and set(ing.batches) == {("rate", 0)}
    assert durable_ranges(store, "rate") == {1: [(0, 0)]}  # the next owner will skip it
    assert durable_ranges(store, "rate", 1) == {1: [(0, 0)]}  # what that owner lists
    assert durable_ranges(store, "rate", 0) == durable_ranges(store, "rate", 10) == {}


def test_snapshot_id_changes_with_content() -> None:
    store = MemoryStore("sid")
    ing = make(store, batch_size=2)
    ing.source = MemorySource([rate(i) for i in range(4)])
    ing.step()
    ing.complete_writes(wait=True)
    files = list_snapshots(store)
    first = snapshot_id(store, files)
    assert first == snapshot_id(store, list(reversed(files))) and first.startswith("snapshot-")
    assert snapshot_id(store, files[:1]) != first
    assert list_snapshots(store, "rate", since="2030-01-01") == []


class GatedStore(MemoryStore):
    """put() waits until the test opens the gate: a slow or stalled store."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = threading.Event()
        self.started = 0

    def put(self, key: str, data: bytes) -> None:
        self.started += 1
        assert self.gate.wait(10), "test never opened the gate"
        super().put(key, data)


def test_offsets_are_committed_only_once_the_background_write_is_done() -> None:
    store = GatedStore("gated")
    source = MemorySource([rate(i) for i in range(4)])
    ing = make(store, batch_size=4)
    ing.source = source
    assert ing.step() == 4  # the batch is full and handed to the writer; the loop goes on
    ing.complete_writes()
    assert source.committed == {} and list_snapshots(store) == []
    store.gate.set()
    ing.complete_writes(wait=True)
    assert source.committed == {("rate", 0): 4}
    written = sum(len(store.get(k)) for k in store.list(""))
    assert ing.metrics.bytes._value.get() == written > 0


def test_a_stalled_store_stops_consumption_after_max_pending_writes() -> None:
    store = GatedStore("stalled")
    source = MemorySource([rate(i) for i in range(20)])
    ing = make(store, batch_size=2, max_pending_writes=1)
    ing.source = source
    loop = threading.Thread(target=ing.step)
    loop.start()
    loop.join(0.3)
    assert loop.is_alive()  # blocked in flush(), not buffering all 20 events
    assert source.position == 20 and len(ing._pending) == 2  # one writing, one waiting
    assert ing.metrics.consumed.labels("rate")._value.get() == 20  # published before blocking
    store.gate.set()
    loop.join(10)
    ing.flush_all()
    assert ing.metrics.valid.labels("rate")._value.get() == 20  # none lost to that early publish
    assert offsets_in_store(store) == [("rate", 0, i) for i in range(20)]
    assert source.committed == {("rate", 0): 20}


def test_revoke_returns_only_once_the_partitions_writes_are_durable() -> None:
    store = GatedStore("revoke-wait")
    source = MemorySource([rate(0, 0), rate(1, 0), rate(0, 1)])
    ing = make(store, batch_size=2)
    ing.source = source
    ing.step()  # partition 0's batch is full: writing; partition 1's is open
    revoke = threading.Thread(target=ing.on_revoke, args=([("rate", 0), ("rate", 1)],))
    revoke.start()
    revoke.join(0.3)
    assert revoke.is_alive()
    store.gate.set()
    revoke.join(10)
    assert durable_ranges(store, "rate") == {0: [(0, 1)], 1: [(0, 0)]}
    ing.complete_writes(wait=True)
    assert source.committed == {}  # revoked: the next owners commit past the markers


def test_skipping_a_durable_range_commits_after_the_write_before_it() -> None:
    store = GatedStore("order")
    store.gate.set()
    ing = make(store, batch_size=100)
    ing.source = MemorySource([rate(i) for i in range(5, 10)])
    ing.step()
    ing.flush_all()  # a previous owner's batch [5..9] and its marker
    source = MemorySource([rate(i) for i in range(12)])
    replay = make(store, batch_size=100)
    replay.on_assign([("rate", 0)])
    replay.source = source
    store.gate.clear()
    replay.step()  # 0..4 are new (written), 5..9 skipped, 10..11 open
    replay.complete_writes()
    assert source.committed == {}  # 10 is not committed before [0..4] is durable
    store.gate.set()
    replay.complete_writes(wait=True)
    assert source.committed == {("rate", 0): 10}
    replay.flush_all()
    assert durable_ranges(store, "rate") == {0: [(0, 4), (5, 9), (10, 11)]}
    assert offsets_in_store(store) == [("rate", 0, i) for i in range(12)]


def test_a_writer_bug_is_raised_on_the_loop_thread() -> None:
    class Broken(MemoryStore):
        def put(self, key: str, data: bytes) -> None:
            raise RuntimeError("bug in the store")

    source = MemorySource([rate(0)])
    ing = make(Broken("broken"), batch_size=1)
    ing.source = source
    with pytest.raises(RuntimeError, match="bug in the store"):
        ing.step()  # raised here if the write already failed, else on the wait below
        ing.complete_writes(wait=True)
    assert source.committed == {}
