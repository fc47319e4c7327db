"""The types on the trainer/serving seam: id vocabularies and the interaction log in index space.

They live beside the scorers (DESIGN §1) so `trainer.models` imports nothing else of `trainer`
and the service can load a release without the trainer's data code. External ids (`user_id`,
`item_id`) become matrix indices (`user_idx`, `item_idx`) only through a `Vocab` saved with every
release, so serving converts ids exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # the service imports this module; pandas stays a trainer-only cost
    import pandas as pd


@dataclass(frozen=True)
class Vocab:
    user_ids: np.ndarray  # sorted int64 external ids; position = user_idx
    item_ids: np.ndarray  # sorted int64 external ids; position = item_idx

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    def user_index(self, user_id: int) -> int:
        """Row of `user_id`, or -1 when the release has never seen that user."""
        return _lookup(self.user_ids, user_id)

    def item_index(self, item_id: int) -> int:
        return _lookup(self.item_ids, item_id)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "user_ids.npy", self.user_ids)
        np.save(folder / "item_ids.npy", self.item_ids)

    @classmethod
    def load(cls, folder: Path) -> Vocab:
        return cls(
            user_ids=np.load(folder / "user_ids.npy", allow_pickle=False),
            item_ids=np.load(folder / "item_ids.npy", allow_pickle=False),
        )


def _lookup(sorted_ids: np.ndarray, key: int) -> int:
    pos = int(np.searchsorted(sorted_ids, key))
    if pos < sorted_ids.size and int(sorted_ids[pos]) == key:
        return pos
    return -1


@dataclass(frozen=True)
class Interactions:
    """One row per (user, item) interaction, sorted by (user_idx, timestamp, item_idx).

    `rating` carries the explicit rating of each row when the source has one (the rating model
    trains on it; the ranking kinds ignore it and treat every row as an implicit interaction).
    `weight` is how much each row counts for the ranking kinds (None: every row 1.0); watch
    events enter training as rows with a weight below 1 (docs/retrain.md, "Watch events").
    """

    user_idx: np.ndarray  # int32
    item_idx: np.ndarray  # int32
    timestamp: np.ndarray  # int64
    n_users: int
    n_items: int
    rating: np.ndarray | None = None  # float32, aligned with the rows above
    weight: np.ndarray | None = None  # float32, aligned with the rows above; None = all 1.0

    def __len__(self) -> int:
        return int(self.user_idx.size)

    @classmethod
    def from_ratings(cls, ratings: pd.DataFrame, vocab: Vocab) -> Interactions:
        users = np.searchsorted(vocab.user_ids, ratings["user_id"].to_numpy()).astype(np.int32)
        items = np.searchsorted(vocab.item_ids, ratings["item_id"].to_numpy()).astype(np.int32)
        ts = ratings["timestamp"].to_numpy().astype(np.int64)
        values = ratings["rating"].to_numpy() if "rating" in ratings else None
        return cls.build(users, items, ts, vocab.n_users, vocab.n_items, values)

    @classmethod
    def build(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        ts: np.ndarray,
        n_users: int,
        n_items: int,
        rating: np.ndarray | None = None,
        weight: np.ndarray | None = None,
    ) -> Interactions:
        order = np.lexsort((items, ts, users))
        return cls(
            users[order].astype(np.int32),
            items[order].astype(np.int32),
            ts[order].astype(np.int64),
            n_users,
            n_items,
            None if rating is None else np.asarray(rating)[order].astype(np.float32),
            None if weight is None else np.asarray(weight)[order].astype(np.float32),
        )

    def weights(self) -> np.ndarray:
        """Each row's weight as float32 (all 1.0 when the data carries none)."""
        if self.weight is None:
            return np.ones(len(self), dtype=np.float32)
        return self.weight

    def matrix(self, values: np.ndarray | None = None) -> sp.csr_matrix:
        """users x items CSR; binary unless per-interaction `values` are given."""
        data = np.ones(len(self), dtype=np.float32) if values is None else values.astype(np.float32)
        mat = sp.csr_matrix(
            (data, (self.user_idx, self.item_idx)),
            shape=(self.n_users, self.n_items),
            dtype=np.float32,
        )
        mat.sum_duplicates()
        return mat

    def steps_from_end(self) -> np.ndarray:
        """Per interaction, how many of the same user's interactions come after it (0 = latest)."""
        counts = np.bincount(self.user_idx, minlength=self.n_users)
        ends = np.cumsum(counts)
        return (ends[self.user_idx] - 1 - np.arange(len(self))).astype(np.int64)

    def select(self, mask: np.ndarray) -> Interactions:
        return Interactions(
            self.user_idx[mask],
            self.item_idx[mask],
            self.timestamp[mask],
            self.n_users,
            self.n_items,
            None if self.rating is None else self.rating[mask],
            None if self.weight is None else self.weight[mask],
        )

    def concat(self, other: Interactions) -> Interactions:
        return Interactions.build(
            np.concatenate([self.user_idx, other.user_idx]),
            np.concatenate([self.item_idx, other.item_idx]),
            np.concatenate([self.timestamp, other.timestamp]),
            self.n_users,
            self.n_items,
            # ratings survive only when both sides have them
            None
            if self.rating is None or other.rating is None
            else np.concatenate([self.rating, other.rating]),
            # weights survive when either side has them; the other side's rows count 1.0
            None
            if self.weight is None and other.weight is None
            else np.concatenate([self.weights(), other.weights()]),
        )
