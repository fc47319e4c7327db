"""The one offline protocol: leave-last-out, full ranking of every unseen item, pessimistic ties.

For each evaluated user the held-out item's rank is the number of candidate items scored above it
plus the number scored equal to it (ties count against the model). HR@k = rank < k and
NDCG@k = 1/log2(rank + 2) when rank < k. Candidates are all items the user has not interacted
with in the data the model was fit on. Catalogue coverage@k uses the same `top_n` as serving.
The NCF paper's sampled protocol (held-out item among 99 seeded random unseen items) is reported
separately and never mixed into the headline numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from trainer.interactions import Interactions
from trainer.models.base import Scorer, top_n

K = 10
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

    def as_dict(self) -> dict[str, float | int]:
        return {
            f"hr@{K}": round(self.hr, 5),
            f"ndcg@{K}": round(self.ndcg, 5),
            f"coverage@{K}": round(self.coverage, 5),
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


def pessimistic_rank(scores: np.ndarray, seen_mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rank of each row's target among its unseen items; NaN scores rank below everything."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    target_score = s[np.arange(s.shape[0]), target][:, None]
    candidates = ~seen_mask
    candidates[np.arange(s.shape[0]), target] = False
    above = ((s > target_score) & candidates).sum(axis=1)
    ties = ((s == target_score) & candidates).sum(axis=1)
    return above + ties


def evaluate(
    scorer: Scorer,
    seen: Interactions,
    held_out: Interactions,
    fallback: np.ndarray | None = None,
    seed: int = 0,
    sampled: bool = True,
) -> Metrics:
    """Metrics of `scorer` on `held_out` (one item per user), never ranking items in `seen`.

    `sampled=False` computes the full-ranking HR/NDCG only (for early stopping inside a fit);
    the sampled and coverage figures are then reported as 0.
    """
    seen_csr = seen.matrix().tocsr()
    users, targets = held_out.user_idx.astype(np.int64), held_out.item_idx.astype(np.int64)
    rng = np.random.default_rng(seed)
    ranks = np.empty(users.size, dtype=np.int64)
    sampled_ranks = np.empty(users.size, dtype=np.int64)
    recommended = np.zeros(scorer.n_items, dtype=bool)
    for start in range(0, users.size, _BATCH):
        batch = slice(start, start + _BATCH)
        scores = scores_with_fallback(scorer, users[batch], fallback)
        mask = np.asarray(seen_csr[users[batch]].todense()) > 0
        ranks[batch] = pessimistic_rank(scores, mask.copy(), targets[batch])
        if not sampled:
            sampled_ranks[batch] = K
            continue
        sampled_ranks[batch] = _sampled_ranks(scores, mask, targets[batch], rng)
        for row, user in enumerate(users[batch]):
            items, _ = top_n(scores[row], K, exclude=seen_csr[user].indices)
            recommended[items] = True
    return Metrics(
        hr=float(np.mean(ranks < K)) if users.size else 0.0,
        ndcg=_ndcg(ranks),
        coverage=float(recommended.mean()),
        sampled_hr=float(np.mean(sampled_ranks < K)) if users.size else 0.0,
        sampled_ndcg=_ndcg(sampled_ranks),
        users=int(users.size),
    )


def _ndcg(ranks: np.ndarray) -> float:
    if ranks.size == 0:
        return 0.0
    gains = np.where(ranks < K, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(gains.mean())


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
