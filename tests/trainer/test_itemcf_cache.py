"""Item-CF tuning candidates that differ only in recency share one similarity, and sharing it
changes nothing: every fit equals a fit from scratch."""

from __future__ import annotations

import numpy as np

from trainer.interactions import Interactions
from trainer.models import itemcf


def _data(seed: int) -> Interactions:
    rng = np.random.default_rng(seed)
    n = 3_000
    return Interactions.build(
        rng.integers(0, 200, n), rng.integers(0, 80, n), rng.permutation(n), 200, 80
    )


def test_candidates_share_the_similarity_and_equal_fresh_fits() -> None:
    data = _data(0)
    rng = np.random.default_rng(0)
    users = np.arange(data.n_users)
    for tau in (None, 3.0, 10.0):
        params = itemcf.ItemCFParams(neighbours=20, recency_tau=tau)
        shared = itemcf.fit(data, params, rng)
        first = itemcf._last
        itemcf._last = None  # a fit from scratch
        fresh = itemcf.fit(data, params, rng)
        assert np.array_equal(shared.score_many(users), fresh.score_many(users))
        itemcf._last = first
    assert itemcf._last is not None and itemcf._last[1:3] == (20, 10.0)


def test_other_data_or_neighbours_get_their_own() -> None:
    data, other = _data(0), _data(1)
    itemcf.fit(data, itemcf.ItemCFParams(neighbours=20), np.random.default_rng(0))
    kept = itemcf._last[3]
    itemcf.fit(other, itemcf.ItemCFParams(neighbours=20), np.random.default_rng(0))
    assert itemcf._last[3] is not kept
    fresh = itemcf.item_similarity(other.matrix(), 20, 10.0)
    assert (itemcf._last[3] != fresh).nnz == 0
    itemcf.fit(other, itemcf.ItemCFParams(neighbours=30), np.random.default_rng(0))
    assert itemcf._last[1] == 30
