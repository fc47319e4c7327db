"""Rating prediction: biased matrix factorisation on explicit ratings, fitted by ALS in numpy.

    r̂(u, i) = μ + b_u + b_i + p_u · q_i            (clipped to the rating scale seen in training)

Alternating least squares: with the item side fixed, each user's [b_u, p_u] is one ridge regression
of (r - μ - b_i) on [1, q_i]; then the same for items. The penalty grows with the number of
ratings of the user/item (λ·n, "ALS-WR", Zhou et al. 2008), which keeps heavy raters from
over-fitting and rarely-rated items near their bias. Closed-form steps need no learning rate and
are deterministic for a seed. `factors=0` is the global-mean + biases baseline.

It is not one of the four ranking KINDS: it answers "what would this user rate this movie" and is
stored as its own release part, `rating`. Serving imports numpy only.

Unknown users or items fall back to what is known, and say so (`estimate`): both known ->
"full"; only the user -> "user_bias_only" (μ + b_u); only the item -> "item_bias_only" (μ + b_i);
neither -> "global_mean".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trainer.models.base import Params
from trainer.models.data import Interactions

PART = "rating"


class RatingParams(Params):
    factors: int = 16
    reg: float = 0.1  # factor penalty per rating of the user/item
    bias_reg: float = 5.0  # bias penalty (absolute: shrinks rarely-rated biases towards 0)
    iterations: int = 12
    # Each rating's weight in the fit: 1 + recency_boost * exp(-steps_from_end / recency_tau),
    # so a user's bias and taste lean towards their latest ratings (None: all weigh 1).
    recency_tau: float | None = None
    recency_boost: float = 1.0


# Chosen on validation by the pipeline (the held-out second-to-last rating of each user). The
# temporal split rewards recency: leaning on each user's latest ratings cut validation RMSE from
# 1.004 to 0.993 on ML-100K (docs/evaluation.md).
BASELINE: dict = {"factors": 0}  # the global mean + biases baseline, also a candidate
GRID: tuple[dict, ...] = (
    BASELINE,
    {"factors": 8, "reg": 0.2, "recency_tau": 10.0, "recency_boost": 3.0},
    {"factors": 16, "reg": 0.2, "recency_tau": 10.0, "recency_boost": 3.0},
    {"factors": 16, "reg": 0.2, "recency_tau": 10.0, "recency_boost": 10.0},
)


class RatingModel:
    """Arrays of a fitted model, and the prediction rule with its fallbacks."""

    def __init__(
        self,
        mu: float,
        user_bias: np.ndarray,
        item_bias: np.ndarray,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        scale: tuple[float, float],
    ) -> None:
        self.mu = float(mu)
        self.user_bias = np.asarray(user_bias, dtype=np.float32)
        self.item_bias = np.asarray(item_bias, dtype=np.float32)
        self.user_factors = np.asarray(user_factors, dtype=np.float32)
        self.item_factors = np.asarray(item_factors, dtype=np.float32)
        self.scale = (float(scale[0]), float(scale[1]))
        self.params: RatingParams | None = None
        self._validate()

    @property
    def n_users(self) -> int:
        return int(self.user_bias.size)

    @property
    def n_items(self) -> int:
        return int(self.item_bias.size)

    def _validate(self) -> None:
        k = self.user_factors.shape[1] if self.user_factors.ndim == 2 else -1
        shapes_ok = (
            self.user_bias.ndim == 1
            and self.item_bias.ndim == 1
            and self.user_factors.shape == (self.n_users, k)
            and self.item_factors.shape == (self.n_items, k)
        )
        if not shapes_ok:
            raise ValueError("rating model: bias and factor shapes do not agree")
        finite = all(
            np.isfinite(a).all()
            for a in (self.user_bias, self.item_bias, self.user_factors, self.item_factors)
        )
        if not finite or not np.isfinite([self.mu, *self.scale]).all():
            raise ValueError("rating model: non-finite values")
        if self.scale[0] > self.scale[1]:
            raise ValueError("rating model: rating scale is inverted")

    def predict_many(self, user_idxs: np.ndarray, item_idxs: np.ndarray) -> np.ndarray:
        """Full estimates for known (user, item) pairs, clipped to the rating scale."""
        u = np.asarray(user_idxs, dtype=np.int64)
        i = np.asarray(item_idxs, dtype=np.int64)
        dot = np.einsum("ij,ij->i", self.user_factors[u], self.item_factors[i])
        raw = self.mu + self.user_bias[u] + self.item_bias[i] + dot
        return np.clip(raw, *self.scale)

    def predict(self, user_idx: int, item_idx: int) -> tuple[float, str]:
        """(rating, estimate) for one pair; -1 (or any index outside the vocab) means unknown."""
        known_u = 0 <= user_idx < self.n_users
        known_i = 0 <= item_idx < self.n_items
        if known_u and known_i:
            return float(self.predict_many(np.array([user_idx]), np.array([item_idx]))[0]), "full"
        if known_u:
            raw, how = self.mu + float(self.user_bias[user_idx]), "user_bias_only"
        elif known_i:
            raw, how = self.mu + float(self.item_bias[item_idx]), "item_bias_only"
        else:
            raw, how = self.mu, "global_mean"
        return float(np.clip(raw, *self.scale)), how

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "mu": np.array(self.mu, dtype=np.float64),
            "scale": np.array(self.scale, dtype=np.float64),
            "user_bias": self.user_bias,
            "item_bias": self.item_bias,
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
        }

    def save(self, folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for name, array in self.arrays().items():
            np.save(folder / f"{name}.npy", array, allow_pickle=False)
            names.append(f"{name}.npy")
        return names

    @classmethod
    def load(cls, folder: Path) -> RatingModel:
        """Inverse of `save`; raises ValueError/KeyError/OSError on a malformed part."""
        a = {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}
        scale = a["scale"]
        if scale.shape != (2,):
            raise ValueError("rating model: scale must hold (min, max)")
        model = cls(
            float(a["mu"]),
            a["user_bias"],
            a["item_bias"],
            a["user_factors"],
            a["item_factors"],
            (float(scale[0]), float(scale[1])),
        )
        meta = folder / "meta.json"
        if meta.is_file():
            params = json.loads(meta.read_text()).get("params")
            model.params = RatingParams(**params) if isinstance(params, dict) else None
        return model


def errors(model: RatingModel, held_out: Interactions) -> dict[str, float | int]:
    """RMSE and MAE of full estimates on `held_out` (its rows must carry ratings)."""
    if held_out.rating is None:
        raise ValueError("held-out interactions carry no ratings")
    if len(held_out) == 0:
        return {"rmse": 0.0, "mae": 0.0, "n": 0}
    diff = model.predict_many(held_out.user_idx, held_out.item_idx) - held_out.rating
    return {
        "rmse": round(float(np.sqrt(np.mean(diff**2))), 5),
        "mae": round(float(np.mean(np.abs(diff))), 5),
        "n": int(diff.size),
    }


def fit(
    data: Interactions, params: RatingParams, rng: np.random.Generator, valid=None
) -> RatingModel:
    """ALS on `data.rating`; `valid` is unused (a fixed iteration count converges here)."""
    if data.rating is None or len(data) == 0:
        raise ValueError("the rating model needs explicit ratings")
    r = data.rating.astype(np.float64)
    mu = float(r.mean())
    k = params.factors
    users, items = data.user_idx.astype(np.int64), data.item_idx.astype(np.int64)
    user_side = np.zeros((data.n_users, k + 1))  # [b_u, p_u]
    item_side = np.zeros((data.n_items, k + 1))  # [b_i, q_i]
    user_side[:, 1:] = rng.normal(0, 0.1, (data.n_users, k))
    item_side[:, 1:] = rng.normal(0, 0.1, (data.n_items, k))
    weight = np.ones(r.size)
    if params.recency_tau is not None:
        weight += params.recency_boost * np.exp(-data.steps_from_end() / params.recency_tau)
    by_user = _Groups(users, items, data.n_users, data.n_items, weight)
    by_item = _Groups(items, users, data.n_items, data.n_users, weight)
    for _ in range(max(params.iterations, 1)):
        # users: regress r - μ - b_i on [1, q_i]; then items on [1, p_u]
        user_side = by_user.ridge(item_side, r - mu - item_side[items, 0], params)
        item_side = by_item.ridge(user_side, r - mu - user_side[users, 0], params)
    model = RatingModel(
        mu,
        user_side[:, 0],
        item_side[:, 0],
        user_side[:, 1:],
        item_side[:, 1:],
        (float(r.min()), float(r.max())),
    )
    model.params = params
    return model


class _Groups:
    """Rows grouped by one id (user or item), for one ridge regression per group.

    Each row's regressors are [1, factors of the row's other id], so a group's Gram matrix is a
    sum of the other side's outer products: one sparse (groups x others) @ (others x d²) product.
    """

    def __init__(
        self, ids: np.ndarray, others: np.ndarray, n_groups: int, n_others: int, weight: np.ndarray
    ) -> None:
        import scipy.sparse as sp

        self.ids, self.others, self.n_groups, self.weight = ids, others, n_groups, weight
        self.incidence = sp.csr_matrix((weight, (ids, others)), shape=(n_groups, n_others))
        self.counts = np.bincount(ids, weights=weight, minlength=n_groups)
        # Where each row lands in the CSR's data, so the right-hand side is one sparse product
        # (no rows x d temporaries: at 10M ratings those were 1.4 GB). Needs unique pairs, which
        # the loaders guarantee; otherwise the row-wise sums below are used.
        slots = sp.csr_matrix(
            (np.arange(1, ids.size + 1, dtype=np.float64), (ids, others)),
            shape=(n_groups, n_others),
        )
        self.slots = slots.data.astype(np.int64) - 1 if slots.nnz == ids.size else None

    def ridge(self, other_side: np.ndarray, target: np.ndarray, params: RatingParams) -> np.ndarray:
        """Per group g: argmin_w Σ c (target - x·w)² + bias_reg·w₀² + reg·n_g·|w₁..|².

        c is each row's weight and n_g the sum of the group's weights.

        x = [1, other factors]; `other_side` holds [b, factors] of the other side per id.
        """
        design = other_side.copy()
        design[:, 0] = 1.0
        d = design.shape[1]
        # The Gram matrix is symmetric: one sparse product for its upper triangle only, about
        # half the cost of all d² entries (the mirrored entries are the same sums of the same
        # products, so the result is identical).
        upper = np.triu_indices(d)
        outer = design[:, upper[0]] * design[:, upper[1]]
        half = np.asarray(self.incidence @ outer)
        gram = np.empty((self.n_groups, d, d))
        gram[:, upper[0], upper[1]] = half
        gram[:, upper[1], upper[0]] = half
        if self.slots is not None:
            weighted = self.incidence.copy()
            weighted.data = (self.weight * target)[self.slots]
            rhs = np.asarray(weighted @ design)
        else:
            rows = design[self.others]
            rhs = np.column_stack(
                [
                    np.bincount(
                        self.ids, weights=self.weight * target * rows[:, j], minlength=self.n_groups
                    )
                    for j in range(d)
                ]
            )
        penalty = np.empty((self.n_groups, d))
        penalty[:, 0] = params.bias_reg
        penalty[:, 1:] = params.reg * np.maximum(self.counts, 1.0)[:, None]
        gram[:, np.arange(d), np.arange(d)] += penalty
        return np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]


def load_part(root: Path, manifest: dict, n_users: int, n_items: int) -> RatingModel | None:
    """The release's rating part, validated against its vocabulary; None when it has none.

    Raises ValueError (or OSError/KeyError for missing files) with the reason when it is there
    but malformed, so a reader can refuse the release instead of serving wrong estimates.
    """
    if PART not in manifest.get("parts", {}):
        return None
    folder = root / PART
    meta = json.loads((folder / "meta.json").read_text())
    if not isinstance(meta, dict) or meta.get("kind") != PART:
        raise ValueError(f"{PART}/meta.json does not describe a rating part")
    model = RatingModel.load(folder)
    if (model.n_users, model.n_items) != (n_users, n_items):
        raise ValueError(
            f"{PART} has {model.n_users} users x {model.n_items} items, the vocabulary "
            f"{n_users} x {n_items}"
        )
    return model
