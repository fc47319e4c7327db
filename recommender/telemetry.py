"""Prometheus metrics, one structured JSON log line per request, and request ids.

`Telemetry` owns its own CollectorRegistry (one per app), so several apps in one process (tests)
never collide. `RequestMiddleware` is plain ASGI: it assigns or accepts X-Request-ID, echoes it,
times the request, and after the handler has run reads the labels the handler left in
`scope["state"]["labels"]` (model, version, arm, fallback) for the metrics and the log line.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from recommender.release import LoadedRelease

access_log = logging.getLogger("recommender.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LABELS = ("endpoint", "model", "version", "arm", "status", "fallback")
OFFLINE_METRICS = ("ndcg@10", "hr@10", "coverage@10", "gini@10", "long_tail@10", "novelty@10")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "marquee_requests_total", "HTTP requests answered", LABELS, registry=r
        )
        self.latency = Histogram(
            "marquee_request_duration_seconds",
            "Time to answer",
            LABELS,
            buckets=_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "marquee_model_info",
            "The active release (only it is 1)",
            ("version", "git_sha", "data_snapshot_id", "image_digest"),
            registry=r,
        )
        self.swaps = Counter("marquee_swaps_total", "Release switches", ("result",), registry=r)
        self.loaded = Gauge("marquee_loaded_releases", "Releases held in memory", registry=r)
        self.release_bytes = Gauge(
            "marquee_release_memory_bytes", "Array bytes of a release", ("version",), registry=r
        )
        self.arm_weight = Gauge(
            "marquee_experiment_arm_weight", "Configured A/B weight", ("arm",), registry=r
        )
        self.published = Counter(
            "marquee_responses_published_total",
            "Answers delivered to the responses topic",
            registry=r,
        )
        # ---- the control plane (one poll every REC_SYNC_SECONDS) ----
        self.sync_age = Gauge(
            "marquee_control_sync_seconds",
            "Seconds since the last successful poll of the control plane",
            registry=r,
        )
        self.in_sync = Gauge(
            "marquee_in_sync",
            "1 when this replica serves what the control plane names (pointer and experiment)",
            registry=r,
        )
        self.pointer_seq = Gauge(
            "marquee_control_pointer_seq",
            "Sequence number of the newest production-pointer record this replica has read",
            registry=r,
        )
        self.experiment_seq = Gauge(
            "marquee_control_experiment_seq",
            "Sequence number of the experiment record this replica routes by (0: none)",
            registry=r,
        )
        self.refused = Counter(
            "marquee_control_refused_total",
            "Admin and control actions refused, by reason",
            ("reason",),
            registry=r,
        )
        self.unreadable = Gauge(
            "marquee_control_unreadable_records",
            "Control-plane records skipped because they could not be parsed",
            registry=r,
        )
        self.sync_errors = Counter(
            "marquee_control_sync_errors_total",
            "Control-plane polls or applies that failed, by reason",
            ("reason",),
            registry=r,
        )
        self.dropped = Counter(
            "marquee_responses_dropped_total",
            "Answers not delivered to the responses topic, by reason",
            ("reason",),
            registry=r,
        )
        # ---- the active release's drift report and age (issue #9: from its manifest) ----
        self.drift_score = Gauge(
            "marquee_release_drift_score",
            "Drift statistic / threshold per test of the active release's window (>1: drifted)",
            ("test",),
            registry=r,
        )
        self.drift_flagged = Gauge(
            "marquee_release_drift_flagged",
            "1 when the active release's drift report flagged a test, 0 when not, -1 no report",
            registry=r,
        )
        self.release_age = Gauge(
            "marquee_release_age_seconds",
            "Seconds since the active release was created (its manifest's created_at)",
            registry=r,
        )

        # ---- offline numbers of every loaded release (from its manifest) ----
        self.offline_metric = Gauge(
            "marquee_release_offline_metric",
            "A loaded release's offline test metric per kind (its manifest's kinds.*.metrics)",
            ("version", "kind", "metric"),
            registry=r,
        )
        self.gate_decision = Gauge(
            "marquee_release_gate_decision",
            "1 for a loaded release's gate decision (accept, refuse; none: published ungated)",
            ("version", "decision"),
            registry=r,
        )

    def releases_changed(self, active: LoadedRelease | None, loaded: list[LoadedRelease]) -> None:
        self.model_info.clear()
        if active is not None:
            m = active.manifest
            labels = (m.get("git_sha"), m.get("data_snapshot_id"), m.get("image_digest"))
            self.model_info.labels(active.version, *map(str, labels)).set(1)
        self.loaded.set(len(loaded))
        self.release_bytes.clear()
        for release in loaded:
            self.release_bytes.labels(release.version).set(release.nbytes())
        self._offline_numbers(loaded)
        self._release_drift_and_age(active.manifest if active is not None else {})

    def _offline_numbers(self, loaded: list[LoadedRelease]) -> None:
        """Bounded: loaded releases (<= REC_MAX_LOADED) x kinds x the metrics on the table."""
        self.offline_metric.clear()
        self.gate_decision.clear()
        for release in loaded:
            kinds = release.manifest.get("kinds")
            for kind, info in (kinds if isinstance(kinds, dict) else {}).items():
                metrics = info.get("metrics") if isinstance(info, dict) else None
                for name in OFFLINE_METRICS:
                    value = (metrics or {}).get(name)
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        self.offline_metric.labels(release.version, kind, name).set(value)
            gate = release.manifest.get("gate")
            decision = gate.get("decision") if isinstance(gate, dict) else None
            self.gate_decision.labels(release.version, str(decision or "none")[:16]).set(1)

    def _release_drift_and_age(self, manifest: dict[str, Any]) -> None:
        """Issue #9's gauges: read from the manifest the retrain wrote (drift, created_at)."""
        self.drift_score.clear()
        drift = manifest.get("drift") if isinstance(manifest.get("drift"), dict) else None
        self.drift_flagged.set(-1 if drift is None else int(bool(drift.get("flagged"))))
        for test, result in ((drift or {}).get("tests") or {}).items():
            if isinstance(result, dict) and isinstance(result.get("score"), int | float):
                self.drift_score.labels(test).set(result["score"])
        try:
            created = datetime.fromisoformat(str(manifest["created_at"])).timestamp()
        except (KeyError, ValueError):
            self.release_age.set_function(lambda: float("nan"))
            return
        self.release_age.set_function(lambda: time.time() - created)  # age at scrape time


class RequestMiddleware:
    def __init__(self, app: Any, telemetry: Telemetry, max_body: int = 64 * 1024) -> None:
        self.app = app
        self.telemetry = telemetry
        self.max_body = max_body
        self._children: dict[tuple[str, ...], tuple[Any, Any]] = {}  # label values -> metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        # The server layer (recommender/limits.py) already refuses these before the app runs;
        # this backstop keeps the limit when the app is mounted under another server or client
        # (TestClient, h11), at the cost of one dict lookup.
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            status = 413
            body = json.dumps(
                {
                    "error": "body_too_large",
                    "detail": f"request bodies are limited to {self.max_body} bytes",
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            self._record(scope, state, status, time.perf_counter() - started, request_id)
            return

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status, time.perf_counter() - started, request_id)

    def _record(self, scope: dict, state: dict, status: int, seconds: float, rid: str) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        labels = state.get("labels") or {}
        values = (
            endpoint,
            labels.get("model", ""),
            labels.get("version", ""),
            labels.get("arm", ""),
            str(status),
            labels.get("fallback", ""),
        )
        children = self._children.get(values)
        if children is None:  # labels() takes a lock and builds a key: do it once per series
            children = (
                self.telemetry.requests.labels(*values),
                self.telemetry.latency.labels(*values),
            )
            self._children[values] = children
        children[0].inc()
        children[1].observe(seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": rid,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "endpoint": endpoint,
                        "status": status,
                        "latency_ms": round(seconds * 1000, 3),
                        **labels,
                    }
                },
            )
