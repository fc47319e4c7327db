"""NCF's ML-100K refit time against the NCF of another commit, in alternating runs.

Issue #14 allows NCF at most 1.5x the training time it had before the issue (commit 2101379).
The time compared is what the trainer's table reports as `train_seconds`: the refit on
train+validation with the parameters validation chose (seed 0), read from each tree's committed
`benchmarks/results/ml100k_report.json`. Each run is a fresh child process of that tree's code,
with torch's thread rule as that tree's `ncf.fit` sets it; runs alternate (baseline, current,
baseline, ...) so that a shared machine's slow minutes fall on both. Results as JSON.

    git worktree add /tmp/ncf-before 2101379
    python scripts/bench_ncf_refit.py --data ../shared/datasets/ml-100k \
        --baseline-tree /tmp/ncf-before --repeats 3 --out benchmarks/results/ncf_refit_time.json

`--current-tree` times another checkout in place of this one (default: this repository);
`--current-update` changes the current tree's parameters (another seed's chosen epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.bench_train import write_result  # noqa: E402

# One refit in the child: the tree's own loader, split and NCF, with the given parameters.
_CHILD = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from trainer.data import load_movielens
from trainer.interactions import Interactions, build_vocab, leave_last_out
from trainer.models import ncf
ds = load_movielens(sys.argv[2])
split = leave_last_out(Interactions.from_ratings(ds.ratings, build_vocab(ds.ratings)))
params = ncf.NCFParams(**json.loads(sys.argv[3]))
start = time.perf_counter()
ncf.fit(split.train_valid, params, np.random.default_rng(0))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def refit_seconds(tree: Path, data: str, params: dict) -> float:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tree), data, json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"refit in {tree} failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def commit(tree: Path) -> str:
    """The tree's checked-out commit, with "+changes" when its tracked files differ from it."""
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD"]).returncode != 0
    return f"{head}+changes" if dirty else head


def reported_params(tree: Path) -> dict:
    report = json.loads((tree / "benchmarks/results/ml100k_report.json").read_text())
    return report["kinds"]["ncf"]["params"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the ML-100K folder")
    parser.add_argument("--baseline-tree", type=Path, required=True, help="a checkout to compare")
    parser.add_argument("--current-tree", type=Path, default=REPO, help="default: this repo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--current-update",
        type=json.loads,
        default={},
        help="JSON over the current tree's reported params, e.g. '{\"pretrain_epochs\": 28}' "
        "to time another seed's choice",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ncf_refit_time.json"))
    args = parser.parse_args()
    for tree in (args.baseline_tree, args.current_tree):
        if not (tree / "trainer/models/ncf.py").is_file():
            parser.error(f"{tree} has no trainer/models/ncf.py")
    trees = {"baseline": args.baseline_tree.resolve(), "current": args.current_tree.resolve()}
    params = {name: reported_params(tree) for name, tree in trees.items()}
    params["current"].update(args.current_update)
    commits = {name: commit(tree) for name, tree in trees.items()}  # before edits can follow
    runs: dict[str, list[float]] = {"baseline": [], "current": []}
    for i in range(args.repeats):
        for name, tree in trees.items():
            started = time.perf_counter()
            runs[name].append(round(refit_seconds(tree, args.data, params[name]), 1))
            print(
                f"[{i + 1}/{args.repeats}] {name}: refit {runs[name][-1]}s "
                f"({time.perf_counter() - started:.0f}s with loading)",
                flush=True,
            )
    medians = {name: float(np.median(v)) for name, v in runs.items()}
    pairs = [c / b for b, c in zip(runs["baseline"], runs["current"], strict=True)]
    ratio = round(medians["current"] / medians["baseline"], 3)
    write_result(
        args.out,
        {
            "commits": commits,
            "params": params,
            "refit_seconds": runs,
            "median_seconds": medians,
            "ratio_of_medians": ratio,
            "ratio_per_pair": [round(r, 3) for r in pairs],
        },
    )
    print(f"ratio of medians {ratio}; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
