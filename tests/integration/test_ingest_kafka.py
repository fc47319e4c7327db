"""The ingestor against a real Kafka-protocol broker (Tansu) and a real S3 server (moto, HTTP)."""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ingestor.runner import Ingestor
from ingestor.snapshot import durable_ranges, list_snapshots
from ingestor.source import KafkaSource
from model_registry.registry import Registry
from model_registry.storage import BlobStore, open_store
from tests.helpers import REPO, python, start, stop

FAST_GROUP = {
    "session_timeout_ms": 6000,
    "max_poll_interval_ms": 5000,
    "heartbeat_interval_ms": 1000,
}
TS = 1763650561609


def create_topic(brokers: str, name: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=brokers)
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    admin.close()


def produce(brokers: str, topic: str, values: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Send (key, value) pairs; returns the last offset written per partition."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=brokers, linger_ms=20, batch_size=512 * 1024, acks=1)
    futures = [producer.send(topic, key=k, value=v) for k, v in values]
    producer.flush()
    last: dict[int, int] = {}
    for f in futures:
        meta = f.get(timeout=30)
        last[meta.partition] = max(last.get(meta.partition, -1), meta.offset)
    producer.close()
    return last


def stored_offsets(store: BlobStore, topic: str) -> list[tuple[int, int]]:
    out = []
    for f in list_snapshots(store, topic):
        table = pq.read_table(io.BytesIO(store.get(f.key)), columns=["partition", "offset"])
        out += zip(table["partition"].to_pylist(), table["offset"].to_pylist(), strict=True)
    return out


def dead_offsets(store: BlobStore, topic: str) -> list[tuple[int, int, str]]:
    out = []
    for key in store.list(f"dlq/{topic}/"):
        for line in store.get(key).decode().splitlines():
            row = json.loads(line)
            out.append((row["partition"], row["offset"], row["reason"]))
    return out


def all_durable(store: BlobStore, topic: str, last: dict[int, int]) -> bool:
    ranges = durable_ranges(store, topic)
    return all(any(a <= end <= b for a, b in ranges.get(p, [])) for p, end in last.items())


def _events(n: int, bad_every: int) -> tuple[list[tuple[bytes, bytes]], set[int]]:
    values, bad = [], set()
    for i in range(n):
        if bad_every and i % bad_every == 7:
            junk = b'{"user_id": "oops"}' if (i // bad_every) % 2 else b"\xff\xfe"
            values.append((str(i).encode(), junk))
            bad.add(i)
        else:
            values.append(
                (
                    str(i).encode(),
                    json.dumps(
                        {"user_id": 1 + i % 500, "movie_id": 1 + i, "rating": 4, "ts": TS + i}
                    ).encode(),
                )
            )
    return values, bad


def test_kafka_to_s3_end_to_end(kafka_broker: str, s3_bucket: str) -> None:
    topic = f"rate_{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic, 2)
    values, bad = _events(3000, bad_every=50)
    last = produce(kafka_broker, topic, values)
    store = open_store(f"s3://{s3_bucket}/events")
    ingestor = Ingestor(store, {topic: "rate"}, batch_size=700, flush_seconds=1.0)
    source = KafkaSource(
        kafka_broker, [topic], f"g-{topic}", ingestor.on_revoke, ingestor.on_assign, **FAST_GROUP
    )
    deadline = time.monotonic() + 90
    ingestor.run(source, lambda: all_durable(store, topic, last) or time.monotonic() > deadline)
    offsets = stored_offsets(store, topic)
    assert len(offsets) == len(set(offsets)) == 3000 - len(bad)
    dead = dead_offsets(store, topic)
    assert len(dead) == len(bad) and {r for _, _, r in dead} == {"schema", "not_utf8"}
    assert ingestor.metrics.valid.labels(topic)._value.get() == 3000 - len(bad)
    out = subprocess.run(
        [python(), "-m", "ingestor", "snapshots", "--store", store.uri, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "", **_s3_env()},
    )
    summary = json.loads(out.stdout)
    assert sum(g["rows"] for g in summary["groups"]) == 3000 - len(bad)
    assert summary["snapshot_id"].startswith("snapshot-")


def test_dead_letters_to_a_kafka_topic(kafka_broker: str, tmp_path: Path) -> None:
    from kafka import KafkaConsumer

    from ingestor.deadletter import KafkaDeadLetters

    topic = f"rate_{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic, 2)
    create_topic(kafka_broker, f"{topic}.dlq", 1)
    values, bad = _events(1000, bad_every=25)
    last = produce(kafka_broker, topic, values)
    store = open_store((tmp_path / "events").as_uri())
    sink = KafkaDeadLetters(kafka_broker)
    ingestor = Ingestor(
        store, {topic: "rate"}, batch_size=300, flush_seconds=1.0, dead_letters=sink
    )
    source = KafkaSource(
        kafka_broker, [topic], f"g-{topic}", ingestor.on_revoke, ingestor.on_assign, **FAST_GROUP
    )
    deadline = time.monotonic() + 60
    ingestor.run(source, lambda: all_durable(store, topic, last) or time.monotonic() > deadline)
    assert store.list("dlq/") == []  # nothing in the store's folder: all went to the topic
    assert len(stored_offsets(store, topic)) == 1000 - len(bad)
    consumer = KafkaConsumer(
        f"{topic}.dlq",
        bootstrap_servers=kafka_broker,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    letters = [json.loads(m.value) for m in consumer]
    consumer.close()
    keys = {(x["partition"], x["offset"]) for x in letters}
    assert len(letters) == len(keys) == len(bad)
    assert {x["reason"] for x in letters} == {"schema", "not_utf8"}
    binary = next(x for x in letters if x["reason"] == "not_utf8")
    assert binary["raw_encoding"] == "base64" and binary["raw"] == "//4="
    markers = [json.loads(store.get(k)) for k in store.list(f"ranges/{topic}/")]
    assert sum(m["dead"] for m in markers) == len(bad)
    assert all(m["files"][-1] == f"kafka:{topic}.dlq" for m in markers if m["dead"])


def _s3_env() -> dict[str, str]:
    import os

    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    return {k: os.environ[k] for k in keys if k in os.environ}


def test_replayed_movielens_trains_the_same_models(
    kafka_broker: str, synthetic_release: dict, tmp_path: Path
) -> None:
    rate, watch = f"rate_{uuid.uuid4().hex[:8]}", f"watch_{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, rate, 3)
    create_topic(kafka_broker, watch, 3)
    out = subprocess.run(
        [
            python(),
            "scripts/replay_movielens.py",
            "--data",
            str(synthetic_release["data"]),
            "--brokers",
            kafka_broker,
            "--rate-topic",
            rate,
            "--watch-topic",
            watch,
            "--format",
            "log",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sent 1440 events" in out.stdout
    store_uri = (tmp_path / "events").as_uri()
    store = open_store(store_uri)
    catalogue = tmp_path / "catalogue.json"
    registry = Registry.open(synthetic_release["registry"])
    catalogue.write_bytes(registry.store.get("v0.1/vocab/catalogue.json"))
    from ingestor.__main__ import load_catalogue

    ingestor = Ingestor(
        store,
        {rate: "rate", watch: "watch"},
        batch_size=200,
        flush_seconds=1,
        catalogue=load_catalogue(str(catalogue)),
    )
    source = KafkaSource(
        kafka_broker,
        [rate, watch],
        f"g-{rate}",
        ingestor.on_revoke,
        ingestor.on_assign,
        **FAST_GROUP,
    )
    deadline = time.monotonic() + 90

    def done() -> bool:
        total = sum(ingestor.metrics.valid.labels(t)._value.get() for t in (rate, watch))
        return (total >= 1440 and not ingestor.batches) or time.monotonic() > deadline

    ingestor.run(source, done)
    assert ingestor.metrics.invalid._metrics == {}  # every log line resolved
    from trainer.__main__ import main as train

    kinds = "popularity,itemcf,als"
    files_reg, snap_reg = (tmp_path / "a").as_uri(), (tmp_path / "b").as_uri()
    assert (
        train(
            [
                "train",
                "--data",
                str(synthetic_release["data"]),
                "--registry",
                files_reg,
                "--kinds",
                kinds,
            ]
        )
        == 0
    )
    assert (
        train(
            [
                "train",
                "--snapshots",
                store_uri,
                "--registry",
                snap_reg,
                "--kinds",
                kinds,
                "--catalogue",
                str(synthetic_release["data"]),
            ]
        )
        == 0
    )
    a, b = Registry.open(files_reg), Registry.open(snap_reg)
    quality = ("hr@10", "ndcg@10", "coverage@10", "sampled_hr@10", "users")
    for kind in ("popularity", "itemcf", "als"):
        ma, mb = a.manifest("v0.1")["kinds"][kind], b.manifest("v0.1")["kinds"][kind]
        assert ma["params"] == mb["params"]
        assert {q: ma["metrics"][q] for q in quality} == {q: mb["metrics"][q] for q in quality}
        fa, fb = tmp_path / f"fa-{kind}", tmp_path / f"fb-{kind}"
        a.fetch("v0.1", fa)
        b.fetch("v0.1", fb)
        for name in sorted(p.name for p in (fa / kind).glob("*.npy")):
            np.testing.assert_array_equal(np.load(fa / kind / name), np.load(fb / kind / name))
    assert b.manifest("v0.1")["data_snapshot_id"].startswith("snapshot-")


@pytest.mark.slow
def test_crash_acceptance_100k_events_two_processes_three_kills(
    kafka_broker: str, tmp_path: Path
) -> None:
    """100k events (~1% invalid) on 4 partitions; two ingestor processes; one is SIGKILLed at
    random points three times and restarted. Every valid event ends up stored exactly once, every
    invalid one in the dead-letter store."""
    topic = f"rate_{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic, 4)
    values, bad = _events(100_000, bad_every=100)
    last = produce(kafka_broker, topic, values)
    store_uri = (tmp_path / "events").as_uri()
    env = {
        "INGEST_BROKERS": kafka_broker,
        "INGEST_TOPICS": f"{topic}=rate",
        "INGEST_GROUP": f"g-{topic}",
        "INGEST_STORE": store_uri,
        "INGEST_BATCH_SIZE": "2000",
        "INGEST_FLUSH_SECONDS": "1",
        "INGEST_SESSION_TIMEOUT_MS": "6000",
        "INGEST_MAX_POLL_INTERVAL_MS": "10000",
        "INGEST_LOG_LEVEL": "WARNING",
    }

    def launch(name: str) -> subprocess.Popen:
        return start([python(), "-m", "ingestor"], env=env, log=tmp_path / f"{name}.log")

    steady, victim = launch("steady"), launch("victim-0")
    rng = random.Random(7)
    store = open_store(store_uri)
    kills = 0
    try:
        for kill in range(3):
            time.sleep(rng.uniform(1.0, 4.0))
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            kills += 1
            victim = launch(f"victim-{kill + 1}")
        deadline = time.monotonic() + 240
        while not all_durable(store, topic, last) and time.monotonic() < deadline:
            time.sleep(1)
        victim.send_signal(signal.SIGTERM)  # a clean stop: flush, commit, exit 0
        assert victim.wait(timeout=60) == 0
    finally:
        for proc in (steady, victim):
            stop(proc)
    offsets = stored_offsets(store, topic)
    dead = dead_offsets(store, topic)
    valid = 100_000 - len(bad)
    dupes = len(offsets) - len(set(offsets))
    missing = valid - len(set(offsets))
    print(
        f"\ncrash test: {kills} SIGKILLs; stored {len(offsets)} rows ({len(set(offsets))} "
        f"distinct of {valid} valid, {dupes} duplicates, {missing} missing); "
        f"dead letters {len(dead)} of {len(bad)} invalid"
    )
    assert kills == 3
    assert dupes == 0 and len(set(offsets)) == valid
    assert len(dead) == len(set((p, o) for p, o, _ in dead)) == len(bad)


def _metric(port: int, name: str) -> float:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(name))


def test_sigterm_flushes_commits_and_exits_zero(kafka_broker: str, tmp_path: Path) -> None:
    from tests.helpers import free_port

    topic = f"rate_{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic, 1)
    last = produce(kafka_broker, topic, _events(500, bad_every=0)[0])
    store_uri = (tmp_path / "events").as_uri()
    port = free_port()
    env = {
        "INGEST_BROKERS": kafka_broker,
        "INGEST_TOPICS": f"{topic}=rate",
        "INGEST_GROUP": f"g-{topic}",
        "INGEST_STORE": store_uri,
        "INGEST_METRICS_PORT": str(port),
        "INGEST_BATCH_SIZE": "100000",
        "INGEST_FLUSH_SECONDS": "3600",
    }
    proc = start([python(), "-m", "ingestor"], env=env, log=tmp_path / "i.log")
    try:
        deadline = time.monotonic() + 60
        while _metric(port, "ingest_consumed_total{") < 500 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _metric(port, "ingest_consumed_total{") == 500
        # consumed and buffered, nothing flushed yet: batch and time limits are far away
        assert list_snapshots(open_store(store_uri), topic) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc)
    assert all_durable(open_store(store_uri), topic, last)
    assert len(stored_offsets(open_store(store_uri), topic)) == 500
    # Structured logs: one JSON object per line, the batch's coordinates as fields.
    lines = [json.loads(x) for x in (tmp_path / "i.log").read_text().splitlines() if x.strip()]
    wrote = [x for x in lines if x["msg"] == "wrote batch"]
    assert [(x["topic"], x["partition"], x["first"], x["last"]) for x in wrote] == [
        (topic, 0, 0, 499)
    ]
    assert wrote[0]["valid"] == 500 and wrote[0]["bytes"] > 0
    assert any(x["msg"].startswith("signal 15") for x in lines)


@pytest.mark.parametrize("outlasts_poll_interval", [False, True], ids=["short", "long"])
def test_s3_outage_mid_run_retries_commits_nothing_then_resumes(
    kafka_broker: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outlasts_poll_interval: bool
) -> None:
    """The real thing: `python -m ingestor` writing to moto's S3 server, which is stopped while
    events keep arriving and started again later. A "long" outage outlasts the consumer's
    max.poll.interval: the blocked member is dropped from the group, its commit after the store
    returns is refused, and it rejoins and replays past its range markers."""
    import boto3
    from kafka.admin import KafkaAdminClient

    from tests.helpers import free_port, start_moto

    s3_port, metrics_port = free_port(), free_port()
    s3_env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    s3 = start_moto(s3_port, tmp_path / "moto-1.log")
    boto3.client("s3").create_bucket(Bucket="events")
    topic = f"rate_{uuid.uuid4().hex[:8]}"
    group = f"g-{topic}"
    create_topic(kafka_broker, topic, 1)
    values, _ = _events(800, bad_every=0)
    first = produce(kafka_broker, topic, values[:500])
    env = {
        **s3_env,
        "INGEST_BROKERS": kafka_broker,
        "INGEST_TOPICS": f"{topic}=rate",
        "INGEST_GROUP": group,
        "INGEST_STORE": "s3://events/marquee",
        "INGEST_METRICS_PORT": str(metrics_port),
        "INGEST_BATCH_SIZE": "100",
        "INGEST_FLUSH_SECONDS": "1",
        "INGEST_SESSION_TIMEOUT_MS": "6000",
        "INGEST_MAX_POLL_INTERVAL_MS": "3000" if outlasts_poll_interval else "300000",
    }
    proc = start([python(), "-m", "ingestor"], env=env, log=tmp_path / "i.log")
    store = open_store("s3://events/marquee")
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)

    def committed() -> int:
        offsets = admin.list_group_offsets(group).get(group, {})
        return max((o.offset for o in offsets.values()), default=-1)

    def wait(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert proc.poll() is None, (tmp_path / "i.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    try:
        wait(lambda: all_durable(store, topic, first) and committed() == 500, "first wave")
        stop(s3)  # S3 goes away; events keep coming
        second = produce(kafka_broker, topic, values[500:])
        wait(lambda: _metric(metrics_port, "ingest_store_errors_total") >= 2, "store errors")
        wait(lambda: _metric(metrics_port, "ingest_consumed_total{") == 800, "consumption")
        assert _metric(metrics_port, "ingest_store_failing ") == 1
        assert committed() == 500  # nothing committed while the store is down
        if outlasts_poll_interval:
            time.sleep(6)  # the loop is blocked on the store: the group drops this member
            assert committed() == 500
        s3 = start_moto(s3_port, tmp_path / "moto-2.log")  # back, empty (moto keeps no state)
        boto3.client("s3").create_bucket(Bucket="events")
        wait(lambda: all_durable(store, topic, second) and committed() == 800, "second wave")
        assert _metric(metrics_port, "ingest_store_failing ") == 0
        assert sorted(o for _, o in stored_offsets(store, topic)) == list(range(500, 800))
        if outlasts_poll_interval:
            assert _metric(metrics_port, "ingest_commits_refused_total") >= 1
            assert _metric(metrics_port, "ingest_replayed_skipped_total{") >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        admin.close()
        stop(proc)
        stop(s3)
    log_lines = [json.loads(x) for x in (tmp_path / "i.log").read_text().splitlines() if x]
    failures = [x for x in log_lines if x["msg"].startswith("store write failed")]
    assert failures and all(x["topic"] == topic and x["level"] == "ERROR" for x in failures)


def test_lag_comes_from_the_fetch_high_watermark(kafka_broker: str) -> None:
    topic = f"rate_{uuid.uuid4().hex[:8]}"
    create_topic(kafka_broker, topic, 1)
    produce(kafka_broker, topic, _events(1000, bad_every=0)[0])
    source = KafkaSource(
        kafka_broker, [topic], f"g-{topic}", lambda tps: None, lambda tps: None, **FAST_GROUP
    )
    try:
        seen = 0
        deadline = time.monotonic() + 60
        while seen < 300 and time.monotonic() < deadline:
            seen += sum(len(r) for r in source.poll(max_records=100, timeout_s=0.5).values())
        assert seen == 300
        # Tansu answers end_offsets() with the last batch's base offset + 1; highwater() is right.
        assert source.lag() == {(topic, 0): 700}
    finally:
        source.close()
