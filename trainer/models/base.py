"""The Scorer and ModelSpec seams, and the one `top_n` that serving and evaluation share.

Importing this costs numpy + pydantic only: heavy training libraries are imported inside `fit`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from trainer.models.data import Interactions


class Params(BaseModel):
    """Base for each kind's hyper-parameters: strict, so a typo in a config is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def for_measured_tuning(self) -> Params:
        """These params for a tuned fit that test measures itself (large data, no refit): a kind
        that holds training rows back while tuning must train on all of them there."""
        return self


class Scorer(ABC):
    """Turns a saved artifact into scores: float32[n_items] per user, NaN = cannot score."""

    kind: ClassVar[str]

    def __init__(self, n_users: int, n_items: int) -> None:
        self.n_users = n_users
        self.n_items = n_items
        self.resolved_params: Params | None = None

    def score(self, user_idx: int) -> np.ndarray:
        return self.score_many(np.array([user_idx], dtype=np.int64))[0]

    def score_many(self, user_idxs: np.ndarray) -> np.ndarray:
        """Scores for several users at once; unknown users (outside 0..n_users-1) get NaN rows."""
        user_idxs = np.asarray(user_idxs, dtype=np.int64)
        out = np.full((user_idxs.size, self.n_items), np.nan, dtype=np.float32)
        known = (user_idxs >= 0) & (user_idxs < self.n_users)
        if known.any():
            out[known] = self._score_known(user_idxs[known])
        return out

    @abstractmethod
    def _score_known(self, user_idxs: np.ndarray) -> np.ndarray:
        """float32[len(user_idxs), n_items] for users inside the vocabulary."""

    def score_history(self, item_idxs: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
        """Scores for a user the model never saw, from their items; None if this kind cannot."""
        return None

    @abstractmethod
    def arrays(self) -> dict[str, np.ndarray]:
        """Everything `load` needs, as plain arrays (saved as .npy, never pickled)."""

    @classmethod
    @abstractmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Scorer:
        """Inverse of `arrays`."""

    def save(self, folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        for name, array in self.arrays().items():
            np.save(folder / f"{name}.npy", np.asarray(array), allow_pickle=False)
            names.append(f"{name}.npy")
        return names

    @classmethod
    def load(cls, folder: Path) -> Scorer:
        arrays = {p.stem: np.load(p, allow_pickle=False) for p in sorted(folder.glob("*.npy"))}
        return cls.from_arrays(arrays)

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays().values()))


# fit(data, params, rng, valid): `valid` (held-out interactions) is for kinds that early-stop;
# such a kind returns a scorer whose `resolved_params` pins what it chose (e.g. the epoch count),
# so the refits after tuning repeat that choice without peeking at any held-out data.
FitFn = Callable[[Interactions, Any, np.random.Generator, "Interactions | None"], "Scorer"]


@dataclass(frozen=True)
class ModelSpec:
    """One model kind: its name, parameter schema, light tuning grid, fit function, scorer class."""

    kind: str
    params: type[Params]
    grid: tuple[dict[str, Any], ...]
    fit: FitFn
    scorer: type[Scorer]

    def candidates(self) -> list[Params]:
        return [self.params(**g) for g in self.grid] or [self.params()]


def top_n(
    scores: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` item indices by score, highest first, ties broken by lower index.

    NaN and excluded items never appear; fewer than `k` come back when fewer can be ranked.
    """
    s = np.array(scores, dtype=np.float32, copy=True)
    s[np.isnan(s)] = -np.inf
    if exclude is not None and len(exclude):
        s[exclude] = -np.inf
    k = min(k, int(np.isfinite(s).sum()))
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    kth = np.partition(s, s.size - k)[s.size - k]
    above = np.flatnonzero(s > kth)
    tied = np.flatnonzero(s == kth)[: k - above.size]
    picked = np.concatenate([above, tied])
    order = np.lexsort((picked, -s[picked]))
    best = picked[order]
    return best.astype(np.int64), s[best]


def top_n_rows(
    scores: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`top_n` for every row of a (users x items) score block at once, the same picks in the
    same order (a test compares them row by row). `exclude` is a boolean mask of that shape.

    Returns (items, scores, counts): row r's top list is items[r, :counts[r]]; the rest of the
    row is -1 / -inf. Evaluation and the gate rank tens of thousands of users: one call per
    256-user block instead of one `top_n` per user (about 120 us each at 12k items).
    """
    s = np.array(scores, dtype=np.float32, copy=True)
    s[np.isnan(s)] = -np.inf
    if exclude is not None:
        s[exclude] = -np.inf
    n_rows, n_items = s.shape
    k = min(k, n_items)
    items = np.full((n_rows, max(k, 0)), -1, dtype=np.int64)
    values = np.full((n_rows, max(k, 0)), -np.inf, dtype=np.float32)
    counts = np.zeros(n_rows, dtype=np.int64)
    if k <= 0 or n_rows == 0:
        return items, values, counts
    idx = np.argpartition(-s, k - 1, axis=1)[:, :k]  # k largest; ties at the edge: any
    picked = np.take_along_axis(s, idx, axis=1)
    kth = picked.min(axis=1)
    # rows whose k largest are unambiguous (no tie at the edge, k finite): sort them in place;
    # the others (rare with real-valued scores) go through `top_n` one by one
    clean = np.isfinite(kth) & ((s >= kth[:, None]).sum(axis=1) == k)
    order = np.lexsort((idx, -picked), axis=1)  # best first, then lower index
    items[clean] = np.take_along_axis(idx, order, axis=1)[clean]
    values[clean] = np.take_along_axis(picked, order, axis=1)[clean]
    counts[clean] = k
    for row in np.flatnonzero(~clean):
        best, best_values = top_n(s[row], k)
        items[row, : best.size], values[row, : best.size] = best, best_values
        counts[row] = best.size
    return items, values, counts


def recency_weights(data: Interactions, tau: float | None) -> np.ndarray:
    """exp(-steps_from_end / tau) per interaction: latest items count most; all 1 if tau is None."""
    if tau is None:
        return np.ones(len(data), dtype=np.float32)
    return np.exp(-data.steps_from_end() / float(tau)).astype(np.float32)
