"""Popularity bias and per-group quality of one kind's top-10 lists (docs/evaluation.md).

Inputs are what the evaluation already produced: each evaluated user's top-k list (from the
serving `top_n`), each user's NDCG/HR gain on the held-out item, and the item popularity of the
data the model was fit on. Nothing here scores anything, so every number describes the lists
users actually get.

- exposure Gini: inequality of how often each catalogue item appears across all lists
  (0 = every item shown equally often, → 1 = all slots go to one item);
- long-tail share: share of recommended slots whose item is outside the most popular 20% of the
  catalogue (by interactions in the fit data);
- novelty: mean self-information -log2(p_i) of recommended items, p_i = share of users who
  interacted with item i (at least one user, so unseen items stay finite);
- groups: HR/NDCG per user group (demographics where the data has them, activity quartiles
  always) and, per grouping, the max/min ratio over groups with at least MIN_GROUP_USERS users.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

HEAD_SHARE = 0.2  # the "head": the most popular 20% of the catalogue
MIN_GROUP_USERS = 50  # smaller groups are reported, not ratioed: ~0.1 HR on 20 users is noise


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 for equal or all-zero counts)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(((2 * ranks - n - 1) * x).sum() / (n * total))


def head_items(popularity: np.ndarray, share: float = HEAD_SHARE) -> np.ndarray:
    """Boolean mask of the ceil(share·n) most popular items (ties broken by lower index)."""
    n = popularity.size
    size = math.ceil(share * n)
    order = np.lexsort((np.arange(n), -np.asarray(popularity, dtype=np.float64)))
    mask = np.zeros(n, dtype=bool)
    mask[order[:size]] = True
    return mask


def popularity_bias(
    top_lists: list[np.ndarray], item_users: np.ndarray, n_users: int
) -> dict[str, float]:
    """Exposure Gini, long-tail share and novelty of `top_lists` (one item array per user).

    `item_users[i]` is the number of distinct users who interacted with item i in the fit data.
    """
    n_items = item_users.size
    slots = np.concatenate(top_lists) if top_lists else np.empty(0, dtype=np.int64)
    slots = slots.astype(np.int64)
    exposure = np.bincount(slots, minlength=n_items)
    if slots.size == 0:
        return {"gini": 0.0, "long_tail": 0.0, "novelty": 0.0}
    head = head_items(item_users)
    p = np.maximum(item_users[slots], 1) / max(n_users, 1)
    return {
        "gini": gini(exposure),
        "long_tail": float((~head[slots]).mean()),
        "novelty": float((-np.log2(p)).mean()),
    }


def activity_quartiles(per_user_interactions: np.ndarray) -> np.ndarray:
    """'q1'..'q4' by the user's interaction count (q1 = least active), quartiles over users."""
    counts = np.asarray(per_user_interactions, dtype=np.float64)
    if counts.size == 0:
        return np.empty(0, dtype=object)
    cuts = np.quantile(counts, [0.25, 0.5, 0.75])
    q = np.searchsorted(cuts, counts, side="left")  # count <= cut_j -> quartile j
    return np.array([f"q{int(v) + 1}" for v in q], dtype=object)


def group_quality(
    labels: np.ndarray, hits: np.ndarray, gains: np.ndarray, min_users: int = MIN_GROUP_USERS
) -> dict[str, Any]:
    """Per-group HR/NDCG and the max/min ratio between groups with >= `min_users` users.

    `labels`, `hits` (0/1) and `gains` (NDCG) are aligned per evaluated user; '' = no label
    (left out). A ratio is None when fewer than two groups qualify or the worst group scores 0.
    """
    labels = np.asarray(labels, dtype=object)
    groups: dict[str, dict[str, float | int]] = {}
    for name in sorted({str(v) for v in labels if v != ""}):
        rows = labels == name
        groups[name] = {
            "users": int(rows.sum()),
            "hr@10": round(float(hits[rows].mean()), 5),
            "ndcg@10": round(float(gains[rows].mean()), 5),
        }
    big = [g for g in groups.values() if g["users"] >= min_users]
    out: dict[str, Any] = {"groups": groups, "min_users": min_users}
    for metric in ("hr@10", "ndcg@10"):
        values = [float(g[metric]) for g in big]
        ok = len(values) >= 2 and min(values) > 0
        out[f"{metric}_max_min"] = round(max(values) / min(values), 4) if ok else None
    return out
