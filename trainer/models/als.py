"""ALS matrix factorisation (`implicit`, CPU), served from plain numpy factors.

Confidence weighting is a tuned choice: binary, or BM25 (which damps heavy users and items), each
optionally scaled up for a user's most recent interactions, and scaled by each row's weight
(watch events count less than ratings; a zero-weight row is dropped, as if absent).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from trainer.models.base import ModelSpec, Params, Scorer, recency_weights
from trainer.models.data import Interactions


class ALSParams(Params):
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 1.0
    iterations: int = 15
    weighting: Literal["binary", "bm25"] = "bm25"
    bm25_k1: float = 100.0
    bm25_b: float = 0.8
    recency_tau: float | None = None  # confidence *= 1 + exp(-steps_from_end / tau)


class ALSScorer(Scorer):
    kind = "als"

    def __init__(
        self,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        regularization: float = 0.05,
        confidence: float = 1.0,
    ) -> None:
        super().__init__(n_users=user_factors.shape[0], n_items=item_factors.shape[0])
        self.user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        self.regularization = float(regularization)
        self.confidence = float(confidence)  # typical training confidence, for fold-in
        self._gram = self.item_factors.T @ self.item_factors  # Y^T Y, shared by every fold-in

    def _score_known(self, user_idxs: np.ndarray) -> np.ndarray:
        return self.user_factors[user_idxs] @ self.item_factors.T

    def score_history(self, item_idxs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Fold-in: the user vector ALS itself would solve for, given only these items.

        x = (YᵀY + Yᵤᵀ(Cᵤ - I)Yᵤ + λI)⁻¹ Yᵤᵀ Cᵤ 1, with confidence c = 1 + confidence * weight.
        """
        y = self.item_factors[item_idxs].astype(np.float64)
        c = 1.0 + self.confidence * np.asarray(weights, dtype=np.float64)
        a = self._gram + (y.T * (c - 1.0)) @ y + self.regularization * np.eye(y.shape[1])
        x = np.linalg.solve(a, y.T @ c)
        return (self.item_factors @ x.astype(np.float32)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "regularization": np.array(self.regularization, dtype=np.float32),
            "confidence": np.array(self.confidence, dtype=np.float32),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ALSScorer:
        confidence = float(arrays["confidence"]) if "confidence" in arrays else 1.0
        return cls(
            arrays["user_factors"],
            arrays["item_factors"],
            float(arrays["regularization"]),
            confidence,
        )


THREADS = 0  # implicit's solver threads; 0: one per core


def confidence(data: Interactions, params: ALSParams):  # -> scipy csr
    """The user x item confidence matrix ALS is fit on."""
    values = np.ones(len(data), dtype=np.float32)
    if params.recency_tau is not None:
        values = values + recency_weights(data, params.recency_tau)
    if data.weight is not None:  # a watch's confidence is its weight times a rating's
        values = values * data.weight
    matrix = data.matrix(values=values)
    if data.weight is not None:
        matrix.eliminate_zeros()  # a stored 0 would read as "confidence 0", not "absent"
    if params.weighting == "bm25":
        from implicit.nearest_neighbours import bm25_weight

        matrix = bm25_weight(matrix, K1=params.bm25_k1, B=params.bm25_b).tocsr()
    return (matrix * params.alpha).astype(np.float32).tocsr()


def fit(
    data: Interactions,
    params: ALSParams,
    rng: np.random.Generator,
    valid: Interactions | None = None,
) -> ALSScorer:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    # implicit parallelises itself; a BLAS thread pool underneath only adds contention.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            iterations=params.iterations,
            random_state=int(rng.integers(2**31 - 1)),
            # every core: each user's (item's) solve is independent and writes its own row, so
            # the factors are identical for any thread count (tests/trainer/test_als_threads.py)
            num_threads=THREADS,
        )
        conf = confidence(data, params)
        model.fit(conf, show_progress=False)
    typical = float(np.median(conf.data)) if conf.nnz else 1.0
    return ALSScorer(
        np.asarray(model.user_factors),
        np.asarray(model.item_factors),
        params.regularization,
        typical,
    )


SPEC = ModelSpec(
    kind="als",
    params=ALSParams,
    # Chosen from a wider sweep on ML-100K validation (README, "Tuning"): BM25 with a low length
    # normalisation and a recency boost wins; the grid keeps the neighbours of that optimum.
    grid=tuple(
        {"factors": f, "regularization": 0.5, "bm25_b": b, "recency_tau": t}
        for f in (32, 64)
        for b in (0.3, 0.8)
        for t in (None, 5.0)
    ),
    fit=fit,
    scorer=ALSScorer,
)
