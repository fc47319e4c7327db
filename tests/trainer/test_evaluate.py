"""The metrics must reward a right model, punish a wrong one, and count ties against the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.evaluate import evaluate, pessimistic_rank
from trainer.interactions import Interactions, build_vocab, leave_last_out
from trainer.models.als import ALSParams, ALSScorer
from trainer.models.als import fit as fit_als
from trainer.models.base import Scorer
from trainer.models.popularity import PopularityParams
from trainer.models.popularity import fit as fit_popularity


class FixedScorer(Scorer):
    kind = "fixed"

    def __init__(self, table: np.ndarray) -> None:
        super().__init__(*table.shape)
        self.table = table.astype(np.float32)

    def _score_known(self, user_idxs: np.ndarray) -> np.ndarray:
        return self.table[user_idxs]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"table": self.table}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Scorer:
        return cls(arrays["table"])


def _one(user: int, item: int, n_users: int, n_items: int) -> Interactions:
    return Interactions.build(np.array([user]), np.array([item]), np.array([0]), n_users, n_items)


def test_hand_computed_rank_and_ndcg() -> None:
    # 1 user, 20 items; item 0 seen; held-out item 5 has 2 unseen items above it -> rank 2
    scores = np.zeros((1, 20))
    scores[0, 0] = 100  # seen: must not count
    scores[0, [7, 8]] = 10
    scores[0, 5] = 5
    m = evaluate(FixedScorer(scores), _one(0, 0, 1, 20), _one(0, 5, 1, 20))
    assert m.hr == 1.0
    assert m.ndcg == pytest.approx(1 / np.log2(4))


def test_ties_count_against_the_model() -> None:
    flat = FixedScorer(np.ones((1, 30)))  # every item tied: the target ranks last
    m = evaluate(flat, _one(0, 0, 1, 30), _one(0, 1, 1, 30))
    assert m.hr == 0.0 and m.ndcg == 0.0 and m.sampled_hr == 0.0


def test_nan_scores_rank_below_everything() -> None:
    scores = np.full((1, 5), np.nan)
    scores[0, 2] = 1.0
    assert pessimistic_rank(scores, np.zeros((1, 5), bool), np.array([2])).tolist() == [0]
    assert pessimistic_rank(scores, np.zeros((1, 5), bool), np.array([3])).tolist() == [4]


@settings(max_examples=50, deadline=None)
@given(n_items=st.integers(12, 60), target=st.integers(0, 11), seed=st.integers(0, 1000))
def test_oracle_is_perfect_and_rank_matches_position(n_items: int, target: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random((1, n_items))
    scores[0, target] = 2.0  # the oracle: held-out item strictly best
    m = evaluate(
        FixedScorer(scores),
        _one(0, (target + 1) % n_items, 1, n_items),
        _one(0, target, 1, n_items),
    )
    assert m.hr == 1.0 and m.ndcg == 1.0 and m.sampled_hr == 1.0
    # and the rank is exactly the count of unseen items above the target
    scores[0, target] = rng.random()
    seen = (target + 1) % n_items
    above = int(
        sum(scores[0, j] > scores[0, target] for j in range(n_items) if j not in (seen, target))
    )
    ties = int(
        sum(scores[0, j] == scores[0, target] for j in range(n_items) if j not in (seen, target))
    )
    mask = np.zeros((1, n_items), bool)
    mask[0, seen] = True
    assert pessimistic_rank(scores, mask, np.array([target]))[0] == above + ties


def test_metrics_catch_a_broken_model(ml100k_dir: Path) -> None:
    """Shuffling ALS's item factors must drop NDCG to about random; a real model is far above."""
    from trainer.data import load_movielens

    ds = load_movielens(ml100k_dir)
    data = Interactions.from_ratings(ds.ratings, build_vocab(ds.ratings))
    split = leave_last_out(data)
    tv = split.train_valid
    model = fit_als(
        tv,
        ALSParams(factors=32, regularization=0.5, bm25_b=0.3, recency_tau=5.0),
        np.random.default_rng(0),
    )
    good = evaluate(model, tv, split.test)
    perm = np.random.default_rng(1).permutation(model.n_items)
    broken = evaluate(ALSScorer(model.user_factors, model.item_factors[perm]), tv, split.test)
    popular = evaluate(
        fit_popularity(tv, PopularityParams(), np.random.default_rng(0)), tv, split.test
    )
    random_ndcg = 10 / model.n_items * 0.5  # generous upper bound for ~random ranking
    assert good.ndcg > 0.05 and good.hr > 0.10
    assert broken.ndcg < max(random_ndcg, 0.01) < popular.ndcg < good.ndcg
    assert broken.sampled_hr < 0.2 < good.sampled_hr
