"""The leave-last-out split, and the vocabulary built from a ratings table.

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

__all__ = ["Interactions", "Split", "Vocab", "build_vocab", "leave_last_out"]


def build_vocab(ratings: pd.DataFrame) -> Vocab:
    return Vocab(
        user_ids=np.unique(ratings["user_id"].to_numpy()).astype(np.int64),
        item_ids=np.unique(ratings["item_id"].to_numpy()).astype(np.int64),
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
