"""Synthetic probes of the serving API: `python -m recommender probe`.

Every `interval` seconds a round of `GET /recommend/{user}` for a few sampled known users and a
few unknown ones (ids far above any MovieLens id), each with the header `X-Marquee-Probe: 1`:
the service answers normally but leaves probes out of arm counts, SRM and KPIs, and labels them
in its metrics. Each answer is checked against the API contract:

    status 200, exactly k items, all distinct, the requested model honoured, provenance present
    (request id, model version), a fallback said for an unknown user, and for a known user with a
    given history (--history) no item they have already seen.

Each probe is published as JSON to the `reco_probes` topic through the service's own bounded,
non-blocking publisher (a full queue or a dead broker drops and counts, never waits), and
counted in Prometheus: marquee_probe_latency_seconds, marquee_probe_requests_total{result},
marquee_probe_failures_total{reason}. Runs are bounded (rounds, duration) and end cleanly on
SIGTERM. The summary (failure share, p95) is compared with thresholds: exit 3 if exceeded.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("recommender.probe")

PROBE_HEADER = "X-Marquee-Probe"
UNKNOWN_BASE = 10**12  # unknown probe users: far above any MovieLens id, still a valid id


class ProbeMetrics:
    """The probe's Prometheus metrics; also the counters ResponsePublisher expects
    (`published`, `dropped`), so the publisher is reused as is."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "marquee_probe_latency_seconds",
            "Probe answer time",
            ("kind",),
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.requests = Counter("marquee_probe_requests_total", "Probes", ("result",), registry=r)
        self.failures = Counter(
            "marquee_probe_failures_total", "Failed probes by reason", ("reason",), registry=r
        )
        self.published = Counter(
            "marquee_probe_published_total", "Probes delivered to the topic", registry=r
        )
        self.dropped = Counter(
            "marquee_probe_dropped_total",
            "Probes not delivered, by reason",
            ("reason",),
            registry=r,
        )


@dataclass(frozen=True)
class ProbeResult:
    ts: int
    url: str
    user_id: int
    model: str | None
    status: int
    latency_ms: float
    ok: bool
    reason: str | None
    known: bool
    items: list[int] = field(default_factory=list)
    version: str | None = None
    arm: str | None = None
    request_id: str | None = None

    def event(self) -> dict[str, Any]:
        """What goes to `reco_probes` (ingestor.schema.ProbeEvent)."""
        return {
            "ts": self.ts,
            "url": self.url,
            "user_id": self.user_id,
            "model": self.model,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "ok": self.ok,
            "reason": self.reason,
            "items": self.items,
            "version": self.version,
            "arm": self.arm,
            "request_id": self.request_id,
        }


def check_answer(
    body: Any, k: int, model: str | None, known: bool, seen: set[int] | None
) -> str | None:
    """The first contract violation of an answer, as a short stable reason, or None."""
    if not isinstance(body, dict):
        return "not_json_object"
    items = body.get("items")
    if not isinstance(items, list) or not all(isinstance(i, int) for i in items):
        return "no_items"
    if len(items) != k:
        return "wrong_count"
    if len(set(items)) != len(items):
        return "duplicate_items"
    if model is not None and body.get("model") != model.rsplit("/", 1)[-1]:
        return "model_not_honoured"
    if model is not None and "/" in model and body.get("version") != model.split("/", 1)[0]:
        return "version_not_honoured"
    provenance = body.get("provenance")
    if (
        not isinstance(provenance, dict)
        or not provenance.get("request_id")
        or not provenance.get("model_version")
    ):
        return "no_provenance"
    if not known and not body.get("fallback"):
        return "unknown_user_without_fallback"
    if known and seen and seen.intersection(items):
        return "seen_item_served"
    return None


def probe_once(
    base_url: str,
    user: int,
    known: bool,
    k: int,
    model: str | None,
    seen: set[int] | None,
    timeout: float,
    clock: Callable[[], float] = time.time,
) -> ProbeResult:
    query = f"k={k}" + (f"&model={model}" if model else "")
    url = f"{base_url.rstrip('/')}/recommend/{user}?{query}"
    request = urllib.request.Request(url, headers={PROBE_HEADER: "1"})
    started = time.perf_counter()
    status, body, reason = 0, None, None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, reason = exc.code, f"http_{exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        reason = "timeout" if "timed out" in str(exc) else "unreachable"
    except ValueError:
        reason = "bad_json"
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    if reason is None:
        reason = check_answer(body, k, model, known, seen)
    answer = body if isinstance(body, dict) else {}
    items = answer.get("items") if isinstance(answer.get("items"), list) else []
    return ProbeResult(
        ts=int(clock() * 1000),
        url=url,
        user_id=user,
        model=model,
        status=status,
        latency_ms=latency_ms,
        ok=reason is None,
        reason=reason,
        known=known,
        items=[i for i in items if isinstance(i, int)][:1000],
        version=answer.get("version"),
        arm=answer.get("arm"),
        request_id=(answer.get("provenance") or {}).get("request_id"),
    )


@dataclass
class ProbeRun:
    base_url: str
    known_users: Sequence[int]
    models: Sequence[str | None] = (None,)
    per_round: int = 4  # known users per round
    unknown_per_round: int = 1
    k: int = 10
    interval_s: float = 10.0
    rounds: int = 6
    duration_s: float = 300.0
    timeout_s: float = 5.0
    history: dict[int, set[int]] = field(default_factory=dict)
    seed: int = 0
    metrics: ProbeMetrics = field(default_factory=ProbeMetrics)
    publish: Callable[[dict[str, Any]], None] = lambda _e: None
    clock: Callable[[], float] = time.time
    wait: Callable[[float], bool] = lambda s: (time.sleep(s), False)[1]  # True: stop asked
    results: list[ProbeResult] = field(default_factory=list)

    def run(self) -> list[ProbeResult]:
        rng = random.Random(self.seed)
        started = self.clock()
        for round_no in range(self.rounds):
            round_start = self.clock()
            if round_start - started >= self.duration_s:
                break
            users = [
                (u, True)
                for u in rng.sample(
                    list(self.known_users), min(self.per_round, len(self.known_users))
                )
            ]
            users += [
                (UNKNOWN_BASE + rng.randrange(10**9), False) for _ in range(self.unknown_per_round)
            ]
            for i, (user, known) in enumerate(users):
                model = self.models[(round_no + i) % len(self.models)]
                result = probe_once(
                    self.base_url,
                    user,
                    known,
                    self.k,
                    model,
                    self.history.get(user),
                    self.timeout_s,
                    self.clock,
                )
                self._count(result)
            if round_no + 1 < self.rounds and self.wait(
                max(0.0, round_start + self.interval_s - self.clock())
            ):
                log.info("stop asked: ending after round %d", round_no + 1)
                break
        return self.results

    def _count(self, result: ProbeResult) -> None:
        self.results.append(result)
        self.metrics.latency.labels("known" if result.known else "unknown").observe(
            result.latency_ms / 1000
        )
        self.metrics.requests.labels("ok" if result.ok else "fail").inc()
        if not result.ok:
            self.metrics.failures.labels(result.reason or "unknown").inc()
            log.warning("probe failed: %s %s", result.reason, result.url)
        self.publish(result.event())


def summarise(results: Sequence[ProbeResult]) -> dict[str, Any]:
    latencies = sorted(r.latency_ms for r in results)
    failures: dict[str, int] = {}
    for r in results:
        if not r.ok:
            failures[r.reason or "unknown"] = failures.get(r.reason or "unknown", 0) + 1
    n = len(results)
    return {
        "probes": n,
        "failed": sum(failures.values()),
        "failure_share": sum(failures.values()) / n if n else None,
        "failures": failures,
        # nearest-rank p95 of what was measured
        "p95_ms": latencies[max(0, -(-95 * n // 100) - 1)] if n else None,
        "max_ms": latencies[-1] if n else None,
    }


def breaches(summary: dict[str, Any], max_failure_share: float, max_p95_ms: float) -> list[str]:
    if not summary["probes"]:
        return ["no probe ran"]
    out = []
    if summary["failure_share"] > max_failure_share:
        out.append(f"failure share {summary['failure_share']:.3f} > {max_failure_share}")
    if summary["p95_ms"] > max_p95_ms:
        out.append(f"p95 {summary['p95_ms']:.1f} ms > {max_p95_ms} ms")
    return out
