"""The leave-last-out split, the vocabulary built from a ratings table, and what each fit of a
kind trains on once watch events join the ratings (`FitSets`).

`Vocab` and `Interactions` live in `trainer.models.data` (the seam both sides load); they are
re-exported here so trainer code keeps one import for its data types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainer.models.data import Interactions, Vocab

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "HOLDOUT_REFIT",
    "HOLDOUT_TUNED",
    "MEASURE_TUNED_FROM",
    "FitSets",
    "Interactions",
    "Split",
    "Vocab",
    "build_vocab",
    "fit_sets",
    "leave_last_out",
    "measures_tuned_fit",
    "watch_interactions",
]

# Past this many interactions (ratings and watches a release trains on), a kind's test numbers
# measure its tuned fit (trained on train, early-stopped on validation) rather than a refit on
# train+validation: the refit repeated the costliest fit of a release (NCF at 10M: 320 s of a
# 38 min release; docs/retrain.md, "Training at scale"). The tuned fit has one interaction fewer
# per user, which usually costs a little (ALS and itemcf at 10M: -0.0003 NDCG@10), though an
# early-stopped fit can also come out ahead (NCF at 10M: 0.0935 against the refit's 0.0915).
MEASURE_TUNED_FROM = 1_000_000
# What a kind's test numbers were measured on (`holdout_fit` in reports and manifests)
HOLDOUT_TUNED = "train"  # the tuned fit itself (past MEASURE_TUNED_FROM)
HOLDOUT_REFIT = "train+valid"  # a refit on train + validation with the chosen settings


def measures_tuned_fit(data: Interactions) -> bool:
    """Whether the test numbers of a release on `data` come from the tuned fits (large data)."""
    return len(data) > MEASURE_TUNED_FROM


def build_vocab(ratings: pd.DataFrame, *more: pd.DataFrame) -> Vocab:
    """Every user and item of `ratings` (and of `more` tables: watches), sorted."""
    frames = (ratings, *more)
    return Vocab(
        user_ids=np.unique(np.concatenate([f["user_id"].to_numpy() for f in frames])).astype(
            np.int64
        ),
        item_ids=np.unique(np.concatenate([f["item_id"].to_numpy() for f in frames])).astype(
            np.int64
        ),
    )


def watch_interactions(watches: pd.DataFrame, vocab: Vocab, weight: float) -> Interactions:
    """Watch pairs (user_id, item_id, timestamp) as interactions that count `weight` each."""
    users = np.searchsorted(vocab.user_ids, watches["user_id"].to_numpy()).astype(np.int32)
    items = np.searchsorted(vocab.item_ids, watches["item_id"].to_numpy()).astype(np.int32)
    ts = watches["timestamp"].to_numpy().astype(np.int64)
    return Interactions.build(
        users,
        items,
        ts,
        vocab.n_users,
        vocab.n_items,
        weight=np.full(users.size, weight, dtype=np.float32),
    )


@dataclass(frozen=True)
class Split:
    """Leave-last-out: per user, the last interaction is test, the one before it validation.

    Users with fewer than three interactions stay wholly in train and are not evaluated.
    """

    train: Interactions
    valid: Interactions
    test: Interactions

    @property
    def train_valid(self) -> Interactions:
        return self.train.concat(self.valid)


def leave_last_out(data: Interactions) -> Split:
    steps = data.steps_from_end()
    counts = np.bincount(data.user_idx, minlength=data.n_users)
    evaluable = counts[data.user_idx] >= 3
    test = evaluable & (steps == 0)
    valid = evaluable & (steps == 1)
    return Split(
        train=data.select(~(test | valid)), valid=data.select(valid), test=data.select(test)
    )


@dataclass(frozen=True)
class FitSets:
    """What the three fits of a kind train on (and never rank again at evaluation).

    The split stays on ratings only; watches join the training side alone, each fit seeing the
    watches that happened before the interaction it is measured on: `tune` = train + watches
    before each user's validation interaction, `holdout` = train+validation + watches before
    each user's test interaction, `final` = all ratings + every watch. Users with nothing held
    out (and watch-only users) contribute every watch. Without watches they are exactly
    `split.train`, `split.train_valid` and the data.
    """

    tune: Interactions
    holdout: Interactions
    final: Interactions


def fit_sets(data: Interactions, split: Split, watches: Interactions | None = None) -> FitSets:
    if watches is None or len(watches) == 0:
        return FitSets(split.train, split.train_valid, data)
    return FitSets(
        split.train.concat(watches.select(watches_before(watches, split.valid))),
        split.train_valid.concat(watches.select(watches_before(watches, split.test))),
        data.concat(watches),
    )


def watches_before(watches: Interactions, held_out: Interactions) -> np.ndarray:
    """Mask of the watches strictly older than their user's held-out interaction (if any)."""
    cutoff = np.full(watches.n_users, np.iinfo(np.int64).max, dtype=np.int64)
    cutoff[held_out.user_idx] = held_out.timestamp
    return watches.timestamp < cutoff[watches.user_idx]
