"""Online KPIs per arm from the event stream: `python -m ingestor kpi`.

Served lists (`reco_responses` snapshots) are joined with the same user's later `watch` and
`rate` events within a window W of event time. Per arm and per (model, version):

- users exposed (the unit: users are what the experiment randomises), requests;
- hit rate: share of exposed users who, within W after a list was served to them, watched or
  rated >= 4 an item of that list; with a Wilson interval;
- hits per exposure: distinct (user, item) hits / requests; mean rank (1-based) of the hit in
  the list that earned it; catalogue coverage: distinct items served / catalogue size.

Probe answers (`"probe": true`) and answers outside an arm are left out. Everything is by event
time: an event that arrives late (a later snapshot) or out of order counts the same as one on
time, and a re-run over the same snapshots writes the same report, byte for byte:

    <store>/kpi/<experiment>/report-<snapshot id>-<sha256 of the report, 16 hex>.json
        deterministic (no wall clock inside); the arms' weights are an input, so a run after
        a rollout step writes a new file and never replaces the one a decision read
    <store>/kpi/<experiment>/latest.json    the newest report plus `generated_at`

The comparison (candidate vs control: SRM, difference, confidence sequence, verdict) is
`ingestor.stats`; the verdict is what the rollout controller reads.
"""

from __future__ import annotations

import argparse
import bisect
import io
import json
import logging
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ingestor.snapshot import list_snapshots, snapshot_id
from ingestor.stats import GateConfig, Srm, proportion_ci, srm, verdict
from model_registry.durations import duration
from model_registry.errors import RegistryError, StorageError
from model_registry.experiments import kpi_latest_key, kpi_report_key
from model_registry.logs import configure_logging
from model_registry.messages import one_line
from model_registry.registry import sha256_bytes
from model_registry.storage import BlobStore, open_store

log = logging.getLogger("ingestor.kpi")

DAY_MS = 24 * 3600 * 1000
POSITIVE_RATING = 4.0
REPORT_DIGEST_CHARS = 16  # of the report's sha256, in its key
_COLUMNS = ("topic", "partition", "offset", "kind", "user_id", "movie_id", "rating", "ts")
_SERVED = ("request_id", "items", "model", "version", "arm", "probe")


@dataclass(frozen=True)
class Exposure:
    user_id: int
    ts: int
    items: tuple[int, ...]
    arm: str | None
    model: str | None
    version: str | None
    request_id: str


@dataclass(frozen=True)
class KpiConfig:
    experiment: str
    start_ms: int = 0  # exposures before this (the experiment's start) are not counted
    window_ms: int = DAY_MS
    control: str = "control"
    candidate: str = "candidate"
    weights: dict[str, float] | None = None  # for SRM; None: the two arms equally
    catalogue_items: int | None = None
    gate: GateConfig = field(default_factory=GateConfig)


# ---- reading the store ------------------------------------------------------------------------
@dataclass
class Events:
    exposures: list[Exposure]
    positives: dict[int, list[tuple[int, int]]]  # user -> sorted (ts, movie) of watch / rate>=4
    probes_dropped: int
    outside_arms: int
    as_of_ms: int  # newest event time read: the watermark the report is "as of"
    snapshot_id: str
    files: int


def read_events(store: BlobStore, since_ms: int) -> Events:
    """Served lists, watches and ratings of every topic from `since_ms` on (event time),
    deduplicated by (topic, partition, offset). A file is named by its first event's day and
    may hold later events, so files from the day before are read too."""
    import pyarrow.parquet as pq

    since_day = datetime.fromtimestamp(since_ms / 1000, UTC) - timedelta(days=1)
    files = list_snapshots(store, None, since_day.strftime("%Y-%m-%d"), None)
    seen: set[tuple[str, int, int]] = set()
    exposures: list[Exposure] = []
    positives: dict[int, list[tuple[int, int]]] = defaultdict(list)
    probes = outside = 0
    as_of = 0
    for f in sorted(files, key=lambda f: f.key):
        parquet = pq.ParquetFile(io.BytesIO(store.get(f.key)))
        names = set(parquet.schema_arrow.names)
        typed = all(c in names for c in _SERVED)
        wanted = [*_COLUMNS, *(_SERVED if typed else ("payload",))]
        for row in parquet.read(columns=wanted).to_pylist():
            key = (row["topic"], row["partition"], row["offset"])
            if key in seen or row["ts"] < since_ms:
                continue
            seen.add(key)
            as_of = max(as_of, row["ts"])
            kind, user = row["kind"], row["user_id"]
            if kind == "watch" or (kind == "rate" and row["rating"] >= POSITIVE_RATING):
                positives[user].append((row["ts"], row["movie_id"]))
            elif kind == "reco_response":
                served = row if typed else _from_payload(row["payload"])
                if served.get("probe"):
                    probes += 1
                elif user is None or not served.get("arm"):
                    outside += 1
                else:
                    exposures.append(
                        Exposure(
                            user,
                            row["ts"],
                            tuple(served.get("items") or ()),
                            served["arm"],
                            served.get("model"),
                            served.get("version"),
                            served.get("request_id") or f"{key[0]}/{key[1]}/{key[2]}",
                        )
                    )
    for events in positives.values():
        events.sort()
    return Events(
        exposures, dict(positives), probes, outside, as_of, snapshot_id(store, files), len(files)
    )


def _from_payload(payload: str) -> dict[str, Any]:
    """Snapshots written before the served-list columns existed: read the raw payload."""
    body = json.loads(payload)
    return body if isinstance(body, dict) else {}


# ---- the KPIs -----------------------------------------------------------------------------------
def group_kpis(
    exposures: Iterable[Exposure],
    positives: dict[int, list[tuple[int, int]]],
    window_ms: int,
    catalogue_items: int | None,
    alpha: float,
) -> dict[str, Any]:
    """KPIs of one group of exposures (one arm, or one model+version)."""
    per_user: dict[int, list[Exposure]] = defaultdict(list)
    requests = 0
    items_served: set[int] = set()
    for e in exposures:
        per_user[e.user_id].append(e)
        requests += 1
        items_served.update(e.items)
    hit_users = hits = 0
    ranks: list[int] = []
    for user, lists in per_user.items():
        # item -> sorted (ts, rank) of every time it was served to this user
        served: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for e in sorted(lists, key=lambda e: (e.ts, e.request_id)):
            for rank, item in enumerate(e.items, 1):
                served[item].append((e.ts, rank))
        hit_items: set[int] = set()
        for ts, item in positives.get(user, ()):
            times = served.get(item)
            if not times or item in hit_items:
                continue
            # the latest list that showed the item at or before the event, if within W
            i = bisect.bisect_right(times, (ts, 1 << 30)) - 1
            if i >= 0 and ts - times[i][0] <= window_ms:
                hit_items.add(item)
                ranks.append(times[i][1])
        hits += len(hit_items)
        hit_users += bool(hit_items)
    users = len(per_user)
    low, high = proportion_ci(hit_users, users, alpha)
    return {
        "users": users,
        "requests": requests,
        "hit_users": hit_users,
        "hit_rate": hit_users / users if users else None,
        "hit_rate_ci": [low, high] if users else None,
        "hits": hits,
        "hits_per_exposure": hits / requests if requests else None,
        "mean_hit_rank": sum(ranks) / len(ranks) if ranks else None,
        "items_served": len(items_served),
        "coverage": len(items_served) / catalogue_items if catalogue_items else None,
    }


def compute(events: Events, config: KpiConfig) -> dict[str, Any]:
    """The report (deterministic: it depends only on the events and the config)."""
    exposures = [e for e in events.exposures if e.ts >= config.start_ms]
    by_arm: dict[str, list[Exposure]] = defaultdict(list)
    by_model: dict[tuple[str, str], list[Exposure]] = defaultdict(list)
    for e in exposures:
        by_arm[e.arm or ""].append(e)
        by_model[(e.model or "", e.version or "")].append(e)
    kpis = {
        arm: group_kpis(
            group, events.positives, config.window_ms, config.catalogue_items, config.gate.alpha
        )
        for arm, group in sorted(by_arm.items())
    }
    models = [
        {
            "model": model,
            "version": version,
            **group_kpis(
                group,
                events.positives,
                config.window_ms,
                config.catalogue_items,
                config.gate.alpha,
            ),
        }
        for (model, version), group in sorted(by_model.items())
    ]
    return {
        "experiment": config.experiment,
        "start_ms": config.start_ms,
        "window_ms": config.window_ms,
        "as_of_ms": events.as_of_ms,
        "snapshot_id": events.snapshot_id,
        "files": events.files,
        "excluded": {"probes": events.probes_dropped, "outside_arms": events.outside_arms},
        "arms": kpis,
        "models": models,
        "comparison": compare(kpis, config),
    }


def compare(kpis: dict[str, dict[str, Any]], config: KpiConfig) -> dict[str, Any]:
    empty = {"users": 0, "hit_users": 0}
    control = kpis.get(config.control, empty)
    candidate = kpis.get(config.candidate, empty)
    weights = config.weights or {config.control: 1.0, config.candidate: 1.0}
    srm_result: Srm | None = None
    srm_note = None
    try:
        counts = {arm: kpis.get(arm, empty)["users"] for arm in weights}
        srm_result = srm(counts, weights, config.gate.srm_alpha, config.gate.srm_min_deviation)
    except ValueError as exc:  # e.g. the candidate is already at weight 0
        srm_note = str(exc)
    decision = verdict(
        (control["hit_users"], control["users"]),
        (candidate["hit_users"], candidate["users"]),
        config.gate,
        srm_result,
    )
    out = {
        "control": config.control,
        "candidate": config.candidate,
        "weights": weights,
        "gate": config.gate.to_json(),
        **decision.to_json(),
    }
    if srm_note:
        out["srm_note"] = srm_note
    return out


# ---- output -------------------------------------------------------------------------------------
def write_report(store: BlobStore, report: dict[str, Any], generated_at: float) -> str:
    """Write the report under a key named by its snapshot and its own content. The content
    part matters: the arms' weights are an input too, so two runs over one snapshot before and
    after a rollout step give different reports, and the one a decision read must stay."""
    body = json.dumps(report, indent=1, sort_keys=True).encode()
    digest = sha256_bytes(body)[:REPORT_DIGEST_CHARS]
    key = kpi_report_key(report["experiment"], report["snapshot_id"], digest)
    store.put(key, body)
    body = {**report, "generated_at": generated_at, "report_key": key}
    store.put(
        kpi_latest_key(report["experiment"]), json.dumps(body, indent=1, sort_keys=True).encode()
    )
    return key


def read_latest(store: BlobStore, experiment: str) -> dict[str, Any] | None:
    from model_registry.errors import BlobNotFound

    try:
        return json.loads(store.get(kpi_latest_key(experiment)))
    except BlobNotFound:
        return None


class KpiMetrics:
    """Prometheus gauges of the newest report (labels: experiment, arm; never a user)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = r = CollectorRegistry()
        arm = ("experiment", "arm")
        self.users = Gauge("marquee_kpi_users", "Users exposed", arm, registry=r)
        self.requests = Gauge("marquee_kpi_requests", "Lists served", arm, registry=r)
        self.hit_rate = Gauge("marquee_kpi_hit_rate", "Share of users with a hit", arm, registry=r)
        self.ci_low = Gauge("marquee_kpi_hit_rate_ci_low", "Wilson lower bound", arm, registry=r)
        self.ci_high = Gauge("marquee_kpi_hit_rate_ci_high", "Wilson upper bound", arm, registry=r)
        self.per_exposure = Gauge(
            "marquee_kpi_hits_per_exposure", "Hits per list served", arm, registry=r
        )
        self.coverage = Gauge("marquee_kpi_coverage", "Catalogue share served", arm, registry=r)
        exp = ("experiment",)
        self.diff = Gauge("marquee_kpi_diff", "Candidate - control hit rate", exp, registry=r)
        self.cs_low = Gauge("marquee_kpi_diff_cs_low", "Sequential lower bound", exp, registry=r)
        self.cs_high = Gauge("marquee_kpi_diff_cs_high", "Sequential upper bound", exp, registry=r)
        self.margin = Gauge("marquee_kpi_margin", "Non-inferiority margin", exp, registry=r)
        self.srm_p = Gauge("marquee_kpi_srm_p_value", "Sample-ratio p-value", exp, registry=r)
        self.verdict = Gauge(
            "marquee_kpi_verdict",
            "1 for the current verdict",
            ("experiment", "verdict"),
            registry=r,
        )
        self.as_of = Gauge(
            "marquee_kpi_as_of_timestamp_seconds", "Newest event time read", exp, registry=r
        )
        self.runs = Counter("marquee_kpi_runs_total", "KPI runs", ("result",), registry=r)

    def update(self, report: dict[str, Any]) -> None:
        for gauge in (
            self.users,
            self.requests,
            self.hit_rate,
            self.ci_low,
            self.ci_high,
            self.per_exposure,
            self.coverage,
            self.diff,
            self.cs_low,
            self.cs_high,
            self.srm_p,
            self.verdict,
            self.as_of,
            self.margin,
        ):
            gauge.clear()  # arms and experiments come and go
        exp = report["experiment"]
        for arm, k in report["arms"].items():
            self.users.labels(exp, arm).set(k["users"])
            self.requests.labels(exp, arm).set(k["requests"])
            if k["hit_rate"] is not None:
                self.hit_rate.labels(exp, arm).set(k["hit_rate"])
                self.ci_low.labels(exp, arm).set(k["hit_rate_ci"][0])
                self.ci_high.labels(exp, arm).set(k["hit_rate_ci"][1])
            if k["hits_per_exposure"] is not None:
                self.per_exposure.labels(exp, arm).set(k["hits_per_exposure"])
            if k["coverage"] is not None:
                self.coverage.labels(exp, arm).set(k["coverage"])
        comparison = report["comparison"]
        if comparison["difference"]:
            d = comparison["difference"]
            self.diff.labels(exp).set(d["delta"])
            self.cs_low.labels(exp).set(d["cs_low"])
            self.cs_high.labels(exp).set(d["cs_high"])
        if comparison["srm"]:
            self.srm_p.labels(exp).set(comparison["srm"]["p_value"])
        self.margin.labels(exp).set(comparison["gate"]["margin"])
        for v in ("pass", "fail", "inconclusive"):
            self.verdict.labels(exp, v).set(1 if comparison["verdict"] == v else 0)
        self.as_of.labels(exp).set(report["as_of_ms"] / 1000)


# ---- the job ------------------------------------------------------------------------------------
def experiment_start_ms(registry_uri: str, experiment: str) -> tuple[int, dict[str, float] | None]:
    """From the control plane: when the experiment named so was first configured, and the
    current weights of its arms (None when it is no longer the current experiment)."""
    from model_registry.control import EXPERIMENT, ControlPlane

    cp = ControlPlane.open(registry_uri)
    start, cursor, weights = None, None, None
    current = cp.experiment()
    if current is not None and current.data.get("name") == experiment:
        weights = {a["name"]: float(a["weight"]) for a in current.data.get("arms", [])}
    while True:  # newest first: walk back while the records still name this experiment
        records, cursor = cp.history(EXPERIMENT, limit=100, before=cursor)
        for record in records:
            # A different experiment, or the end of an earlier run under the same name (a
            # rollout retried), is where this run began.
            earlier_run = start is not None and record.data.get("status") == "ended"
            if record.data.get("name") == experiment and not earlier_run:
                start = record.at
            elif start is not None:
                return int(start * 1000), weights
        if cursor is None:
            break
    if start is None:
        raise RegistryError(f"no experiment named {experiment!r} in the control plane")
    return int(start * 1000), weights


def run_once(
    store: BlobStore, config: KpiConfig, clock: Callable[[], float], metrics: KpiMetrics | None
) -> dict[str, Any]:
    events = read_events(store, config.start_ms)
    report = compute(events, config)
    key = write_report(store, report, clock())
    report["report_key"] = key
    if metrics is not None:
        metrics.update(report)
        metrics.runs.labels("ok").inc()
    return report


def run_every(
    every_s: float,
    job: Callable[[], object],
    clock: Callable[[], float],
    wait: Callable[[float], bool],
) -> int:
    """Run `job` every `every_s` seconds of `clock` until `wait(seconds)` returns True (a stop
    was asked: threading.Event.wait in production, a fake in tests). A failing run is logged
    and retried at the next tick; the loop itself never dies of one."""
    runs = 0
    while True:
        started = clock()
        try:
            job()
        except (RegistryError, OSError, ValueError) as exc:
            log.error("kpi run failed: %s", exc)
        runs += 1
        if wait(max(0.0, started + every_s - clock())):
            return runs


def _weights(text: str) -> dict[str, float]:
    out = {}
    for pair in text.split(","):
        name, _, value = pair.partition("=")
        out[name.strip()] = float(value)
    if len(out) < 2 or any(v < 0 for v in out.values()):
        raise ValueError(text)
    return out


def _epoch_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1000)


def cli(argv: list[str], clock: Callable[[], float] = time.time) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestor kpi", description="per-arm online KPIs from the snapshots"
    )
    parser.add_argument("--store", required=True, help="ingestor store URI (snapshots, kpi/)")
    parser.add_argument("--experiment", required=True, help="experiment name (report folder)")
    parser.add_argument("--registry", help="control plane: the experiment's start and weights")
    parser.add_argument("--start", type=_epoch_ms, help="exposures from (epoch ms or ISO-8601)")
    parser.add_argument("--window", type=duration, default=24 * 3600.0, help="W, e.g. 24h")
    parser.add_argument("--control", default="control", help="control arm name")
    parser.add_argument("--candidate", default="candidate", help="candidate arm name")
    parser.add_argument("--weights", type=_weights, help="arm=weight,... for SRM")
    parser.add_argument("--catalogue-items", type=int, help="catalogue size, for coverage")
    parser.add_argument("--margin", type=float, default=GateConfig.margin)
    parser.add_argument("--alpha", type=float, default=GateConfig.alpha)
    parser.add_argument("--n-star", type=float, default=GateConfig.n_star)
    parser.add_argument("--min-users", type=int, default=GateConfig.min_users)
    parser.add_argument("--min-hits", type=int, default=GateConfig.min_hits)
    parser.add_argument("--every", type=duration, help="run continuously, e.g. 60s")
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    if not (0 < args.alpha < 1 and args.margin >= 0 and args.n_star > 0):
        print("error: need 0 < alpha < 1, margin >= 0, n-star > 0", file=sys.stderr)
        return 2
    try:
        store = open_store(args.store)
    except RegistryError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    config: KpiConfig | None = None
    try:
        config = _config(args)  # checks the experiment exists (bad input) before any loop
    except StorageError as exc:
        print(f"error: store or registry unreachable: {one_line(exc)}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        if args.every is None:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        # A continuous run may start before the rollout configures its experiment: wait for it.
        log.warning("%s; looking again every %ss", exc, args.every)
    metrics = KpiMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)

    def job() -> dict[str, Any]:
        try:
            # The control plane moves on (weights change at every step): read it every run.
            current = _config(args) if args.registry else config
            assert current is not None
            report = run_once(store, current, clock, metrics)
        except Exception:
            metrics.runs.labels("error").inc()
            raise
        c = report["comparison"]
        log.info("kpi %s: %s (%s)", report["report_key"], c["verdict"], "; ".join(c["reasons"]))
        return report

    if args.every is None:
        try:
            report = job()
        except StorageError as exc:
            print(f"error: store unreachable: {one_line(exc)}", file=sys.stderr)
            return 1
        print(json.dumps({"report": report["report_key"], **_summary(report)}))
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run_every(args.every, job, clock, stop.wait)
    log.info("stopped cleanly")
    return 0


def _config(args: argparse.Namespace) -> KpiConfig:
    start, weights = args.start, args.weights
    if args.registry:
        found_start, found_weights = experiment_start_ms(args.registry, args.experiment)
        start = found_start if start is None else start
        if weights is None and found_weights:
            weights = {a: found_weights.get(a, 0.0) for a in (args.control, args.candidate)}
    return KpiConfig(
        experiment=args.experiment,
        start_ms=start or 0,
        window_ms=int(args.window * 1000),
        control=args.control,
        candidate=args.candidate,
        weights=weights,
        catalogue_items=args.catalogue_items,
        gate=GateConfig(
            alpha=args.alpha,
            margin=args.margin,
            n_star=args.n_star,
            min_users=args.min_users,
            min_hits=args.min_hits,
        ),
    )


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    c = report["comparison"]
    return {
        "verdict": c["verdict"],
        "reasons": c["reasons"],
        "users": {arm: k["users"] for arm, k in report["arms"].items()},
        "hit_rate": {arm: k["hit_rate"] for arm, k in report["arms"].items()},
        "difference": c["difference"],
    }
