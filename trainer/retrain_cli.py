"""`python -m trainer retrain | gate | drift`: argument parsing and printing for the loop.

    retrain --registry URI (--snapshots URI [--since D] [--until D | --window 90d] | --data DIR)
            [--kinds ...] [--promote] [--dry-run] [--report FILE] [--summary FILE.md]
    gate CANDIDATE [--against production|vX.Y] --registry URI (--snapshots ... | --data DIR)
    drift --reference SPEC --current SPEC [--registry URI] [--new-only]
          SPEC: production | vX.Y (a release's recorded window) | a MovieLens folder |
                a snapshot store URI, optionally URI@YYYY-MM-DD..YYYY-MM-DD

Exit codes: 0 done (published / gate passed), 3 refused by the gate, 2 bad input, 1 a store that
cannot be reached (raised to the trainer's main, which maps the error classes).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ingestor.snapshot import day
from model_registry.control import ControlPlane
from model_registry.registry import VERSION_RE, Registry
from model_registry.storage import LocalStore
from trainer.arguments import check_writable_file, check_writable_folder, parse_kinds
from trainer.data import Dataset, load_movielens, load_snapshots
from trainer.drift import (
    DriftSettings,
    Profile,
    drift_report,
    profile_dataset,
    profile_release,
    uses_watches,
)
from trainer.drift import summary_lines as drift_lines
from trainer.errors import TrainerError
from trainer.gate import GateInputs, GateSettings, HeldOut, load_release, run_gate
from trainer.gate import summary_lines as gate_lines
from trainer.interactions import Interactions, build_vocab, leave_last_out
from trainer.models import KINDS
from trainer.retrain import EXIT_OK, EXIT_REFUSED, retrain

log = logging.getLogger("trainer")
_WINDOW = re.compile(r"([0-9]{1,4})d")
_DAY = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_RANGE = re.compile(rf"(?P<uri>.+)@(?P<since>{_DAY})?\.\.(?P<until>{_DAY})?")


def _window_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="MovieLens folder")
    source.add_argument("--snapshots", help="ingestor store URI: its rate and watch snapshots")
    p.add_argument("--since", type=day, help="with --snapshots: first date (YYYY-MM-DD)")
    p.add_argument("--until", type=day, help="with --snapshots: last date (default today)")
    p.add_argument("--window", help="with --snapshots: N days up to --until (90d), or all")
    p.add_argument("--catalogue", type=Path, help="with --snapshots: MovieLens folder (titles)")
    p.add_argument("--registry", required=True, help="file:///abs/path, s3://bucket/prefix")


def add_parsers(sub: Any) -> None:
    r = sub.add_parser("retrain", help="drift, train, gate against production, publish, promote")
    _window_args(r)
    r.add_argument("--kinds", default=",".join(KINDS), help="comma separated model kinds")
    r.add_argument("--promote", action="store_true", help="make it production if the gate passes")
    r.add_argument("--dry-run", action="store_true", help="everything but publishing")
    r.add_argument("--report", type=Path, help="write the whole outcome as JSON here")
    r.add_argument("--summary", type=Path, help="write the job summary (Markdown) here")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--by", default="retrain", help="who acts, in the control plane's records")
    g = sub.add_parser("gate", help="the gate alone: a published release against another")
    g.add_argument("candidate", help="vX.Y")
    g.add_argument("--against", default="production", help="production (default) or vX.Y")
    _window_args(g)
    g.add_argument("--json", action="store_true")
    d = sub.add_parser("drift", help="drift report between two windows")
    d.add_argument("--reference", required=True, help="production | vX.Y | folder | URI[@a..b]")
    d.add_argument("--current", required=True, help="same forms as --reference")
    d.add_argument("--registry", help="needed when a side is a release")
    d.add_argument("--new-only", action="store_true", help="only current events after reference")
    d.add_argument("--json", action="store_true")


def bounds(
    since: str | None, until: str | None, window: str | None, today: date
) -> tuple[str | None, str | None]:
    """The window's first and last day; `--window Nd` is the N days ending at `until` (today)."""
    if window is None or window == "all":
        return since, until
    match = _WINDOW.fullmatch(window)
    if not match or int(match.group(1)) < 1:
        raise TrainerError(f"--window {window!r}: expected a number of days, e.g. 90d")
    if since is not None:
        raise TrainerError("--since and --window are exclusive")
    last = date.fromisoformat(until) if until else today
    first = last - timedelta(days=int(match.group(1)) - 1)
    return first.isoformat(), last.isoformat()


def _load(args: argparse.Namespace, today: date) -> tuple[Dataset, dict[str, Any]]:
    if args.data is not None:
        if args.since or args.until or args.window:
            raise TrainerError("--since/--until/--window apply to --snapshots only")
        return load_movielens(args.data), {"source": str(args.data)}
    since, until = bounds(args.since, args.until, args.window, today)
    dataset = load_snapshots(args.snapshots, since, until, args.catalogue)
    return dataset, {"source": args.snapshots, "since": since, "until": until}


def run(args: argparse.Namespace, today: date | None = None) -> int:
    today = today or datetime.now(UTC).date()
    if args.command == "retrain":
        return _retrain(args, today)
    if args.command == "gate":
        return _gate(args, today)
    return _drift(args)


def _retrain(args: argparse.Namespace, today: date) -> int:
    # what a user can get wrong is checked before loading data, training or publishing
    kinds = parse_kinds(args.kinds)
    for flag, path in (("--report", args.report), ("--summary", args.summary)):
        if path is not None:
            check_writable_file(path, flag)
    registry = Registry.open(args.registry)
    if isinstance(registry.store, LocalStore):
        check_writable_folder(registry.store.root, "--registry")
    dataset, window = _load(args, today)
    window["snapshot_id"] = dataset.snapshot_id()
    outcome = retrain(
        dataset,
        registry,
        kinds,
        promote=args.promote,
        dry_run=args.dry_run,
        gate_settings=GateSettings(),
        drift_settings=DriftSettings(),
        seed=args.seed,
        by=args.by,
        window=window,
    )
    if outcome.report is not None:
        print(outcome.report.table())
    text = outcome.summary()
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(text)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(outcome.as_dict(), indent=2, default=str))
    state = "promoted" if outcome.promoted else ("published" if outcome.published else "dry run")
    print(f"{outcome.decision}: {outcome.version or '-'} ({state})")
    if outcome.refusal:
        print(f"refused: {outcome.refusal}", file=sys.stderr)
    return outcome.exit_code


def _version(registry: Registry, name: str) -> str:
    if name == "production":
        pointer = ControlPlane(registry).pointer()
        if pointer is None:
            raise TrainerError(f"{registry.uri}: no production release (the pointer is empty)")
        return str(pointer.data["version"])
    if not VERSION_RE.match(name):
        raise TrainerError(f"{name!r}: expected production or vMAJOR.MINOR")
    return name


def _gate(args: argparse.Namespace, today: date) -> int:
    registry = Registry.open(args.registry)
    cand_version = _version(registry, args.candidate)
    prod_version = _version(registry, args.against)
    dataset, _ = _load(args, today)
    vocab = build_vocab(dataset.ratings)
    test = leave_last_out(Interactions.from_ratings(dataset.ratings, vocab)).test
    candidate, _ = load_release(registry, cand_version)
    production, _ = load_release(registry, prod_version)
    held = HeldOut.from_split(vocab, test)
    gate = run_gate(GateInputs(candidate, production, held), GateSettings())
    print(json.dumps(gate, indent=2) if args.json else "\n".join(gate_lines(gate)))
    return EXIT_OK if gate["decision"] == "accept" else EXIT_REFUSED


def _profile(
    spec: str, registry: str | None, after_ts: int | None = None, with_watches: bool = False
) -> tuple[Profile, bool]:
    """The profile of a release or a window, and whether it counts watched pairs."""
    if spec == "production" or VERSION_RE.match(spec):
        if registry is None:
            raise TrainerError(f"{spec}: a release needs --registry")
        reg = Registry.open(registry)
        version = _version(reg, spec)
        _, data = load_release(reg, version)
        return profile_release(version, data), uses_watches(data.manifest)
    if "://" in spec:
        match = _RANGE.fullmatch(spec)
        if match:
            dataset = load_snapshots(match["uri"], match["since"], match["until"])
        else:
            dataset = load_snapshots(spec)
    else:
        dataset = load_movielens(spec)
    return profile_dataset(spec, dataset, after_ts, with_watches), with_watches


def _drift(args: argparse.Namespace) -> int:
    # a window compared with a release counts what that release's history counts
    reference, watches = _profile(args.reference, args.registry)
    after = reference.last_ts if args.new_only else None
    current, _ = _profile(args.current, args.registry, after, watches)
    report = drift_report(reference, current, DriftSettings())
    print(json.dumps(report, indent=2) if args.json else "\n".join(drift_lines(report)))
    return EXIT_OK


__all__ = ["add_parsers", "bounds", "run"]
