"""The probe against a real HTTP server whose answers we choose: contract checks, the probe
header, publishing through the service's bounded publisher, metrics, thresholds, SIGTERM."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from ingestor.schema import ProbeEvent, parse_event
from recommender.cli import probe_main
from recommender.probe import (
    UNKNOWN_BASE,
    ProbeMetrics,
    ProbeRun,
    breaches,
    check_answer,
    summarise,
)
from recommender.publisher import ResponsePublisher
from tests.helpers import start, stop

SEEN = {7: {1, 2, 3}}


def good(user: int, k: int, model: str | None) -> dict[str, Any]:
    items = list(range(100, 100 + k))
    return {
        "user_id": user,
        "model": (model or "als").rsplit("/", 1)[-1],
        "version": "v0.1",
        "arm": None,
        "fallback": "popularity" if user >= UNKNOWN_BASE else None,
        "items": items,
        "provenance": {"request_id": "r1", "model_version": "v0.1"},
    }


class Stub:
    """A real HTTP server on a free loopback port; `mode` picks how it misbehaves."""

    def __init__(self) -> None:
        self.mode = "good"
        self.headers: list[str | None] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.headers.append(self.headers.get("X-Marquee-Probe"))
                url = urlparse(self.path)
                user = int(url.path.rsplit("/", 1)[-1])
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                body = good(user, int(query.get("k", 10)), query.get("model"))
                status = 200
                if stub.mode == "dup":
                    body["items"][1] = body["items"][0]
                elif stub.mode == "seen":
                    body["items"][0] = 2
                elif stub.mode == "wrong_model":
                    body["model"] = "popularity"
                elif stub.mode == "error":
                    status, body = 500, {"error": "internal_error", "detail": "x"}
                elif stub.mode == "slow":
                    time.sleep(0.3)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    yield s
    s.server.shutdown()
    s.server.server_close()


def run(stub: Stub, **kw: Any) -> ProbeRun:
    now = [1_764_547_200.0]  # event times must look real to the ingestor
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        now[0] += seconds
        return False

    probe = ProbeRun(stub.url, [5, 6, 7], history=SEEN, clock=lambda: now[0], wait=wait, **kw)
    probe.run()
    probe.waits = waits  # type: ignore[attr-defined]
    return probe


def test_good_answers_pass_and_carry_the_probe_header(stub: Stub) -> None:
    probe = run(stub, rounds=3, per_round=3, unknown_per_round=1, models=["als", "v0.1/ncf"])
    assert len(probe.results) == 12 and all(r.ok for r in probe.results), probe.results
    assert stub.headers == ["1"] * 12
    assert sum(not r.known for r in probe.results) == 3
    assert {r.model for r in probe.results} == {"als", "v0.1/ncf"}
    assert probe.waits == [10.0, 10.0]  # rounds paced by the injected clock, none after the last
    get = probe.metrics.registry.get_sample_value
    assert get("marquee_probe_requests_total", {"result": "ok"}) == 12
    assert get("marquee_probe_latency_seconds_count", {"kind": "unknown"}) == 3


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("dup", "duplicate_items"),
        ("seen", "seen_item_served"),
        ("error", "http_500"),
        ("wrong_model", "model_not_honoured"),
    ],
)
def test_contract_violations_are_failures_by_reason(stub: Stub, mode: str, reason: str) -> None:
    stub.mode = mode
    probe = run(stub, rounds=1, per_round=3, unknown_per_round=0, models=["als"])
    reasons = {r.reason for r in probe.results}
    # "seen" only shows for user 7, whose history the probe was given
    assert reason in reasons and not any(r.ok for r in probe.results if r.reason == reason)
    assert (
        probe.metrics.registry.get_sample_value("marquee_probe_failures_total", {"reason": reason})
        >= 1
    )


def test_check_answer_rules() -> None:
    body = good(5, 3, "v0.1/als")
    assert check_answer(body, 3, "v0.1/als", True, None) is None
    assert check_answer(body, 4, None, True, None) == "wrong_count"
    assert check_answer({**body, "version": "v0.2"}, 3, "v0.1/als", True, None) == (
        "version_not_honoured"
    )
    assert check_answer({**body, "provenance": {}}, 3, None, True, None) == "no_provenance"
    assert check_answer(body, 3, None, False, None) == "unknown_user_without_fallback"
    assert check_answer([1, 2], 3, None, True, None) == "not_json_object"


def test_unreachable_service_is_a_failure_not_a_crash() -> None:
    probe = ProbeRun(
        "http://127.0.0.1:9", [1], rounds=1, per_round=1, unknown_per_round=0, wait=lambda _s: False
    )
    result = probe.run()[0]
    assert (result.ok, result.reason, result.status) == (False, "unreachable", 0)


def test_summary_and_thresholds(stub: Stub) -> None:
    stub.mode = "slow"
    probe = run(stub, rounds=1, per_round=2, unknown_per_round=0)
    summary = summarise(probe.results)
    assert summary["probes"] == 2 and summary["failure_share"] == 0.0
    assert summary["p95_ms"] >= 300
    assert breaches(summary, 0.05, 500) == []
    assert breaches(summary, 0.05, 100.0) == [f"p95 {summary['p95_ms']:.1f} ms > 100.0 ms"]
    assert breaches(summarise([]), 0.05, 100) == ["no probe ran"]


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def send(self, topic: str, value: dict) -> Any:
        self.sent.append((topic, value))
        producer = self

        class Future:
            def add_callback(self, fn: Any) -> None:
                fn(None)

            def add_errback(self, fn: Any) -> None:
                pass

        return Future() if producer else None

    def flush(self, timeout: float) -> None:
        pass

    def close(self, timeout: float) -> None:
        pass


def test_probes_go_through_the_service_publisher_and_parse_as_reco_probes(stub: Stub) -> None:
    metrics = ProbeMetrics()
    producer = FakeProducer()
    publisher = ResponsePublisher(
        "unused:9092",
        "reco_probes",
        metrics,  # type: ignore[arg-type]
        queue_size=100,
        producer_factory=lambda: producer,
    )
    probe = run(
        stub, rounds=1, per_round=2, unknown_per_round=1, metrics=metrics, publish=publisher.publish
    )
    publisher.close()
    assert len(producer.sent) == 3 and {t for t, _ in producer.sent} == {"reco_probes"}
    assert metrics.registry.get_sample_value("marquee_probe_published_total") == 3
    for _topic, value in producer.sent:
        event = parse_event("reco_probes", json.dumps(value).encode())
        assert isinstance(event, ProbeEvent) and event.ok and event.latency_ms >= 0
    assert probe.results[0].event()["url"].startswith(stub.url)


def test_cli_exit_codes(stub: Stub, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    summary = tmp_path / "summary.json"
    argv = [
        "--url",
        stub.url,
        "--users",
        "1-3,7",
        "--rounds",
        "2",
        "--interval",
        "0.01",
        "--summary",
        str(summary),
    ]
    assert probe_main(argv) == 0
    assert json.loads(summary.read_text())["probes"] == 10
    stub.mode = "error"
    assert probe_main(argv) == 3
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["breaches"]
    assert probe_main([*argv, "--k", "0"]) == 2
    assert probe_main([*argv, "--history", str(tmp_path / "missing.json")]) == 2
    with pytest.raises(SystemExit) as exc:
        probe_main([*argv, "--users", "5-1"])
    assert exc.value.code == 2


def test_sigterm_ends_a_probe_run_cleanly(stub: Stub, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    proc = start(
        [
            sys.executable,
            "-m",
            "recommender",
            "probe",
            "--url",
            stub.url,
            "--users",
            "1-5",
            "--rounds",
            "1000",
            "--interval",
            "30s",
            "--duration",
            "1h",
        ],
        log=log,
    )
    try:
        deadline = time.monotonic() + 30
        while len(stub.headers) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, log.read_text()
        assert time.monotonic() - started < 5  # not the 30 s interval
    finally:
        stop(proc)
    assert json.loads(log.read_text().strip().splitlines()[-1])["probes"] == 5
