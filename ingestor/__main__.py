"""`python -m ingestor [run] ...` consumes events; `python -m ingestor snapshots ...` lists them;
`python -m ingestor kpi ...` computes per-arm KPIs from them (ingestor/kpi.py)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from ingestor.schema import Catalogue
from ingestor.settings import IngestSettings
from ingestor.snapshot import day, list_snapshots, snapshot_id
from model_registry.errors import RegistryError
from model_registry.logs import configure_logging
from model_registry.messages import one_line
from model_registry.registry import Registry
from model_registry.storage import open_store

log = logging.getLogger("ingestor")


def load_catalogue(source: str) -> Catalogue:
    """From a registry URI (newest release's vocab/catalogue.json, its hash checked) or a
    catalogue.json path. The format is trainer.models.release_format's, which the ingestor may
    not import: only the two fields used here are checked."""
    path = Path(source)
    if "://" not in source and path.is_file():
        raw = path.read_bytes()
    else:
        registry = Registry.open(source)
        version = registry.latest()
        if version is None:
            raise RegistryError(f"{source}: no release to read a catalogue from")
        raw = registry.read_part_file(version, "vocab", "catalogue.json")
    try:
        entries = json.loads(raw)
        titles = {int(k): v["title"] for k, v in entries.items() if re.fullmatch("[0-9]{1,19}", k)}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise RegistryError(
            f"{source}: the catalogue is not {{movie_id: {{title: ...}}}} JSON"
        ) from None
    if not all(isinstance(t, str) for t in titles.values()):
        raise RegistryError(f"{source}: catalogue titles must be strings")
    return Catalogue(titles)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestor run")
    parser.add_argument("--brokers", help="host:port[,host:port] (INGEST_BROKERS)")
    parser.add_argument(
        "--topics",
        help="topic=kind,... kinds: rate, watch, reco_requests, reco_responses, reco_probes"
        " (INGEST_TOPICS)",
    )
    parser.add_argument("--group", help="consumer group (INGEST_GROUP)")
    parser.add_argument("--store", help="file:///path or s3://bucket/prefix (INGEST_STORE)")
    parser.add_argument(
        "--batch-size", type=int, help="flush at this many events (INGEST_BATCH_SIZE)"
    )
    parser.add_argument(
        "--flush-seconds", type=float, help="... or this old (INGEST_FLUSH_SECONDS)"
    )
    parser.add_argument("--catalogue", help="registry URI or catalogue.json (INGEST_CATALOGUE)")
    parser.add_argument(
        "--dlq",
        choices=("store", "kafka"),
        help="dead letters to dlq/ in the store, or to <topic>.dlq topics (INGEST_DLQ)",
    )
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (INGEST_METRICS_PORT)")
    parser.add_argument(
        "--metrics-host", help="address the metrics endpoint binds (INGEST_METRICS_HOST)"
    )
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = IngestSettings(**overrides)
    except ValidationError as exc:
        print(f"error: invalid settings: {one_line(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, quiet=("kafka",))
    from ingestor.runner import Ingestor, tune_gc
    from ingestor.source import KafkaSource

    tune_gc()

    from kafka.errors import KafkaError

    catalogue = load_catalogue(settings.catalogue) if settings.catalogue else None
    try:
        dead_letters = None
        if settings.dlq == "kafka":
            from ingestor.deadletter import KafkaDeadLetters

            dead_letters = KafkaDeadLetters(
                settings.brokers,
                suffix=settings.dlq_suffix,
                bootstrap_timeout_ms=settings.bootstrap_timeout_ms,
            )
        ingestor = Ingestor(
            open_store(settings.store),
            settings.topic_kinds(),
            batch_size=settings.batch_size,
            flush_seconds=settings.flush_seconds,
            catalogue=catalogue,
            dead_letters=dead_letters,
        )
        source = KafkaSource(
            settings.brokers,
            settings.topic_kinds(),
            settings.group,
            on_revoke=ingestor.on_revoke,
            on_assign=ingestor.on_assign,
            session_timeout_ms=settings.session_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            heartbeat_interval_ms=max(500, settings.session_timeout_ms // 6),
            bootstrap_timeout_ms=settings.bootstrap_timeout_ms,
        )
    except KafkaError as exc:  # nothing consumed yet, so nothing to flush: say why and exit
        print(f"error: cannot reach Kafka at {settings.brokers}: {exc}", file=sys.stderr)
        return 1
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=ingestor.metrics.registry
        )
    stopping = {"flag": False}

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: flushing, committing, exiting", signum)
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ingestor.run(source, lambda: stopping["flag"])
    log.info("stopped cleanly")
    return 0


def _snapshots(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestor snapshots", description="list snapshots and compute a window's id"
    )
    parser.add_argument("--store", required=True)
    parser.add_argument("--topic")
    parser.add_argument("--since", type=day, help="first date, YYYY-MM-DD")
    parser.add_argument("--until", type=day, help="last date, YYYY-MM-DD")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    import io

    import pyarrow.parquet as pq

    store = open_store(args.store)
    files = list_snapshots(store, args.topic, args.since, args.until)
    groups: dict[tuple[str, str], dict] = {}
    for f in files:
        rows = pq.ParquetFile(io.BytesIO(store.get(f.key))).metadata.num_rows
        g = groups.setdefault(
            (f.topic, f.date),
            {"topic": f.topic, "date": f.date, "files": 0, "rows": 0, "offsets": {}},
        )
        g["files"] += 1
        g["rows"] += rows
        lo, hi = g["offsets"].get(f.partition, (f.first, f.last))
        g["offsets"][f.partition] = (min(lo, f.first), max(hi, f.last))
    summary = {
        "store": store.uri,
        "files": len(files),
        "snapshot_id": snapshot_id(store, files),
        "groups": list(groups.values()),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for g in summary["groups"]:
        spans = " ".join(f"p{p}:{lo}-{hi}" for p, (lo, hi) in sorted(g["offsets"].items()))
        print(f"{g['topic']:<16} {g['date']}  {g['files']:>5} files {g['rows']:>9} rows  {spans}")
    print(f"{len(files)} files; snapshot id {summary['snapshot_id']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "snapshots":
            return _snapshots(argv[1:])
        if argv and argv[0] == "kpi":
            from ingestor.kpi import cli as kpi

            return kpi(argv[1:])
        return _run(argv[1:] if argv and argv[0] == "run" else argv)
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
