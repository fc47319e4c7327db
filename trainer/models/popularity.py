"""Popularity: how often each item was consumed (each row counted by its weight), optionally
counting recent interactions more."""

from __future__ import annotations

import numpy as np

from trainer.models.base import ModelSpec, Params, Scorer
from trainer.models.data import Interactions

_DAY = 86_400


class PopularityParams(Params):
    half_life_days: float | None = None  # None: plain counts


class PopularityScorer(Scorer):
    kind = "popularity"

    def __init__(self, item_scores: np.ndarray, n_users: int) -> None:
        super().__init__(n_users=n_users, n_items=int(item_scores.size))
        self.item_scores = item_scores.astype(np.float32)

    def global_scores(self) -> np.ndarray:
        """The same ranking for anyone: what serves users the other kinds cannot score."""
        return self.item_scores

    def _score_known(self, user_idxs: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores, (user_idxs.size, self.n_items))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"item_scores": self.item_scores, "n_users": np.array(self.n_users)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> PopularityScorer:
        return cls(arrays["item_scores"], n_users=int(arrays["n_users"]))


def fit(
    data: Interactions,
    params: PopularityParams,
    rng: np.random.Generator,
    valid: Interactions | None = None,
) -> PopularityScorer:
    weights = data.weights().astype(np.float64)  # a watch counts less than a rating
    if params.half_life_days is not None and len(data):
        age_days = (data.timestamp.max() - data.timestamp) / _DAY
        weights = weights * np.power(0.5, age_days / params.half_life_days)
    counts = np.bincount(data.item_idx, weights=weights, minlength=data.n_items)
    top = counts.max() if counts.size and counts.max() > 0 else 1.0
    return PopularityScorer((counts / top).astype(np.float32), n_users=data.n_users)


SPEC = ModelSpec(
    kind="popularity",
    params=PopularityParams,
    grid=tuple({"half_life_days": h} for h in (None, 120.0, 60.0, 30.0, 14.0, 7.0)),
    fit=fit,
    scorer=PopularityScorer,
)
