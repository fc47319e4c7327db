"""The KPI job on real snapshot files: known answers, event time, determinism, probes, SRM,
metrics, the loop and the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingestor.kpi import (
    DAY_MS,
    KpiConfig,
    KpiMetrics,
    cli,
    compute,
    read_events,
    read_latest,
    run_every,
    run_once,
)
from ingestor.schema import RateEvent, RecoResponseEvent, WatchEvent
from ingestor.snapshot import COLUMNS, ValidRows, snapshot_key, to_parquet
from ingestor.stats import GateConfig
from model_registry.storage import BlobStore, open_store
from tests.helpers import REPO, start, stop

T0 = 1_764_547_200_000  # 2025-12-01 00:00 UTC
MIN = 60_000


def put(store: BlobStore, topic: str, events: list, partition: int = 0, first: int = 0) -> None:
    """One snapshot file holding `events` at offsets first.. (what the ingestor writes)."""
    rows = ValidRows(
        list(range(first, first + len(events))),
        events,
        [e.model_dump_json().encode() for e in events],
    )
    key = snapshot_key(topic, partition, first, first + len(events) - 1, events[0].ts)
    store.put(key, to_parquet(topic, partition, rows))


def served(
    user: int, items: list[int], ts: int, arm: str | None = "control", **kw
) -> RecoResponseEvent:
    model = kw.pop("model", "als")
    return RecoResponseEvent(
        user_id=user,
        items=items,
        ts=ts,
        arm=arm,
        model=model,
        version=kw.pop("version", "v0.1"),
        request_id=kw.pop("request_id", f"r{user}-{ts}"),
        **kw,
    )


def watch(user: int, movie: int, ts: int) -> WatchEvent:
    return WatchEvent(user_id=user, movie_id=movie, minute=1, ts=ts)


def rate(user: int, movie: int, rating: float, ts: int) -> RateEvent:
    return RateEvent(user_id=user, movie_id=movie, rating=rating, ts=ts)


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return open_store((tmp_path / "events").as_uri())


def known_answer_store(store: BlobStore) -> None:
    put(
        store,
        "reco_responses",
        [
            served(1, [10, 11, 12], T0),  # control: watches 12 (rank 3) within W -> hit
            served(1, [10, 11, 12], T0 + MIN),  # a second request: still one user
            served(2, [10, 11], T0),  # control: rates 10 with 3 (no), 11 after W (no)
            served(3, [20, 21], T0, arm="candidate", model="pop"),  # rates 20 with 4 -> hit
            served(4, [20, 21], T0, arm="candidate", model="pop"),  # watched 21 BEFORE: no
            served(5, [30], T0, arm="candidate", model="pop", probe=True),  # probe: left out
            served(6, [30], T0, arm=None),  # no arm: not in the experiment
        ],
    )
    put(
        store,
        "watch",
        [
            watch(1, 12, T0 + 5 * MIN),
            watch(1, 99, T0 + 6 * MIN),  # not served: not a hit
            watch(4, 21, T0 - MIN),
            watch(5, 30, T0 + MIN),  # the probe's "user"
            watch(2, 11, T0 + DAY_MS + MIN),  # after W
        ],
    )
    put(store, "rate", [rate(2, 10, 3.0, T0 + MIN), rate(3, 20, 4.0, T0 + 2 * MIN)])


def test_known_answer(store: BlobStore) -> None:
    known_answer_store(store)
    report = compute(read_events(store, T0), KpiConfig("exp", T0, catalogue_items=100))
    control, candidate = report["arms"]["control"], report["arms"]["candidate"]
    assert (control["users"], control["requests"], control["hit_users"]) == (2, 3, 1)
    assert control["hit_rate"] == 0.5 and control["hits"] == 1
    assert control["hits_per_exposure"] == pytest.approx(1 / 3)
    assert control["mean_hit_rank"] == 3  # the latest list before the watch, rank 3
    assert control["items_served"] == 3 and control["coverage"] == 0.03
    assert (candidate["users"], candidate["hit_users"], candidate["mean_hit_rank"]) == (2, 1, 1)
    assert report["excluded"] == {"probes": 1, "outside_arms": 1}
    assert set(report["arms"]) == {"control", "candidate"}
    models = {(m["model"], m["version"]): m["users"] for m in report["models"]}
    assert models == {("als", "v0.1"): 2, ("pop", "v0.1"): 2}
    assert report["as_of_ms"] == T0 + DAY_MS + MIN
    c = report["comparison"]
    assert c["verdict"] == "inconclusive" and "minimum sample" in c["reasons"][0]


def test_window_is_configurable(store: BlobStore) -> None:
    known_answer_store(store)
    wide = compute(read_events(store, T0), KpiConfig("exp", T0, window_ms=2 * DAY_MS))
    assert wide["arms"]["control"]["hit_users"] == 2  # user 2's late watch now counts
    narrow = compute(read_events(store, T0), KpiConfig("exp", T0, window_ms=MIN))
    assert narrow["arms"]["control"]["hit_users"] == 0


def _random_events(seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    responses, watches = [], []
    for user in range(1, 301):
        arm = "control" if user % 2 else "candidate"
        ts = T0 + int(rng.integers(0, 3600_000))
        items = [int(x) for x in rng.choice(np.arange(1, 200), 5, replace=False)]
        responses.append(served(user, items, ts, arm=arm))
        if rng.random() < 0.4:
            watches.append(
                watch(user, items[int(rng.integers(0, 5))], ts + int(rng.integers(0, 10 * MIN)))
            )
    return responses, watches


def test_late_and_out_of_order_events_and_replays_give_the_same_report(tmp_path: Path) -> None:
    responses, watches = _random_events(3)
    a = open_store((tmp_path / "a").as_uri())
    put(a, "reco_responses", responses)
    put(a, "watch", watches)
    b = open_store((tmp_path / "b").as_uri())
    # The same events, shuffled, in several files: watches arrive before the lists they hit
    # (another partition, or late), some files replayed (same offsets written twice).
    order = np.random.default_rng(4).permutation(len(watches))
    shuffled = [watches[i] for i in order]
    half = len(shuffled) // 2
    put(b, "watch", shuffled[:half], partition=0)
    put(b, "watch", shuffled[half:], partition=1)
    put(b, "watch", shuffled[half:], partition=1)  # a replay of the same offsets
    put(b, "reco_responses", responses[:150], partition=0, first=0)
    put(b, "reco_responses", responses[150:], partition=0, first=150)
    put(b, "reco_responses", responses[100:200], partition=0, first=100)  # overlapping replay
    config = KpiConfig("exp", T0)
    ra, rb = compute(read_events(a, T0), config), compute(read_events(b, T0), config)
    assert ra["arms"] == rb["arms"] and ra["comparison"] == rb["comparison"]
    assert ra["arms"]["control"]["users"] + ra["arms"]["candidate"]["users"] == 300
    # A re-run over the same snapshots writes the same report, byte for byte.
    first = run_once(b, config, lambda: 1.0, None)["report_key"]
    body = b.get(first)
    assert run_once(b, config, lambda: 2.0, None)["report_key"] == first
    assert b.get(first) == body
    assert read_latest(b, "exp")["generated_at"] == 2.0
    # New weights over the same snapshot (a rollout step): a new report beside, not over, it.
    moved = run_once(
        b, replace(config, weights={"control": 0.0, "candidate": 1.0}), lambda: 3.0, None
    )
    assert moved["report_key"] != first and moved["comparison"]["srm"] is None
    assert b.get(first) == body and read_latest(b, "exp")["report_key"] == moved["report_key"]


def test_old_snapshots_without_served_columns_are_read_from_payloads(store: BlobStore) -> None:
    known_answer_store(store)
    for f in [k for k in store.list("snapshots/reco_responses/")]:
        table = pq.read_table(pa.BufferReader(store.get(f)))
        old = table.select(
            [
                c
                for c in COLUMNS
                if c not in ("request_id", "items", "model", "version", "arm", "probe")
            ]
        )
        sink = pa.BufferOutputStream()
        pq.write_table(old, sink)
        store.put(f, sink.getvalue().to_pybytes())
    report = compute(read_events(store, T0), KpiConfig("exp", T0))
    assert report["arms"]["control"]["hit_users"] == 1
    assert report["excluded"] == {"probes": 1, "outside_arms": 1}


def test_exposures_before_the_start_are_not_counted(store: BlobStore) -> None:
    known_answer_store(store)
    report = compute(read_events(store, T0), KpiConfig("exp", T0 + 1))
    assert report["arms"]["control"]["users"] == 1  # only user 1's second request is after


def test_srm_and_verdict_in_the_report(store: BlobStore) -> None:
    rng = np.random.default_rng(5)
    responses, positives = [], []
    for user in range(1, 1601):
        arm = "candidate" if user % 4 == 0 else "control"  # 25/75 but configured 50/50
        ts = T0 + user
        responses.append(served(user, [1, 2, 3], ts, arm=arm))
        if rng.random() < 0.3:
            positives.append(watch(user, 2, ts + MIN))
    put(store, "reco_responses", responses)
    put(store, "watch", positives)
    gate = GateConfig(min_users=100, min_hits=10, margin=0.1)
    report = compute(read_events(store, T0), KpiConfig("exp", T0, gate=gate))
    c = report["comparison"]
    assert c["srm"]["flagged"] and c["srm"]["p_value"] < 1e-10
    assert c["verdict"] == "inconclusive" and "sample ratio mismatch" in c["reasons"][0]
    # The same data judged against the weights it was really served with: no SRM, a verdict.
    fair = KpiConfig("exp", T0, weights={"control": 3, "candidate": 1}, gate=gate)
    c = compute(read_events(store, T0), fair)["comparison"]
    assert not c["srm"]["flagged"] and c["verdict"] == "pass", c["reasons"]


def test_metrics_follow_the_report(store: BlobStore) -> None:
    known_answer_store(store)
    metrics = KpiMetrics()
    run_once(store, KpiConfig("exp", T0), lambda: 1.0, metrics)
    get = metrics.registry.get_sample_value
    assert get("marquee_kpi_users", {"experiment": "exp", "arm": "control"}) == 2
    assert get("marquee_kpi_hit_rate", {"experiment": "exp", "arm": "candidate"}) == 0.5
    assert get("marquee_kpi_hit_rate_ci_low", {"experiment": "exp", "arm": "control"}) < 0.5
    assert get("marquee_kpi_verdict", {"experiment": "exp", "verdict": "inconclusive"}) == 1
    assert get("marquee_kpi_srm_p_value", {"experiment": "exp"}) == 1.0
    assert get("marquee_kpi_runs_total", {"result": "ok"}) == 1


def test_loop_runs_on_the_injected_clock_and_survives_a_failed_run() -> None:
    now = [0.0]
    calls: list[float] = []
    waits: list[float] = []

    def job() -> None:
        calls.append(now[0])
        now[0] += 2.0  # each run takes 2 s of the fake clock
        if len(calls) == 2:
            raise OSError("store hiccup")

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        now[0] += seconds
        return len(calls) >= 4  # "SIGTERM" after the fourth run

    assert run_every(60.0, job, lambda: now[0], wait) == 4
    assert calls == [0.0, 60.0, 120.0, 180.0] and waits == [58.0] * 4


def test_cli_once_writes_reports(store: BlobStore, capsys: pytest.CaptureFixture) -> None:
    known_answer_store(store)
    argv = ["--store", store.uri, "--experiment", "exp", "--start", str(T0)]
    assert cli([*argv, "--min-users", "1", "--min-hits", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["users"] == {"candidate": 2, "control": 2} and out["verdict"] in (
        "pass",
        "fail",
        "inconclusive",
    )
    assert store.get(out["report"]) and read_latest(store, "exp")["experiment"] == "exp"
    assert cli([*argv, "--alpha", "2"]) == 2
    assert "alpha" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli([*argv, "--window", "a while"])
    assert exc.value.code == 2


def test_cli_reads_start_and_weights_from_the_control_plane(
    store: BlobStore, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from model_registry.control import ControlPlane
    from model_registry.registry import Registry

    registry = (tmp_path / "registry").as_uri()
    cp = ControlPlane(Registry.open(registry), clock=lambda: (T0 - 1) / 1000)
    arms = [
        {"name": "control", "model": "als", "weight": 5},
        {"name": "rest", "model": "als", "weight": 90},
        {"name": "candidate", "model": "popularity", "weight": 5},
    ]
    cp.set_experiment({"name": "exp", "salt": "s", "arms": arms}, by="test", reason="start")
    known_answer_store(store)
    argv = ["--store", store.uri, "--experiment", "exp", "--registry", registry]
    assert cli(argv) == 0
    report = read_latest(store, "exp")
    assert report["start_ms"] == T0 - 1 and report["comparison"]["weights"] == {
        "control": 5.0,
        "candidate": 5.0,
    }
    assert cli([*argv[:3], "other", *argv[4:]]) == 2
    assert "no experiment named 'other'" in capsys.readouterr().err


def test_sigterm_ends_the_loop_cleanly(store: BlobStore, tmp_path: Path) -> None:
    known_answer_store(store)
    log = tmp_path / "kpi.log"
    proc = start(
        [
            sys.executable,
            "-m",
            "ingestor",
            "kpi",
            "--store",
            store.uri,
            "--experiment",
            "exp",
            "--start",
            str(T0),
            "--every",
            "1s",
        ],
        log=log,
    )
    try:
        deadline = time.monotonic() + 30
        while read_latest(store, "exp") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read_latest(store, "exp") is not None, log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
    finally:
        stop(proc)
    assert "stopped cleanly" in log.read_text()


def test_main_dispatches_kpi() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ingestor", "kpi", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "--experiment" in out.stdout


def test_served_lists_are_typed_snapshot_columns(store: BlobStore) -> None:
    known_answer_store(store)
    [key] = store.list("snapshots/reco_responses/")
    table = pq.read_table(pa.BufferReader(store.get(key)))
    assert table.schema.field("items").type == pa.list_(pa.int64())
    rows = table.select(["request_id", "items", "model", "version", "arm", "probe"]).to_pylist()
    assert rows[0] == {
        "request_id": f"r1-{T0}",
        "items": [10, 11, 12],
        "model": "als",
        "version": "v0.1",
        "arm": "control",
        "probe": False,
    }
    assert [r["probe"] for r in rows] == [False] * 5 + [True, False]
    [rate_key] = store.list("snapshots/rate/")
    rates = pq.read_table(pa.BufferReader(store.get(rate_key)), columns=["items", "arm", "probe"])
    assert rates.column("arm").null_count == rates.num_rows == 2
