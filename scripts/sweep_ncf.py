"""Seeds x settings sweep for NCF on the evaluation protocol, in parallel processes.

Each job: fit on train with early stopping on validation, refit on train+validation for the epochs
it chose, measure on test. One JSON line per job, appended to --out as it finishes.

    python scripts/sweep_ncf.py --data ../shared/datasets/ml-100k \
        --out benchmarks/results/ncf_sweep_ml100k.jsonl --seeds 0 1 --workers 16
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

CONFIGS = {
    "A_base": {"patience": 3, "epochs": 30, "recency_tau": None},
    "B_pat6": {"patience": 6, "epochs": 40, "recency_tau": None},
    "C_tau3": {"recency_tau": 3.0, "patience": 6, "epochs": 40},
    "D_tau3_gmf64": {"recency_tau": 3.0, "patience": 6, "epochs": 40, "gmf_dim": 64},
    "E_tau3_b1024": {
        "recency_tau": 3.0,
        "patience": 6,
        "epochs": 40,
        "batch_size": 1024,
        "lr": 0.002,
    },
    "F_tau1": {"recency_tau": 1.0, "patience": 6, "epochs": 40},
    "G_tau3_neg2": {"recency_tau": 3.0, "patience": 6, "epochs": 40, "negatives": 2},
    "H_tau10": {"recency_tau": 10.0, "patience": 6, "epochs": 40},
}


def job(data_dir: str, out: str, name: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from trainer.data import load_movielens
    from trainer.evaluate import evaluate
    from trainer.interactions import Interactions, build_vocab, leave_last_out
    from trainer.models import ncf

    ds = load_movielens(data_dir)
    data = Interactions.from_ratings(ds.ratings, build_vocab(ds.ratings))
    split = leave_last_out(data)
    start = time.time()
    tuned = ncf.fit(
        split.train, ncf.NCFParams(**CONFIGS[name]), np.random.default_rng(seed), split.valid
    )
    valid = evaluate(tuned, split.train, split.valid, sampled=False).ndcg
    final = ncf.fit(split.train_valid, tuned.resolved_params, np.random.default_rng(seed))
    test = evaluate(final, split.train_valid, split.test)
    result = {
        "name": name,
        "seed": seed,
        "val": round(valid, 4),
        "test_ndcg": round(test.ndcg, 4),
        "test_hr": round(test.hr, 4),
        "epochs": tuned.resolved_params.epochs,
        "secs": round(time.time() - start),
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
    args = parser.parse_args()
    jobs = [(args.data, args.out, n, s) for s in args.seeds for n in args.configs]
    with ProcessPoolExecutor(args.workers) as pool:
        for result in pool.map(job, *zip(*jobs, strict=True)):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
