"""The service under real HTTP load: zero failed requests across 20 hot swaps, JSON access logs,
answers published to a real Kafka-protocol broker (and answers still flowing when it is down)."""

from __future__ import annotations

import http.client
import json
import random
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import free_port, python, start, stop, wait_for_http

TOKEN = "live-token-0123456789"


def _serve(registry: str, log: Path, **env: str) -> tuple[object, str]:
    port = free_port()
    proc = start(
        [python(), "-m", "recommender", "--registry", registry, "--port", str(port)],
        env={"REC_ADMIN_TOKEN": TOKEN, **env},
        log=log,
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/readyz", timeout=60, proc=proc)
    return proc, base


@pytest.fixture
def live(two_releases: dict, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    shutil.copytree(two_releases["root"], tmp_path / "reg")
    log = tmp_path / "service.log"
    proc, base = _serve((tmp_path / "reg").as_uri(), log, REC_CANDIDATES="v0.1")
    try:
        yield base, log
    finally:
        stop(proc)


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_zero_failed_requests_during_20_swaps_under_load(live: tuple[str, Path]) -> None:
    base, _ = live
    stop_flag = threading.Event()
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=10)
        local = []
        while not stop_flag.is_set():
            kind = rng.choice(["als", "ncf", "itemcf", "popularity"])
            conn.request("GET", f"/recommend/{rng.randint(1, 70)}?k=10&model={kind}")
            resp = conn.getresponse()
            body = json.loads(resp.read())
            local.append((resp.status, body.get("version")))
        conn.close()
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    admin = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for i in range(20):
        target = "v0.1" if i % 2 == 0 else "v0.2"
        admin.request("POST", "/switch", body=json.dumps({"version": target}), headers=headers)
        resp = admin.getresponse()
        assert resp.status == 200, resp.read()
        assert json.loads(resp.read())["to"] == target
        time.sleep(0.05)
    stop_flag.set()
    for t in threads:
        t.join(timeout=30)
    statuses = [s for s, _ in results]
    versions = {v for _, v in results}
    assert len(results) > 200, len(results)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert versions == {"v0.1", "v0.2"}
    print(f"\n{len(results)} requests across 20 swaps: all 200, versions {sorted(versions)}")


def test_structured_json_access_log_is_emitted(live: tuple[str, Path]) -> None:
    base, log = live
    conn = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=10)
    conn.request("GET", "/recommend/3?model=als", headers={"X-Request-ID": "trace-77"})
    resp = conn.getresponse()
    assert resp.getheader("x-request-id") == "trace-77"
    assert json.loads(resp.read())["provenance"]["request_id"] == "trace-77"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        hits = [x for x in lines if x.get("request_id") == "trace-77"]
        if hits:
            break
        time.sleep(0.1)
    assert len(hits) == 1
    entry = hits[0]
    assert entry["level"] == "INFO" and entry["logger"] == "recommender.access"
    assert entry["status"] == 200 and entry["model"] == "als" and entry["latency_ms"] > 0


def _metric(base: str, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_answers_are_published_to_kafka(
    two_releases: dict, kafka_broker: str, tmp_path: Path
) -> None:
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"reco_responses_{random.randint(0, 10**9)}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    proc, base = _serve(
        two_releases["registry"],
        tmp_path / "s.log",
        REC_KAFKA_BROKERS=kafka_broker,
        REC_RESPONSES_TOPIC=topic,
    )
    try:
        conn = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=10)
        sent = []
        for user in range(1, 21):
            conn.request(
                "GET", f"/recommend/{user}?model=als", headers={"X-Request-ID": f"k{user}"}
            )
            assert conn.getresponse().read()
            sent.append(f"k{user}")
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=kafka_broker,
            auto_offset_reset="earliest",
            consumer_timeout_ms=15000,
            group_id=None,
        )
        got = {}
        for message in consumer:
            record = json.loads(message.value)
            got[record["request_id"]] = record
            if len(got) >= len(sent):
                break
        consumer.close()
        assert set(got) == set(sent)
        one = got["k1"]
        assert one["model"] == "als" and one["version"] == "v0.2" and len(one["items"]) == 10
        assert {"user_id", "arm", "latency_ms", "ts"} <= set(one)
    finally:
        stop(proc)


def test_kafka_down_answers_still_flow_and_drops_are_counted(
    two_releases: dict, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc, base = _serve(two_releases["registry"], tmp_path / "s.log", REC_KAFKA_BROKERS=dead)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", _port(base), timeout=10)
        started = time.perf_counter()
        for user in range(1, 51):
            conn.request("GET", f"/recommend/{user}")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
        assert time.perf_counter() - started < 10  # never waits on Kafka
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if _metric(base, "marquee_responses_dropped_total{") >= 1:
                break
            time.sleep(0.2)
        assert _metric(base, "marquee_responses_dropped_total{") >= 1
    finally:
        stop(proc)
