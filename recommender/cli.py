"""`python -m recommender rollout ...` and `python -m recommender probe ...`.

Exit codes (DESIGN §6): 0 done (rollout: promoted; probe: within thresholds), 3 refused (rollout
rolled back; probe over a threshold), 2 bad input, 1 unreachable dependency (or a rollout
stopped by a signal before its end: run the same command again to resume it).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.client import HTTPException
from typing import Any

from model_registry.errors import BlobNotFound, RegistryError, StorageError
from model_registry.experiments import kpi_latest_key
from model_registry.logs import configure_logging
from model_registry.messages import one_line

log = logging.getLogger("recommender.cli")


def main(argv: Sequence[str]) -> int:
    command, rest = argv[0], list(argv[1:])
    if command == "rollout":
        return rollout_main(rest)
    if command == "probe":
        return probe_main(rest)
    print(f"error: unknown command {command!r}", file=sys.stderr)
    return 2


def _stop_event() -> threading.Event:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


# ---- rollout ------------------------------------------------------------------------------------
def fetch_metrics(urls: Sequence[str], timeout: float = 5.0) -> list[str]:
    texts = []
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            texts.append(response.read().decode())
    return texts


def make_observer(kpi_store: Any, metrics_urls: Sequence[str]) -> Callable[[Any], Any]:
    """Observations for a state: the KPI job's latest report of the experiment (the key layout
    model_registry.experiments.kpi_latest_key) and the replicas' counters."""
    from recommender.rollout import Observations, parse_serving_metrics

    def observe(state: Any) -> Observations:
        try:
            kpi = json.loads(kpi_store.get(kpi_latest_key(state.experiment)))
        except BlobNotFound:
            kpi = None
        except (StorageError, ValueError) as exc:
            log.warning("KPI report unreadable: %s", exc)
            kpi = None
        try:
            serving = parse_serving_metrics(fetch_metrics(metrics_urls))
            return Observations(kpi, serving)
        except (OSError, ValueError, HTTPException) as exc:  # a replica down: no evidence
            return Observations(kpi, None, one_line(exc, 200))

    return observe


def rollout_main(argv: list[str], clock: Callable[[], float] = time.time) -> int:
    from model_registry.durations import duration
    from recommender.rollout import (
        Controller,
        RolloutConfig,
        RolloutError,
        RolloutMetrics,
        parse_steps,
    )

    parser = argparse.ArgumentParser(
        prog="python -m recommender rollout",
        description="staged rollout with automatic rollback (recommender/rollout.py)",
    )
    parser.add_argument("--registry", required=True, help="registry URI (the control plane)")
    parser.add_argument("--candidate", required=True, help="vX.Y/kind")
    parser.add_argument(
        "--control",
        help="control arm's kind on the production release (default: the candidate's kind)",
    )
    parser.add_argument("--kpi-store", required=True, help="store the KPI job writes kpi/ to")
    parser.add_argument("--metrics", nargs="+", required=True, help="replica /metrics URLs")
    parser.add_argument("--steps", default="5,25,50,100")
    parser.add_argument("--soak", default="10m", help="time per step, e.g. 10m")
    parser.add_argument("--max-holds", type=int, default=3)
    parser.add_argument("--max-error-delta", type=float, default=0.01)
    parser.add_argument("--max-p95-ratio", type=float, default=1.5)
    parser.add_argument("--p95-floor", type=float, default=0.05, help="seconds")
    parser.add_argument("--min-requests", type=int, default=20)
    parser.add_argument("--experiment", help="experiment name (default rollout-<vX.Y>-<kind>)")
    parser.add_argument("--by", default="rollout", help="actor recorded on every write")
    parser.add_argument("--metrics-port", type=int, default=0, help="serve own metrics here")
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for --metrics-port (0.0.0.0 in a container)",
    )
    parser.add_argument("--dry-run", action="store_true", help="decide and print, write nothing")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, quiet=("kafka",))
    try:
        config = RolloutConfig(
            candidate=args.candidate,
            steps=parse_steps(args.steps),
            soak_s=duration(args.soak),
            max_holds=args.max_holds,
            max_error_delta=args.max_error_delta,
            max_p95_ratio=args.max_p95_ratio,
            p95_floor_s=args.p95_floor,
            min_requests=args.min_requests,
        )
        if args.max_holds < 0 or args.min_requests < 0:
            raise ValueError("max-holds and min-requests must be >= 0")
    except ValueError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    from model_registry.control import ControlPlane
    from model_registry.storage import open_store

    try:
        cp = ControlPlane.open(args.registry)
        kpi_store = open_store(args.kpi_store)
        fetch_metrics(args.metrics)  # every replica answers before anything changes
    except (OSError, ValueError, HTTPException) as exc:
        print(f"error: replica metrics unreachable: {one_line(exc)}", file=sys.stderr)
        return 1
    except StorageError as exc:
        print(f"error: registry unreachable: {one_line(exc)}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    metrics = RolloutMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
    stop = _stop_event()
    controller = Controller(
        cp,
        config,
        make_observer(kpi_store, args.metrics),
        clock,
        stop.wait,
        experiment=args.experiment,
        control_kind=args.control,
        by=args.by,
        dry_run=args.dry_run,
        metrics=metrics,
        out=lambda body: print(json.dumps(_line(body)), flush=True),
    )
    try:
        return controller.run()
    except RolloutError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"error: control plane unreachable: {one_line(exc)}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


def _line(body: dict[str, Any]) -> dict[str, Any]:
    """The decision as one printed line: what an operator reads first."""
    state = body["state"]
    kpi = (body["gates"].get("kpi") or {}).get("value") or {}
    return {
        "experiment": state["experiment"],
        "step": state["steps"][min(state["index"], len(state["steps"]) - 1)],
        "verdict": body["verdict"],
        "action": body["action"],
        "reasons": body["reasons"],
        "delta": kpi.get("delta"),
        "cs": [kpi.get("cs_low"), kpi.get("cs_high")],
        "users": kpi.get("users"),
        "at": body["at"],
    }


# ---- probe --------------------------------------------------------------------------------------
def _users(text: str) -> list[int]:
    users: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        first = int(low)
        last = int(high) if high else first
        if first < 1 or last < first or last - first > 1_000_000:
            raise ValueError(part)
        users.extend(range(first, last + 1))
    return users


def probe_main(argv: list[str]) -> int:
    from model_registry.durations import duration
    from recommender.probe import ProbeMetrics, ProbeRun, breaches, summarise

    parser = argparse.ArgumentParser(
        prog="python -m recommender probe", description="synthetic probes of the serving API"
    )
    parser.add_argument("--url", required=True, help="base URL of the service")
    parser.add_argument(
        "--users",
        type=_users,
        default=_users("1-943"),
        help="known user ids to sample, e.g. 1-943 or 1,5,9",
    )
    parser.add_argument(
        "--models",
        default="",
        help="comma separated models to ask for (kind or vX.Y/kind); empty: the service's choice",
    )
    parser.add_argument("--per-round", type=int, default=4)
    parser.add_argument("--unknown-per-round", type=int, default=1)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--interval", type=duration, default=10.0)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=duration, default=300.0)
    parser.add_argument("--timeout", type=duration, default=5.0)
    parser.add_argument("--history", help="JSON {user: [movie ids seen]} for the no-seen check")
    parser.add_argument("--brokers", help="Kafka brokers: publish each probe")
    parser.add_argument("--topic", default="reco_probes")
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for --metrics-port (0.0.0.0 in a container)",
    )
    parser.add_argument("--max-failure-share", type=float, default=0.05)
    parser.add_argument("--max-p95-ms", type=float, default=500.0)
    parser.add_argument("--summary", help="also write the summary JSON here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_level, quiet=("kafka",))
    limits = (args.per_round, args.unknown_per_round, args.rounds)
    if min(limits) < 0 or args.per_round + args.unknown_per_round < 1 or not 1 <= args.k <= 100:
        print(
            "error: need per-round >= 0, rounds >= 0, one probe per round, 1 <= k <= 100",
            file=sys.stderr,
        )
        return 2
    try:
        history = {}
        if args.history:
            with open(args.history) as f:
                history = {int(u): {int(i) for i in items} for u, items in json.load(f).items()}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        print(f"error: --history: {one_line(exc)}", file=sys.stderr)
        return 2
    metrics = ProbeMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
    publisher = None
    if args.brokers:
        from recommender.publisher import ResponsePublisher

        publisher = ResponsePublisher(args.brokers, args.topic, metrics)  # type: ignore[arg-type]
    stop = _stop_event()
    run = ProbeRun(
        args.url,
        args.users,
        models=[m.strip() for m in args.models.split(",") if m.strip()] or [None],
        per_round=args.per_round,
        unknown_per_round=args.unknown_per_round,
        k=args.k,
        interval_s=args.interval,
        rounds=args.rounds,
        duration_s=args.duration,
        timeout_s=args.timeout,
        history=history,
        seed=args.seed,
        metrics=metrics,
        publish=publisher.publish if publisher else (lambda _e: None),
        wait=stop.wait,
    )
    try:
        results = run.run()
    finally:
        if publisher is not None:
            publisher.close()
    summary = summarise(results)
    summary["breaches"] = breaches(summary, args.max_failure_share, args.max_p95_ms)
    text = json.dumps(summary)
    print(text)
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(text + "\n")
    return 3 if summary["breaches"] else 0
