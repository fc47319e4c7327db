"""Seeds x settings sweep for NCF on the evaluation protocol, in parallel processes.

Each job: fit on train with early stopping on validation, refit on train+validation for the epochs
it chose, measure on test. One JSON line per job, appended to --out as it finishes.

    python scripts/sweep_ncf.py --data ../shared/datasets/ml-100k \
        --out benchmarks/results/ncf_sweep_ml100k.jsonl --seeds 0 1 --workers 16

A seed check of settings (mean and spread over seeds, written as JSON with --summary):

    python scripts/sweep_ncf.py --data ../shared/datasets/ml-100k --configs pretrain \
        --seeds 0 1 2 --workers 2 --out /tmp/ncf.jsonl \
        --summary benchmarks/results/ncf_seeds_ml100k.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Settings compared on the same seeds. The committed ncf_sweep_ml100k.jsonl also holds an earlier
# round (names A_ to H_) measured with the single-phase NeuMF that this module no longer has.
# Settings measured before recency_boost 2 became the default (2026-12-01) name boost 1. Runs
# before 2026-12-02 used the per-pair forward and torch's default Adam: re-running their names
# now gives new draws of the same setting. (Lines named `pretrain` are whatever shipped then.)
# Settings measured before validation also held out each user's latest training interaction
# (2026-12-02) pin it off; the `_BOOST1` ones too.
# Settings measured before negatives were drawn by popularity (seventh session) pin uniform.
_ONE_ITEM = {"inner_holdout": False, "negative_pop_power": 0.0}
_BOOST1 = {"recency_boost": 1.0, **_ONE_ITEM}
CONFIGS = {
    # NeuMF trained from scratch as one model, as before pre-training was added
    "no_pretrain": {
        "pretrain_epochs": 0,
        "finetune_epochs": 40,
        "finetune_patience": 6,
        "finetune_lr_scale": 1.0,
        "alpha": 0.5,
        **_BOOST1,
    },
    "pretrain": {},  # NCFParams(): what ships
    "pretrain_d64": {"dim": 64, **_BOOST1},
    "pretrain_neg8": {"negatives": 8, **_BOOST1},
    "pretrain_ft_lr05": {"finetune_lr_scale": 0.5, **_BOOST1},
    "pretrain_d64_boost3": {"dim": 64, "recency_boost": 3.0, **_ONE_ITEM},
    "pretrain_boost3": {"recency_boost": 3.0, **_ONE_ITEM},
    "pretrain_neg6": {"negatives": 6, **_BOOST1},  # shipped until recency_boost 2
    "pretrain_neg8_d16": {"negatives": 8, "dim": 16, **_BOOST1},
    "pretrain_neg8_b512": {"negatives": 8, "batch_size": 512, "lr": 0.0014, **_BOOST1},
    # shipped until 2026-12-02 (with the per-pair forward and torch's default Adam)
    "pretrain_neg6_boost2": {"negatives": 6, "recency_boost": 2.0, **_ONE_ITEM},
    "pretrain_neg6_boost3": {"negatives": 6, "recency_boost": 3.0, **_ONE_ITEM},
    # 2026-12-02: the same with the factorised forward and the fused Adam, and candidates
    "pretrain_neg6_boost2_fused": {"negatives": 6, "recency_boost": 2.0, **_ONE_ITEM},
    "softmax": {"negatives": 6, "recency_boost": 2.0, "loss": "softmax", **_ONE_ITEM},
    "wd1e-6": {"negatives": 6, "recency_boost": 2.0, "weight_decay": 1e-6, **_ONE_ITEM},
    # shipped until the seventh session (2026-12-02)
    "two_item_validation": {"negatives": 6, "recency_boost": 2.0, "negative_pop_power": 0.0},
    # seventh session: candidates on top of two_item_validation. The popneg lines of seeds 0-2
    # drew by count^power, without the +1 that `_negative_cdf` now adds (seeds 3, 4 had it).
    "user_norm05": {
        "negatives": 6,
        "recency_boost": 2.0,
        "user_norm": 0.5,
        "negative_pop_power": 0.0,
    },
    "popneg05": {"negatives": 6, "recency_boost": 2.0, "negative_pop_power": 0.5},
    "popneg075": {"negatives": 6, "recency_boost": 2.0, "negative_pop_power": 0.75},
    "popneg1": {"negatives": 6, "recency_boost": 2.0, "negative_pop_power": 1.0},
    "popularity_negatives": {"negatives": 6, "recency_boost": 2.0},  # what ships: power 0.5
}


def job(data_dir: str, out: str, name: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from trainer.data import load_movielens
    from trainer.evaluate import evaluate
    from trainer.interactions import Interactions, build_vocab, leave_last_out
    from trainer.models import ncf

    ds = load_movielens(data_dir)
    params = ncf.NCFParams(**CONFIGS[name])
    data = Interactions.from_ratings(ds.ratings, build_vocab(ds.ratings))
    split = leave_last_out(data)
    start = time.time()
    tuned = ncf.fit(split.train, params, np.random.default_rng(seed), split.valid)
    valid = evaluate(tuned, split.train, split.valid, sampled=False).ndcg
    refit_start = time.time()
    final = ncf.fit(split.train_valid, tuned.resolved_params, np.random.default_rng(seed))
    refit_secs = time.time() - refit_start
    test = evaluate(final, split.train_valid, split.test)
    result = {
        "name": name,
        "seed": seed,
        "val": round(valid, 4),
        "test_ndcg": round(test.ndcg, 4),
        "test_hr": round(test.hr, 4),
        "pretrain_epochs": tuned.resolved_params.pretrain_epochs,
        "finetune_epochs": tuned.resolved_params.finetune_epochs,
        "alpha": tuned.resolved_params.alpha,
        "secs": round(time.time() - start),
        "refit_secs": round(refit_secs, 1),
        "torch": torch.__version__,
    }
    with open(out, "a") as fh:
        fh.write(json.dumps(result) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--summary", type=Path, help="also write per-config mean/std as JSON")
    args = parser.parse_args()
    jobs = [(args.data, args.out, n, s) for s in args.seeds for n in args.configs]
    results = []
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(job, *zip(*jobs, strict=True)):
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.summary:
        _summary(args, results)


def _summary(args: argparse.Namespace, results: list[dict]) -> None:
    from trainer.models.ncf import NCFParams

    out = {}
    for name in args.configs:
        runs = [r for r in results if r["name"] == name]
        summary = {"runs": runs}
        for key in ("test_ndcg", "test_hr", "val", "secs", "refit_secs"):
            values = np.array([r[key] for r in runs], dtype=float)
            summary[key] = {
                "mean": round(float(values.mean()), 4),
                "std": round(float(values.std(ddof=1)), 4) if values.size > 1 else None,
            }
        out[name] = summary
    out["params"] = {
        name: NCFParams(**CONFIGS[name]).model_dump(mode="json") for name in args.configs
    }
    out["seeds"] = args.seeds
    out["machine"] = f"{os.cpu_count()} cores; workers={args.workers}"
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
