"""The whole retrain loop with real parts: Kafka-protocol broker (Tansu) -> `python -m ingestor`
-> S3 (moto over HTTP) -> `python -m trainer retrain --promote` -> two `python -m recommender`
replicas following the control plane.

A small MovieLens-shaped history (synthetic, with genres) is replayed by time with
scripts/replay_movielens.py: the first 80 % -> retrain -> both replicas serve v0.1; the rest, with
a genre surge injected -> drift flagged -> retrain -> gate passes -> v0.2 everywhere; with the
last events, a sabotaged candidate (ALS with shuffled item factors) is refused and production
stays; `model_registry
rollback` takes both replicas back to v0.1. Phase timings are printed (-s) for the README.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from model_registry.control import ControlPlane
from model_registry.registry import Registry
from model_registry.storage import open_store
from scripts.bench_train import synthetic, write_ml100k
from tests.helpers import REPO, free_port, python, start, stop, wait_for_http
from tests.integration.test_ingest_kafka import all_durable, create_topic
from tests.trainer.test_retrain import _shuffled_als
from trainer.__main__ import main as trainer_main
from trainer.models import MODELS

KINDS = "popularity,itemcf,als"
SURGE_GENRE = "Horror"


def _histories(root: Path) -> tuple[Path, Path, Path]:
    """The first 80 % by time; the next 12 % with a genre surge; the last 8 %."""
    ratings, items = synthetic(800, 400, 24_000, seed=11)
    ratings = ratings.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut, cut2 = int(len(ratings) * 0.8), int(len(ratings) * 0.92)
    rest = ratings.iloc[cut:cut2].copy()
    rng = np.random.default_rng(0)
    horror = items[items["genres"].str.contains(SURGE_GENRE)]["item_id"].to_numpy()
    rows = rng.choice(len(rest), size=int(0.35 * len(rest)), replace=False)
    rest.iloc[rows, rest.columns.get_loc("item_id")] = rng.choice(horror, size=rows.size)
    rest = rest.drop_duplicates(["user_id", "item_id"], keep="last")
    return (
        write_ml100k(root / "first", ratings.iloc[:cut], items),
        write_ml100k(root / "surge", rest, items),
        write_ml100k(root / "last", ratings.iloc[cut2:], items),
    )


def _end_offsets(brokers: str, topics: list[str]) -> dict[str, dict[int, int]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=brokers)
    try:
        out: dict[str, dict[int, int]] = {}
        for topic in topics:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            for tp, end in consumer.end_offsets(parts).items():
                if end > 0:
                    out.setdefault(topic, {})[tp.partition] = end - 1  # last offset written
        return out
    finally:
        consumer.close()


def _replay(folder: Path, brokers: str, topics: dict[str, str]) -> None:
    subprocess.run(
        [python(), "scripts/replay_movielens.py", "--data", str(folder), "--brokers", brokers,
         "--rate-topic", topics["rate"], "--watch-topic", topics["watch"]],
        cwd=REPO, check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def _ingested(store_uri: str, brokers: str, topics: dict[str, str], timeout: float = 90) -> None:
    store = open_store(store_uri)
    last = _end_offsets(brokers, list(topics.values()))
    deadline = time.monotonic() + timeout
    while not all(all_durable(store, t, last[t]) for t in last):
        assert time.monotonic() < deadline, "the ingestor did not make every event durable"
        time.sleep(0.5)


def _version(base: str) -> str:
    with urllib.request.urlopen(f"{base}/version", timeout=5) as resp:
        return json.loads(resp.read())["version"]


def _metrics(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines)
        if name.startswith(("marquee_release_", "marquee_control_sync_seconds"))
    }


def _polled_since(bases: list[str], since: float, timeout: float = 20) -> None:
    """Until every replica's last successful control-plane poll is newer than `since`."""
    while True:
        elapsed = time.monotonic() - since
        ages = [_metrics(b).get("marquee_control_sync_seconds", float("inf")) for b in bases]
        if all(age < elapsed for age in ages):
            return
        assert elapsed < timeout, ages
        time.sleep(0.2)


def _converge(bases: list[str], version: str, timeout: float = 20) -> float:
    """Seconds until every replica's active release is `version`."""
    started = time.monotonic()
    while True:
        if all(_version(b) == version for b in bases):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, [_version(b) for b in bases]
        time.sleep(0.2)


def _retrain(snapshots: str, registry: str, catalogue: Path) -> subprocess.CompletedProcess:
    """Titles and genres from a MovieLens folder: snapshots carry ids only (later releases
    would inherit them from production's catalogue)."""
    return subprocess.run(
        [python(), "-m", "trainer", "retrain", "--snapshots", snapshots, "--registry", registry,
         "--kinds", KINDS, "--promote", "--by", "e2e", "--catalogue", str(catalogue)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_replay_ingest_retrain_gate_promote_refuse_rollback(
    kafka_broker: str, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAIN_GATE_MIN_USERS", "50")
    monkeypatch.setenv("TRAIN_LOG_LEVEL", "WARNING")
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    first, rest, last = _histories(tmp_path)
    suffix = uuid.uuid4().hex[:8]
    topics = {"rate": f"rate_{suffix}", "watch": f"watch_{suffix}"}
    for topic in topics.values():
        create_topic(kafka_broker, topic, 2)
    snapshots, registry = f"s3://{s3_bucket}/events", f"s3://{s3_bucket}/registry"
    ingestor = start(
        [python(), "-m", "ingestor"],
        env={
            "INGEST_BROKERS": kafka_broker,
            "INGEST_TOPICS": f"{topics['rate']}=rate,{topics['watch']}=watch",
            "INGEST_GROUP": f"g-{suffix}",
            "INGEST_STORE": snapshots,
            "INGEST_BATCH_SIZE": "5000",
            "INGEST_FLUSH_SECONDS": "1",
            "INGEST_LOG_LEVEL": "WARNING",
        },
        log=tmp_path / "ingestor.log",
    )
    replicas: list = []
    try:
        lap("setup")
        _replay(first, kafka_broker, topics)
        _ingested(snapshots, kafka_broker, topics)
        lap("replay_and_ingest_80pct")
        proc = _retrain(snapshots, registry, first)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lap("retrain_v0.1")
        control = ControlPlane.open(registry)
        assert control.pointer().data["version"] == "v0.1"

        bases = []
        for name in ("a", "b"):
            port = free_port()
            replicas.append(
                start(
                    [python(), "-m", "recommender", "--registry", registry, "--port", str(port)],
                    env={"REC_SYNC_SECONDS": "1", "REC_REPLICA_ID": f"replica-{name}"},
                    log=tmp_path / f"replica-{name}.log",
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        for proc_, base in zip(replicas, bases, strict=True):
            wait_for_http(f"{base}/readyz", timeout=60, proc=proc_)
        assert [_version(b) for b in bases] == ["v0.1", "v0.1"]
        lap("replicas_up")

        _replay(rest, kafka_broker, topics)
        _ingested(snapshots, kafka_broker, topics)
        lap("replay_and_ingest_rest")
        proc = _retrain(snapshots, registry, first)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lap("retrain_v0.2")
        manifest = Registry.open(registry).manifest("v0.2")
        drift, gate = manifest["drift"], manifest["gate"]
        assert drift["flagged"] and "genre_mix" in drift["flagged_tests"], json.dumps(drift)
        mix = drift["tests"]["genre_mix"]
        assert mix["current"][SURGE_GENRE] > 2 * mix["reference"][SURGE_GENRE]
        assert gate["verdict"] == "pass" and gate["against"] == "v0.1"
        timings["converge_v0.2_s"] = round(_converge(bases, "v0.2"), 1)
        clock = time.monotonic()
        with urllib.request.urlopen(f"{bases[0]}/version", timeout=5) as resp:
            served = json.loads(resp.read())  # the manifest, gate and drift blocks included
        assert served["gate"]["verdict"] == "pass" and served["drift"]["flagged"]
        metrics = _metrics(bases[1])  # the active release's drift report, as gauges
        assert metrics["marquee_release_drift_flagged"] == 1
        assert metrics['marquee_release_drift_score{test="genre_mix"}'] > 1
        assert 0 < metrics["marquee_release_age_seconds"] < 3600

        # A sabotaged candidate on newer events: refused, published as refused, production stays.
        _replay(last, kafka_broker, topics)
        _ingested(snapshots, kafka_broker, topics)
        monkeypatch.setitem(MODELS, "als", _shuffled_als(MODELS["als"]))
        code = trainer_main(
            ["retrain", "--snapshots", snapshots, "--registry", registry, "--kinds", KINDS,
             "--promote", "--by", "e2e"]
        )  # fmt: skip
        assert code == 3
        refused = Registry.open(registry).manifest("v0.3")["gate"]
        assert refused["decision"] == "refuse" and refused["against"] == "v0.2"
        assert refused["comparisons"]["als"]["verdict"] == "fail"  # the statistics, not a count
        assert not any("minimum" in r for r in refused["reasons"]), refused["reasons"]
        assert control.pointer().data["version"] == "v0.2"
        lap("sabotaged_refused")
        _polled_since(bases, time.monotonic())  # each replica read the control plane again
        assert [_version(b) for b in bases] == ["v0.2", "v0.2"]

        rollback = subprocess.run(
            [python(), "-m", "model_registry", "--registry", registry, "rollback",
             "--reason", "e2e: back to the previous release"],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert rollback.returncode == 0, rollback.stderr
        assert control.pointer().data["version"] == "v0.1"
        timings["converge_rollback_s"] = round(_converge(bases, "v0.1"), 1)
        print(f"\nretrain e2e timings (s): {json.dumps(timings)}")
    finally:
        for proc_ in (*replicas, ingestor):
            stop(proc_)
