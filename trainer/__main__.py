"""Command line: `python -m trainer train | download | retrain | gate | drift ...`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from ingestor.snapshot import day
from model_registry.errors import BlobNotFound, InvalidStoreURI, RegistryError, StorageError
from model_registry.registry import Registry
from model_registry.storage import LocalStore
from trainer.arguments import check_writable_file, check_writable_folder, parse_kinds
from trainer.data import load_movielens, load_snapshots
from trainer.download import DATASETS, download
from trainer.errors import DataError, TrainerError
from trainer.models import KINDS
from trainer.pipeline import train_release
from trainer.retrain_cli import add_parsers as add_loop_parsers
from trainer.retrain_cli import run as run_loop

log = logging.getLogger("trainer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train, evaluate and publish one release")
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="MovieLens folder (100K/1M/25M layout)")
    source.add_argument("--snapshots", help="ingestor store URI: its rate and watch snapshots")
    train.add_argument("--since", type=day, help="with --snapshots: first date (YYYY-MM-DD)")
    train.add_argument("--until", type=day, help="with --snapshots: last date (YYYY-MM-DD)")
    train.add_argument("--catalogue", type=Path, help="with --snapshots: MovieLens folder (titles)")
    train.add_argument(
        "--registry", required=True, help="file:///abs/path, s3://bucket/prefix or memory://name"
    )
    train.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma separated model kinds (default: {','.join(KINDS)})",
    )
    train.add_argument("--report", type=Path, help="also write the evaluation table as JSON here")
    train.add_argument("--seed", type=int, default=0)
    add_loop_parsers(sub)  # retrain, gate, drift (trainer/retrain_cli.py)
    dl = sub.add_parser("download", help="download and verify a MovieLens dataset")
    dl.add_argument("name", choices=sorted(DATASETS))
    dl.add_argument("--dest", type=Path, default=Path("data"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("TRAIN_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        if args.command == "download":
            print(download(args.name, args.dest))
            return 0
        if args.command in ("retrain", "gate", "drift"):
            return run_loop(args)
        return _train(args)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        # a store that cannot be reached is a dependency down (1); a bad URI or a missing
        # object is the caller's input (2)
        return 2 if isinstance(exc, BlobNotFound | InvalidStoreURI) else 1
    except (TrainerError, RegistryError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    # Everything a user can get wrong is checked before minutes of training and the publish.
    kinds = parse_kinds(args.kinds)
    if args.report:
        check_writable_file(args.report, "--report")
    registry = Registry.open(args.registry)
    if isinstance(registry.store, LocalStore):
        check_writable_folder(registry.store.root, "--registry")
    started = time.perf_counter()
    try:
        if args.snapshots:
            log.info("loading snapshots from %s", args.snapshots)
            dataset = load_snapshots(args.snapshots, args.since, args.until, args.catalogue)
        else:
            log.info("loading %s", args.data)
            dataset = load_movielens(args.data)
    except OverflowError:  # pandas' int64 parse of an id or timestamp past 2**63 - 1
        source = args.snapshots or args.data
        raise DataError(f"{source}: an id or timestamp does not fit in 64 bits") from None
    if dataset.skipped:
        log.warning("skipped rows: %s", dataset.skipped)
    report = train_release(dataset, registry, kinds, seed=args.seed)
    print(report.table())
    print(
        f"published {report.version} to {report.registry} in {time.perf_counter() - started:.0f}s"
    )
    if args.report:
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report.as_dict(), indent=2))
        except OSError as exc:  # checked above; only a race gets here
            raise TrainerError(f"--report {args.report}: {exc.strerror}") from None
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
