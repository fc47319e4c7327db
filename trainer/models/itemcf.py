"""Item-based CF: shrunk cosine item-item similarity, top-K neighbours per item, sparse throughout.

A user's score for item i is the sum over the items j in their history of w_j * sim(j, i), where
w_j decays with how long ago (in steps) the user consumed j when `recency_tau` is set, and is
scaled by the row's weight (a watch counts less than a rating); the cosine is weighted the same way.
"""

from __future__ import annotations

import weakref

import numpy as np
import scipy.sparse as sp

from trainer.models.base import ModelSpec, Params, Scorer, recency_weights
from trainer.models.data import Interactions

_BLOCK = 512  # items per similarity block: bounds memory at BLOCK x n_items floats


class ItemCFParams(Params):
    neighbours: int = 100
    shrink: float = 10.0
    recency_tau: float | None = None


class ItemCFScorer(Scorer):
    kind = "itemcf"

    def __init__(self, similarity: sp.csr_matrix, history: sp.csr_matrix) -> None:
        super().__init__(n_users=history.shape[0], n_items=history.shape[1])
        self.similarity = similarity.astype(np.float32).tocsr()
        self.history = history.astype(np.float32).tocsr()

    def _score_known(self, user_idxs: np.ndarray) -> np.ndarray:
        return np.asarray((self.history[user_idxs] @ self.similarity).todense(), dtype=np.float32)

    def score_history(self, item_idxs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Scores for an ad-hoc history (a user the model never saw)."""
        row = sp.csr_matrix(
            (weights.astype(np.float32), (np.zeros_like(item_idxs), item_idxs)),
            shape=(1, self.n_items),
        )
        return np.asarray((row @ self.similarity).todense(), dtype=np.float32)[0]

    def arrays(self) -> dict[str, np.ndarray]:
        return {**_csr_arrays("sim", self.similarity), **_csr_arrays("hist", self.history)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ItemCFScorer:
        return cls(_csr_from("sim", arrays), _csr_from("hist", arrays))


def _csr_arrays(prefix: str, mat: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_data": mat.data,
        f"{prefix}_indices": mat.indices,
        f"{prefix}_indptr": mat.indptr,
        f"{prefix}_shape": np.array(mat.shape, dtype=np.int64),
    }


def _csr_from(prefix: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    shape = tuple(int(x) for x in arrays[f"{prefix}_shape"])
    return sp.csr_matrix(
        (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
        shape=shape,
    )


def item_similarity(binary: sp.csr_matrix, neighbours: int, shrink: float) -> sp.csr_matrix:
    """Shrunk cosine between item columns, keeping each item's `neighbours` most similar items.

    `binary` may carry per-interaction weights instead of ones (the cosine is then weighted)."""
    by_item = binary.T.tocsr().astype(np.float32)
    n_items = by_item.shape[0]
    norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel())
    k = min(neighbours, max(n_items - 1, 1))
    rows, cols, vals = [], [], []
    for start in range(0, n_items, _BLOCK):
        stop = min(start + _BLOCK, n_items)
        co = np.asarray((by_item[start:stop] @ by_item.T).todense(), dtype=np.float32)
        co /= np.outer(norms[start:stop], norms) + shrink + 1e-9
        co[np.arange(stop - start), np.arange(start, stop)] = (
            0.0  # an item is not its own neighbour
        )
        if k < n_items:
            top = np.argpartition(-co, k - 1, axis=1)[:, :k]
        else:
            top = np.tile(np.arange(n_items), (stop - start, 1))
        picked = np.take_along_axis(co, top, axis=1)
        keep = picked > 0
        rows.append(np.repeat(np.arange(start, stop), keep.sum(axis=1)))
        cols.append(top[keep])
        vals.append(picked[keep])
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
        dtype=np.float32,
    )


# The last similarity computed, and for what: tuning fits candidates that differ only in
# `recency_tau` (which weighs the history, not the similarity) one after another on the same
# data, so they share it. At 10M interactions this saves 6 of the grid's 8 similarity passes.
_last: tuple[weakref.ref, int, float, sp.csr_matrix] | None = None


def _similarity(data: Interactions, params: ItemCFParams) -> sp.csr_matrix:
    global _last
    key = (params.neighbours, params.shrink)
    if _last is not None and _last[0]() is data and _last[1:3] == key:
        return _last[3]
    # weighted rows (watches) make a weighted co-occurrence
    values = None if data.weight is None else data.weights()
    similarity = item_similarity(data.matrix(values=values), params.neighbours, params.shrink)
    _last = (weakref.ref(data), params.neighbours, params.shrink, similarity)
    return similarity


def fit(
    data: Interactions,
    params: ItemCFParams,
    rng: np.random.Generator,
    valid: Interactions | None = None,
) -> ItemCFScorer:
    history = recency_weights(data, params.recency_tau) * data.weights()
    return ItemCFScorer(_similarity(data, params), data.matrix(values=history))


SPEC = ModelSpec(
    kind="itemcf",
    params=ItemCFParams,
    grid=tuple(
        {"neighbours": k, "shrink": s, "recency_tau": t}
        for k in (50, 200)
        for s in (10.0,)
        for t in (None, 3.0, 10.0, 30.0)
    ),
    fit=fit,
    scorer=ItemCFScorer,
)
