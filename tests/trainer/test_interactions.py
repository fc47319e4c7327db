from __future__ import annotations

import numpy as np
import pandas as pd

from trainer.interactions import Interactions, build_vocab, leave_last_out


def _frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(rating=1.0)


def test_leave_last_out_orders_by_timestamp_then_item() -> None:
    ratings = _frame(
        [(10, 5, 300), (10, 7, 100), (10, 3, 300), (10, 9, 200), (20, 5, 1), (20, 7, 2)]
    )
    vocab = build_vocab(ratings)
    split = leave_last_out(Interactions.from_ratings(ratings, vocab))
    ids = vocab.item_ids
    # user 10 in order: (100,7) (200,9) (300,3) (300,5): ties on time broken by item id
    assert ids[split.test.item_idx].tolist() == [5]
    assert ids[split.valid.item_idx].tolist() == [3]
    assert sorted(ids[split.train.item_idx[split.train.user_idx == 0]].tolist()) == [7, 9]
    # user 20 has two interactions: kept wholly in train, never evaluated
    assert (split.train.user_idx == 1).sum() == 2 and 1 not in split.test.user_idx


def test_vocab_lookup_and_unknown() -> None:
    vocab = build_vocab(_frame([(5, 50, 1), (3, 30, 1)]))
    assert vocab.user_index(3) == 0 and vocab.user_index(5) == 1
    assert vocab.user_index(4) == -1 and vocab.user_index(10**12) == -1
    assert vocab.item_index(30) == 0 and vocab.item_index(31) == -1


def test_steps_from_end_counts_later_interactions() -> None:
    data = Interactions.build(
        np.array([0, 0, 0, 1]), np.array([2, 1, 0, 0]), np.array([3, 2, 1, 1]), 2, 3
    )
    assert data.steps_from_end().tolist() == [2, 1, 0, 0]
