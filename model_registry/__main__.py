"""`python -m model_registry`: releases and the control plane from the command line.

    versions                      complete releases, oldest first, the production one marked
    show vX.Y                     a release's manifest
    verify vX.Y                   every sha256, every array loadable and finite
    promote vX.Y --reason R       point production at a release (every replica follows)
    rollback [--to vX.Y] --reason R
    history [--stream pointer] [--limit N] [--before SEQ]
    status                        pointer, experiment, and what each reporting replica serves

`--registry URI` or REGISTRY. Exit 0 done, 2 bad input or a refused change (one line on stderr,
naming the current state on a conflict), 1 when the store cannot be reached.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from model_registry.control import POINTER, STREAM, ControlPlane, Record
from model_registry.errors import (
    Conflict,
    InvalidControl,
    InvalidKey,
    InvalidVersion,
    RegistryError,
    ReleaseCorrupt,
    ReleaseNotFound,
    StorageError,
)
from model_registry.registry import Registry


class UsageError(Exception):
    """Bad input found by this CLI itself."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_registry",
        description="Releases and the control plane (production pointer, experiment, history).",
    )
    parser.add_argument("--registry", default=os.environ.get("REGISTRY"), help="registry URI")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("versions", help="complete releases, oldest first")
    for name in ("show", "verify"):
        sub.add_parser(name).add_argument("version")
    promote = sub.add_parser("promote", help="point production at a release")
    promote.add_argument("version")
    rollback = sub.add_parser("rollback", help="back to the previous production release")
    rollback.add_argument("--to", help="this release instead of the previous one")
    for p in (promote, rollback):
        p.add_argument("--reason", required=True)
        p.add_argument("--by", default=None, help="who acts (default: the login name)")
        p.add_argument("--expect-seq", type=int, default=None,
                       help="refuse (exit 2) unless the pointer is still at this seq")
        p.add_argument("--force", action="store_true",
                       help="promote a release the gate refused (recorded as forced)")
    history = sub.add_parser("history", help="newest records first")
    history.add_argument("--stream", default=POINTER)
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--before", type=int, default=None, help="cursor: records below seq")
    sub.add_parser("status", help="pointer, experiment and the replicas' reports")
    return parser


def _actor(given: str | None) -> str:
    if given:
        return given
    try:
        return getpass.getuser() or "cli"
    except (KeyError, OSError):
        return "cli"


def _format_record(record: Record) -> str:
    body = record.to_json()
    if record.stream == POINTER:
        change = f"{body['from'] or '-'} -> {body['to']}"
    else:
        change = json.dumps(record.data, sort_keys=True)[:120]
    when = f"{record.at:.3f}"
    return f"#{record.seq} {record.action} {change} by {record.by} at {when}: {record.reason}"


def _verify(registry: Registry, version: str) -> dict[str, Any]:
    """Hashes (fetch checks every one), then every array: loadable without pickle and finite."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="marquee-verify-") as tmp:
        manifest = registry.fetch(version, Path(tmp))
        arrays = {}
        for path in sorted(Path(tmp).rglob("*.npy")):
            rel = path.relative_to(tmp).as_posix()
            try:
                array = np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise ReleaseCorrupt(f"release {version}: {rel} cannot be loaded: {exc}") from None
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise ReleaseCorrupt(f"release {version}: {rel} holds non-finite values")
            arrays[rel] = list(array.shape)
    return {"version": version, "ok": True, "parts": sorted(manifest["parts"]), "arrays": arrays}


def run(args: argparse.Namespace) -> tuple[Any, str]:
    """Do the command; return (JSON-able result, text for people)."""
    if not args.registry:
        raise UsageError("no registry: pass --registry URI or set REGISTRY")
    try:
        registry = Registry.open(args.registry)
    except StorageError as exc:  # a URI we cannot use is bad input, not an outage
        raise UsageError(_first_line(exc)) from None
    control = ControlPlane(registry)
    if args.command == "versions":
        versions = registry.versions()
        pointer = control.pointer()
        live = pointer.data.get("version") if pointer else None
        lines = [f"{v}{'  (production)' if v == live else ''}" for v in versions]
        return {"versions": versions, "production": live}, "\n".join(lines) or "(no releases)"
    if args.command == "show":
        manifest = registry.manifest(args.version)
        return manifest, json.dumps(manifest, indent=2, sort_keys=True)
    if args.command == "verify":
        result = _verify(registry, args.version)
        return result, f"{args.version}: ok ({len(result['arrays'])} arrays, every hash matches)"
    if args.command in ("promote", "rollback"):
        by = _actor(args.by)
        if args.command == "promote":
            record = control.promote(args.version, by=by, reason=args.reason,
                                     expected_seq=args.expect_seq, force=args.force)
        else:
            record = control.rollback(by=by, reason=args.reason, to=args.to,
                                      expected_seq=args.expect_seq, force=args.force)
        return record.to_json(), _format_record(record)
    if args.command == "history":
        if not STREAM.fullmatch(args.stream):
            raise UsageError(f"--stream {args.stream!r}: expected a name like pointer")
        if not 1 <= args.limit <= 1000:
            raise UsageError("--limit must be from 1 to 1000")
        records, cursor = control.history(args.stream, args.limit, args.before)
        text = "\n".join(_format_record(r) for r in records) or "(no records)"
        return {"records": [r.to_json() for r in records], "next_before": cursor}, text
    # status
    pointer = control.pointer()
    experiment = control.experiment()
    replicas = control.replicas()
    live = pointer.data.get("version") if pointer else None
    lines = [
        f"pointer: {live or '(none)'}"
        + (f" (seq {pointer.seq}, {pointer.action} by {pointer.by})" if pointer else ""),
        "experiment: "
        + (
            "(none)"
            if experiment is None
            else ", ".join(f"{a['name']}={a['model']}:{a['weight']:g}"
                           for a in experiment.data.get("arms", []))
            + f" [{experiment.data.get('status')}] (seq {experiment.seq})"
        ),
    ]
    for rep in sorted(replicas, key=lambda r: str(r.get("replica"))):
        lines.append(
            f"replica {rep.get('replica')}: serves {rep.get('version')}, "
            f"in_sync={rep.get('in_sync')} {rep.get('reason') or ''}".rstrip()
        )
    result = {
        "pointer": pointer.to_json() if pointer else None,
        "experiment": experiment.to_json() if experiment else None,
        "replicas": replicas,
    }
    return result, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result, text = run(args)
    except (UsageError, Conflict, InvalidControl, InvalidVersion, InvalidKey,
            ReleaseNotFound, ReleaseCorrupt) as exc:
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"error: cannot use the registry: {_first_line(exc)}", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True) if args.json else text)
    return 0


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


if __name__ == "__main__":
    raise SystemExit(main())
