"""What one NCF training step and one user's full-ranking score cost, at the sizes NCF resolves.

For each shape (users, items, interactions) the model `trainer.models.ncf` builds for that many
interactions (`NCFParams.resolve`) is timed on random batches: forward, backward and the
optimiser step in milliseconds (median of 30 steps after 5 warm-up steps), with the fused Adam
NCF uses and, for comparison, torch's default (foreach) Adam. Then `NCFScorer.score_many` on
random weights of the same sizes, in milliseconds per user, at several scoring chunk sizes
(`_CHUNK_FLOATS`). And one epoch's negative sampling, uniform and by popularity
(`negative_pop_power`), in seconds, on random positives with Zipf-like item counts. Results as
JSON.

    python scripts/bench_ncf.py --out benchmarks/results/ncf_step.json \
        [--shapes 943x1682x99000,71428x12322x9768078]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench_train import write_result
from trainer.models import ncf
from trainer.models.data import Interactions

STEPS, WARMUP = 30, 5
CHUNKS = (1 << 17, 1 << 19, 1 << 21, 1 << 23)


def step_costs(n_users: int, n_items: int, params: ncf.NCFParams, fused: bool) -> dict:
    import torch

    torch.manual_seed(0)
    model = ncf._build(torch, n_users, n_items, params)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.lr, fused=fused or None)
    rng = np.random.default_rng(0)
    width = 1 + params.negatives
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "step": []}
    for i in range(WARMUP + STEPS):
        users = torch.from_numpy(rng.integers(0, n_users, params.batch_size))
        items = torch.from_numpy(rng.integers(0, n_items, (params.batch_size, width)))
        t0 = time.perf_counter()
        gmf, mlp = model(users, items)
        loss = torch.nn.functional.softplus(gmf).mean() + torch.nn.functional.softplus(mlp).mean()
        t1 = time.perf_counter()
        optimiser.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        optimiser.step()
        t3 = time.perf_counter()
        if i >= WARMUP:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                phases[name].append(dt * 1000)
    out = {name: round(float(np.median(v)), 2) for name, v in phases.items()}
    out["total"] = round(sum(out.values()), 2)
    return out


def score_costs(n_users: int, n_items: int, params: ncf.NCFParams) -> dict:
    rng = np.random.default_rng(0)
    dim, sizes = params.dim, (2 * params.dim, *params.hidden)
    weights = {
        name: rng.normal(0, 0.1, (n, dim)).astype(np.float32)
        for name, n in (
            ("gmf_user", n_users),
            ("gmf_item", n_items),
            ("mlp_user", n_users),
            ("mlp_item", n_items),
        )
    }
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        weights[f"mlp_w{i}"] = rng.normal(0, 0.1, (b, a)).astype(np.float32)
        weights[f"mlp_b{i}"] = rng.normal(0, 0.1, b).astype(np.float32)
    weights["out_w"] = rng.normal(0, 0.1, (1, dim + sizes[-1])).astype(np.float32)
    weights["out_b"] = np.zeros(1, dtype=np.float32)
    scorer = ncf.NCFScorer(weights)
    users = rng.choice(n_users, min(n_users, 500), replace=False)
    out = {}
    default = ncf._CHUNK_FLOATS
    try:
        for chunk in CHUNKS:
            ncf._CHUNK_FLOATS = chunk
            scorer.score_many(users[:8])
            start = time.perf_counter()
            scorer.score_many(users)
            out[str(chunk)] = round((time.perf_counter() - start) / users.size * 1000, 3)
    finally:
        ncf._CHUNK_FLOATS = default
    return {"ms_per_user_by_chunk_floats": out, "default_chunk_floats": default}


def sampling_costs(n_users: int, n_items: int, n: int, params: ncf.NCFParams) -> dict:
    """Seconds to draw one epoch's negatives: uniform, and by (count + 1)^power."""
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, n_items + 1)  # Zipf: a few items hold most interactions
    items = rng.choice(n_items, n, p=popularity / popularity.sum()).astype(np.int32)
    users = rng.integers(0, n_users, n).astype(np.int32)
    data = Interactions.build(users, items, np.zeros(n, np.int64), n_users, n_items)
    positives = ncf._Positives(
        data.user_idx.astype(np.int64) * n_items + data.item_idx, n_users * n_items
    )
    epoch_users = data.user_idx[rng.permutation(n)[: min(n, params.epoch_positives)]]
    power = params.negative_pop_power or ncf._POP_POWER  # past 1M NCF draws uniformly
    out = {}
    for name, cdf in (("uniform", None), (f"power_{power}", ncf._negative_cdf(data, power))):
        start = time.perf_counter()
        ncf._sample_negatives(rng, epoch_users, n_items, positives, params.negatives, cdf)
        out[name] = round(time.perf_counter() - start, 2)
    return {"epoch_sampling_s": out, "draws": int(epoch_users.size * params.negatives)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="943x1682x99000,71428x12322x9768078")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ncf_step.json"))
    args = parser.parse_args()
    import torch

    results = []
    for shape in args.shapes.split(","):
        n_users, n_items, n = (int(x) for x in shape.split("x"))
        params = ncf.NCFParams().resolve(n)
        # NCF's own thread rule (`ncf.fit`): one intra-op thread for small batches
        torch.set_num_threads(1 if params.batch_size <= 1024 else os.cpu_count() or 1)
        row = {
            "users": n_users,
            "items": n_items,
            "interactions": n,
            "params": params.model_dump(mode="json"),
            "torch_threads": torch.get_num_threads(),
            "step_ms_fused_adam": step_costs(n_users, n_items, params, fused=True),
            "step_ms_foreach_adam": step_costs(n_users, n_items, params, fused=False),
            "scoring": score_costs(n_users, n_items, params),
            "sampling": sampling_costs(n_users, n_items, n, params),
        }
        steps = -(-min(n, params.epoch_positives) // params.batch_size)
        row["epoch_training_s_estimate"] = round(
            steps * row["step_ms_fused_adam"]["total"] / 1000, 1
        )
        print(json.dumps(row), flush=True)
        results.append(row)
    write_result(args.out, {"torch": torch.__version__, "results": results})
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
