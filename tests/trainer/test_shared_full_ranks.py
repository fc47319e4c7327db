"""`shared_full_ranks`: several (seen, held out) pairs ranked with one scoring pass give each
pair's own ranks (checked against a rank computed by hand), and each user is scored once."""

from __future__ import annotations

import numpy as np

from trainer.models.base import Scorer
from trainer.models.data import Interactions
from trainer.models.ranking import full_ranks, pooled_ndcg, shared_full_ranks


class _Counting(Scorer):
    """Score of (user, item): a fixed pseudo-random table; counts how often each user is scored."""

    kind = "counting"

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__(n_users, n_items)
        self.table = np.random.default_rng(3).random((n_users, n_items)).astype(np.float32)
        self.calls = np.zeros(n_users, dtype=np.int64)

    def _score_known(self, user_idxs: np.ndarray) -> np.ndarray:
        np.add.at(self.calls, user_idxs, 1)
        return self.table[user_idxs]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"table": self.table}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> _Counting:
        raise NotImplementedError


def _rows(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> Interactions:
    """Rows as given, not sorted by user (ranking must not rely on any order)."""
    ts = np.arange(users.size, dtype=np.int64)
    return Interactions(users.astype(np.int32), items.astype(np.int32), ts, n_users, n_items)


def _by_hand(scorer: _Counting, seen: Interactions, held: Interactions) -> np.ndarray:
    """Items the user has not seen (other than the target) scoring at least the target's score."""
    out = []
    for u, target in zip(held.user_idx, held.item_idx, strict=True):
        seen_items = set(seen.item_idx[seen.user_idx == u]) - {target}
        s = scorer.table[u]
        out.append(
            sum(
                1
                for i in range(s.size)
                if i != target and i not in seen_items and s[i] >= s[target]
            )
        )
    return np.array(out)


def test_each_pair_gets_its_own_ranks_and_each_user_is_scored_once() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 600, 40  # more users than one scoring block (256)
    seen_a = _rows(rng.integers(0, n_users, 3000), rng.integers(0, n_items, 3000), n_users, n_items)
    seen_b = _rows(rng.integers(0, n_users, 2000), rng.integers(0, n_items, 2000), n_users, n_items)
    # the second check's users are a subset of the first's, as in NCF's validation
    users_a = rng.choice(n_users, 500, replace=False)
    users_b = users_a[:300]
    # a user held out twice in one check (two rows, ranked separately), rows in no user order
    users_a = np.concatenate([users_a, users_a[[7, 400]]])
    held_a = _rows(users_a, rng.integers(0, n_items, 502), n_users, n_items)
    held_b = _rows(users_b, rng.integers(0, n_items, 300), n_users, n_items)
    scorer = _Counting(n_users, n_items)
    ranks_a, ranks_b = shared_full_ranks(scorer, [(seen_a, held_a), (seen_b, held_b)])
    assert scorer.calls.max() == 1 and scorer.calls.sum() == 500
    assert shared_full_ranks(scorer, []) == []
    np.testing.assert_array_equal(ranks_a, _by_hand(scorer, seen_a, held_a))
    np.testing.assert_array_equal(ranks_b, _by_hand(scorer, seen_b, held_b))
    np.testing.assert_array_equal(ranks_b, full_ranks(scorer, seen_b, held_b))


def test_pooled_ndcg_averages_every_held_out_row() -> None:
    n_users, n_items = 3, 20
    scorer = _Counting(n_users, n_items)
    seen = _rows(np.array([0]), np.array([0]), n_users, n_items)
    best = [int(np.argmax(scorer.table[u])) for u in range(n_users)]  # rank 0: NDCG 1
    worst = [int(np.argmin(scorer.table[u])) for u in range(n_users)]  # rank 19 (or 18): NDCG 0
    top = _rows(np.array([0, 1]), np.array(best[:2]), n_users, n_items)
    bottom = _rows(np.array([2]), np.array([worst[2]]), n_users, n_items)
    assert pooled_ndcg(scorer, [(seen, top), (seen, bottom)]) == 2 / 3
    assert pooled_ndcg(scorer, [(seen, bottom)]) == 0.0
    assert pooled_ndcg(scorer, []) == 0.0  # nothing held out: nothing to score, not an error
