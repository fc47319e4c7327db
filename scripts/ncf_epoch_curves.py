"""NCF's full-ranking NDCG@10 after every epoch, at three held-out positions, over seeds.

A diagnostic for how NCF picks its epochs (docs/evaluation.md, "NCF over seeds"). For each seed,
three runs of the sixth session's setting's pre-training (alpha 0.5, no early stop, no
fine-tuning, the one-item validation it had before `inner_holdout`, uniform negatives as before
`negative_pop_power`), each scored after every epoch:

- `inner`: trained on train minus each user's latest training row, scored on that row;
- `valid`: trained on train, scored on the validation row (what single-row validation sees);
- `test`:  trained on train+validation, scored on the test row (the refit's own trajectory).

Results as JSON (the curves, each curve's best epoch, and the mean curve over seeds). Reading the
`test` curves is looking at the test set: use them to understand, not to choose.

    python scripts/ncf_epoch_curves.py --data ../shared/datasets/ml-100k --seeds 0 1 2 \
        --workers 2 --out benchmarks/results/ncf_epoch_curves.json
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_train import write_result

EPOCHS = 40
SETTING = {
    "negatives": 6,
    "recency_boost": 2.0,
    "inner_holdout": False,
    "negative_pop_power": 0.0,  # the committed curves drew negatives uniformly
    "pretrain_epochs": EPOCHS,
    "finetune_epochs": 0,
    "patience": EPOCHS,
}
POSITIONS = ("inner", "valid", "test")
RESULTS = Path("benchmarks/results")


def curve(data_dir: str, seed: int, position: str) -> list[float]:
    import torch

    torch.set_num_threads(1)
    from trainer.data import load_movielens
    from trainer.interactions import Interactions, build_vocab, leave_last_out
    from trainer.models import ncf

    ds = load_movielens(data_dir)
    split = leave_last_out(Interactions.from_ratings(ds.ratings, build_vocab(ds.ratings)))
    inner = leave_last_out(split.train)  # inner.test: each user's latest training row
    fit_on, held_out = {
        "inner": (inner.train_valid, inner.test),
        "valid": (split.train, split.valid),
        "test": (split.train_valid, split.test),
    }[position]
    scores: list[float] = []
    validate = ncf._Trainer._validate

    def recorded(self, alpha: float) -> float:  # every epoch's score, not only the best
        score = validate(self, alpha)
        scores.append(round(score, 4))
        return score

    ncf._Trainer._validate = recorded
    ncf.fit(fit_on, ncf.NCFParams(**SETTING), np.random.default_rng(seed), held_out)
    return scores[:EPOCHS]  # the alpha choice after pre-training scores three more


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/ncf_epoch_curves.json")
    )
    args = parser.parse_args()
    jobs = [(args.data, s, p) for s in args.seeds for p in POSITIONS]
    curves: dict[str, dict[str, list[float]]] = {p: {} for p in POSITIONS}
    with ProcessPoolExecutor(args.workers) as pool:
        for (_, seed, position), scores in zip(
            jobs, pool.map(curve, *zip(*jobs, strict=True)), strict=True
        ):
            curves[position][str(seed)] = scores
            print(f"seed {seed} {position}: best epoch {int(np.argmax(scores)) + 1}", flush=True)
    summary = {}
    for position, by_seed in curves.items():
        mean = np.mean(list(by_seed.values()), axis=0)
        summary[position] = {
            "best_epoch_per_seed": {s: int(np.argmax(c)) + 1 for s, c in by_seed.items()},
            "mean_curve": [round(float(x), 4) for x in mean],
            "best_epoch_of_mean_curve": int(np.argmax(mean)) + 1,
        }
    write_result(args.out, {"setting": SETTING, "curves": curves, "summary": summary})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
