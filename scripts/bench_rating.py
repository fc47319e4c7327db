"""Rating prediction side by side on the identical temporal split: ours vs scikit-surprise.

The split is the evaluation protocol's (each user's last rating is test, the one before it
validation). Ours: `trainer.rating_eval`'s procedure (grid on validation, refit on
train+validation, RMSE/MAE on test) plus the global mean + biases baseline it reports. Peers
(fit on the same train+validation ratings, measured on the same test ratings): surprise's SVD
with its defaults, and BaselineOnly (surprise's global mean + biases, ALS-fitted). Seeds vary
the random initialisation of both factor models.

    .venv/bin/pip install scikit-surprise   # only for this benchmark
    python scripts/bench_rating.py --data ../shared/datasets/ml-100k \
        --out benchmarks/results/rating_ml100k.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.data import load_movielens
from trainer.interactions import Interactions, build_vocab, leave_last_out
from trainer.models.rating import RatingParams, fit
from trainer.rating_eval import train_rating


def _errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    diff = pred - truth
    return {
        "rmse": round(float(np.sqrt(np.mean(diff**2))), 5),
        "mae": round(float(np.mean(np.abs(diff))), 5),
    }


def _paired_bootstrap(ours: np.ndarray, peer: np.ndarray, truth: np.ndarray, seed: int) -> dict:
    """95% interval of RMSE(peer) - RMSE(ours) over test users resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, truth.size, size=(2000, truth.size))
    a, b = (ours - truth) ** 2, (peer - truth) ** 2
    diff = np.sqrt(b[idx].mean(axis=1)) - np.sqrt(a[idx].mean(axis=1))
    low, high = np.percentile(diff, [2.5, 97.5])
    return {
        "rmse_gain": round(float(np.sqrt(b.mean()) - np.sqrt(a.mean())), 5),
        "ci95": [round(float(low), 5), round(float(high), 5)],
    }


def _surprise(train, test, algo_name: str, seed: int) -> dict:
    import surprise

    frame = {
        "user": train.user_idx.tolist(),
        "item": train.item_idx.tolist(),
        "rating": train.rating.astype(float).tolist(),
    }
    import pandas as pd

    reader = surprise.Reader(rating_scale=(float(train.rating.min()), float(train.rating.max())))
    data = surprise.Dataset.load_from_df(pd.DataFrame(frame), reader)
    trainset = data.build_full_trainset()
    algo = (
        surprise.SVD(random_state=seed)
        if algo_name == "SVD"
        else surprise.BaselineOnly(verbose=False)
    )
    start = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - start
    pairs = zip(test.user_idx.tolist(), test.item_idx.tolist(), strict=True)
    pred = np.array([algo.predict(u, i).est for u, i in pairs])
    return {**_errors(pred, test.rating), "train_seconds": round(seconds, 2), "pred": pred}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    import tempfile

    ds = load_movielens(args.data)
    data = Interactions.from_ratings(ds.ratings, build_vocab(ds.ratings))
    split = leave_last_out(data)
    tv = split.train_valid
    runs = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            ours = train_rating(data, split, seed, Path(tmp) / "rating")
        assert ours is not None
        m = ours["metrics"]
        ours_model = fit(tv, RatingParams(**ours["params"]), np.random.default_rng(seed))
        ours_pred = ours_model.predict_many(split.test.user_idx, split.test.item_idx)
        svd = _surprise(tv, split.test, "SVD", seed)
        svd_pred = svd.pop("pred")
        row = {
            "seed": seed,
            "ours": {"rmse": m["rmse"], "mae": m["mae"], "train_seconds": m["train_seconds"]},
            "ours_params": ours["params"],
            "ours_biases_only": {"rmse": m["baseline_rmse"], "mae": m["baseline_mae"]},
            "surprise_svd": svd,
            "ours_vs_svd_paired_bootstrap": _paired_bootstrap(
                ours_pred, svd_pred, split.test.rating, seed
            ),
        }
        print(json.dumps(row), flush=True)
        runs.append(row)
    baseline_only = _surprise(tv, split.test, "BaselineOnly", 0)
    baseline_only.pop("pred")

    def mean(key: str, metric: str) -> float:
        return round(float(np.mean([r[key][metric] for r in runs])), 5)

    import surprise

    summary = {
        name: {"rmse": mean(name, "rmse"), "mae": mean(name, "mae")}
        for name in ("ours", "ours_biases_only", "surprise_svd")
    }
    summary["surprise_baseline_only"] = {k: baseline_only[k] for k in ("rmse", "mae")}
    result = {
        "dataset": ds.stats(),
        "protocol": "temporal leave-last-out: each user's last rating is test (n="
        f"{len(split.test)}); fit on train+validation; RMSE/MAE of the test ratings",
        "seeds": args.seeds,
        "runs": runs,
        "mean_over_seeds": summary,
        "ours_beats_surprise_svd_rmse": summary["ours"]["rmse"] < summary["surprise_svd"]["rmse"],
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "surprise": surprise.__version__,
        },
        "machine": f"{platform.machine()}, shared 2-core VM",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
