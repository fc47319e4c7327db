"""The one offline protocol: leave-last-out, full ranking of every unseen item, pessimistic ties.

For each evaluated user the held-out item's rank is the number of candidate items scored above it
plus the number scored equal to it (ties count against the model). HR@k = rank < k and
NDCG@k = 1/log2(rank + 2) when rank < k. Candidates are all items the user has not interacted
with in the data the model was fit on. Catalogue coverage@k uses the same top-n as serving
(`top_n_rows`, equal to `top_n` row by row).
The NCF paper's sampled protocol (held-out item among 99 seeded random unseen items) is reported
separately and never mixed into the headline numbers. The same top-10 lists give the popularity
bias figures and the per-group quality (trainer/fairness.py, docs/evaluation.md).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer import fairness
from trainer.models.base import Scorer, top_n, top_n_rows
from trainer.models.data import Interactions
from trainer.models.ranking import K, ndcg_gains, pessimistic_rank, scored_blocks

SAMPLED_NEGATIVES = 99
_BATCH = 256


@dataclass(frozen=True)
class Metrics:
    hr: float
    ndcg: float
    coverage: float
    sampled_hr: float
    sampled_ndcg: float
    users: int
    gini: float = 0.0
    long_tail: float = 0.0
    novelty: float = 0.0
    groups: dict[str, Any] | None = None  # grouping -> fairness.group_quality(...)

    def as_dict(self) -> dict[str, float | int]:
        return {
            f"hr@{K}": round(self.hr, 5),
            f"ndcg@{K}": round(self.ndcg, 5),
            f"coverage@{K}": round(self.coverage, 5),
            f"gini@{K}": round(self.gini, 5),
            f"long_tail@{K}": round(self.long_tail, 5),
            f"novelty@{K}": round(self.novelty, 4),
            f"sampled_hr@{K}": round(self.sampled_hr, 5),
            f"sampled_ndcg@{K}": round(self.sampled_ndcg, 5),
            "users": self.users,
        }


def scores_with_fallback(
    scorer: Scorer, user_idxs: np.ndarray, fallback: np.ndarray | None
) -> np.ndarray:
    """Scores as serving sees them: a user the model cannot score gets the fallback ranking."""
    scores = scorer.score_many(user_idxs)
    if fallback is not None:
        dead = np.isnan(scores).all(axis=1)
        scores[dead] = fallback
    return scores


def evaluate(
    scorer: Scorer,
    seen: Interactions,
    held_out: Interactions,
    fallback: np.ndarray | None = None,
    seed: int = 0,
    sampled: bool = True,
    groups: dict[str, np.ndarray] | None = None,
) -> Metrics:
    """Metrics of `scorer` on `held_out` (one item per user), never ranking items in `seen`.

    `sampled=False` computes the full-ranking HR/NDCG only (for early stopping inside a fit);
    the sampled, coverage and bias figures are then reported as 0. `groups` maps a grouping
    (e.g. "gender") to a label per user_idx ('' = unknown); activity quartiles (by interactions
    in `seen`) are always added.
    """
    seen_csr = seen.matrix().tocsr()
    users, targets = held_out.user_idx.astype(np.int64), held_out.item_idx.astype(np.int64)
    rng = np.random.default_rng(seed)
    ranks = np.empty(users.size, dtype=np.int64)
    sampled_ranks = np.empty(users.size, dtype=np.int64)
    recommended = np.zeros(scorer.n_items, dtype=bool)
    top_lists: list[np.ndarray] = []
    blocks = scored_blocks(lambda u: scores_with_fallback(scorer, u, fallback), users, _BATCH)
    for batch, scores in blocks:
        mask = np.asarray(seen_csr[users[batch]].todense()) > 0
        ranks[batch] = pessimistic_rank(scores, mask.copy(), targets[batch])
        if not sampled:
            sampled_ranks[batch] = K
            continue
        sampled_ranks[batch] = _sampled_ranks(scores, mask, targets[batch], rng)
        items, _, counts = top_n_rows(scores, K, exclude=mask)
        recommended[items[items >= 0]] = True
        top_lists.extend(row[:count] for row, count in zip(items, counts, strict=True))
    metrics = Metrics(
        hr=float(np.mean(ranks < K)) if users.size else 0.0,
        ndcg=_ndcg(ranks),
        coverage=float(recommended.mean()),
        sampled_hr=float(np.mean(sampled_ranks < K)) if users.size else 0.0,
        sampled_ndcg=_ndcg(sampled_ranks),
        users=int(users.size),
    )
    if not sampled:
        return metrics
    # distinct users per item in the fit data: popularity for the head/tail and novelty
    item_users = np.diff(seen_csr.tocsc().indptr)
    bias = fairness.popularity_bias(top_lists, item_users, seen.n_users)
    labels = dict(groups or {})
    labels["activity"] = fairness.activity_quartiles(np.diff(seen_csr.indptr))
    hits, gains = (ranks < K).astype(np.float64), ndcg_gains(ranks)
    per_group = {
        name: fairness.group_quality(np.asarray(values, dtype=object)[users], hits, gains)
        for name, values in labels.items()
    }
    return dataclasses.replace(metrics, **bias, groups=per_group)


def _ndcg(ranks: np.ndarray) -> float:
    return float(ndcg_gains(ranks).mean()) if ranks.size else 0.0


def _sampled_ranks(
    scores: np.ndarray, seen_mask: np.ndarray, targets: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Rank among the target plus SAMPLED_NEGATIVES random unseen items (fewer if fewer exist)."""
    out = np.empty(targets.size, dtype=np.int64)
    for row, target in enumerate(targets):
        pool = np.flatnonzero(~seen_mask[row])
        pool = pool[pool != target]
        negatives = rng.choice(pool, size=min(SAMPLED_NEGATIVES, pool.size), replace=False)
        s = np.where(np.isnan(scores[row]), -np.inf, scores[row])
        out[row] = int((s[negatives] >= s[target]).sum())
    return out


def latency_ms(
    scorer: Scorer, seen: Interactions, users: np.ndarray, fallback: np.ndarray | None = None
) -> dict[str, float]:
    """p50/p95 milliseconds to produce one user's top-10 through the serving path."""
    seen_csr = seen.matrix().tocsr()
    timings = []
    for user in users:
        start = time.perf_counter()
        scores = scores_with_fallback(scorer, np.array([user]), fallback)[0]
        top_n(scores, K, exclude=seen_csr[user].indices)
        timings.append((time.perf_counter() - start) * 1000)
    arr = np.array(timings)
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p95_ms": round(float(np.percentile(arr, 95)), 3),
    }


def bias_table(results: list[Any]) -> list[str]:
    """CLI lines: popularity bias per kind and, per grouping, NDCG@10 max/min between groups.

    `results` are the pipeline's per-kind results (`.kind`, `.metrics`, `.fairness`).
    """
    groupings = sorted({g for r in results for g in r.fairness})
    head = f"{'kind':<11}{'gini@10':>8}{'tail@10':>8}{'novelty':>8} |" + "".join(
        f"{g[:10]:>11}" for g in groupings
    )
    lines = [head, "-" * len(head)]
    for r in results:
        m = r.metrics
        ratios = "".join(
            f"{_ratio(r.fairness.get(g, {}).get('ndcg@10_max_min')):>11}" for g in groupings
        )
        lines.append(
            f"{r.kind:<11}{m['gini@10']:>8.3f}{m['long_tail@10']:>8.3f}{m['novelty@10']:>8.2f} |"
            + ratios
        )
    lines.append(
        "gini: exposure inequality over all users' top 10; tail: share of slots outside the "
        "most popular 20% of items; novelty: mean -log2(share of users who saw the item). "
        f"Right: NDCG@10 best/worst group (groups of >= {fairness.MIN_GROUP_USERS} users)."
    )
    return lines


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
