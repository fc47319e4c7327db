"""Known answers for every popularity-bias and group metric (formulas in docs/evaluation.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.trainer.test_evaluate import FixedScorer
from trainer import fairness
from trainer.evaluate import evaluate
from trainer.models.data import Interactions


def test_gini_known_answers() -> None:
    assert fairness.gini(np.array([5, 5, 5, 5])) == 0.0  # equal exposure
    assert fairness.gini(np.zeros(4)) == 0.0  # nothing shown: no inequality to speak of
    # one item gets everything among n: (n - 1) / n
    assert fairness.gini(np.array([0, 0, 0, 12])) == pytest.approx(3 / 4)
    # [1, 2, 3, 4]: sum_i (2i - n - 1) x_i / (n sum x) = (-3 - 2 + 3 + 12) / 40 = 0.25
    assert fairness.gini(np.array([4, 1, 3, 2])) == pytest.approx(0.25)


def test_head_is_the_most_popular_fifth_with_ties_to_the_lower_index() -> None:
    pop = np.array([1, 9, 9, 0, 5, 3, 2, 8, 7, 6])  # 10 items -> head of 2
    assert np.flatnonzero(fairness.head_items(pop)).tolist() == [1, 2]
    pop = np.array([3, 3, 3, 3, 3, 3])  # 6 items -> ceil(1.2) = 2, all tied -> items 0 and 1
    assert np.flatnonzero(fairness.head_items(pop)).tolist() == [0, 1]


def test_popularity_bias_known_answer() -> None:
    # 10 items, 8 users; item_users[i] = users who interacted with i; head = items 0, 1
    item_users = np.array([8, 4, 2, 2, 1, 1, 1, 0, 0, 0])
    lists = [np.array([0, 1]), np.array([0, 4]), np.array([0, 9])]
    out = fairness.popularity_bias(lists, item_users, n_users=8)
    # slots: 0,1,0,4,0,9 -> outside the head: 4 and 9 -> 2 / 6
    assert out["long_tail"] == pytest.approx(2 / 6)
    # self-information: item0 -log2(8/8)=0, item1 -log2(4/8)=1, item4 3, item9 (0 users -> 1) 3
    assert out["novelty"] == pytest.approx((0 + 1 + 0 + 3 + 0 + 3) / 6)
    exposure = np.array([3, 1, 0, 0, 1, 0, 0, 0, 0, 1])
    assert out["gini"] == pytest.approx(fairness.gini(exposure))


def test_activity_quartiles() -> None:
    labels = fairness.activity_quartiles(np.arange(1, 9))  # 1..8: quartile cuts 2.75, 4.5, 6.25
    assert labels.tolist() == ["q1", "q1", "q2", "q2", "q3", "q3", "q4", "q4"]


def test_group_quality_known_answer_and_small_groups_left_out_of_the_ratio() -> None:
    labels = np.array(["F"] * 50 + ["M"] * 50 + ["X"] * 3 + [""] * 2, dtype=object)
    hits = np.r_[np.ones(10), np.zeros(40), np.ones(20), np.zeros(30), np.zeros(3), np.ones(2)]
    gains = hits * 0.5
    out = fairness.group_quality(labels, hits, gains, min_users=50)
    assert out["groups"]["F"] == {"users": 50, "hr@10": 0.2, "ndcg@10": 0.1}
    assert out["groups"]["M"] == {"users": 50, "hr@10": 0.4, "ndcg@10": 0.2}
    assert out["groups"]["X"]["users"] == 3  # reported, but too small for the ratio
    assert "" not in out["groups"]  # unlabelled users belong to no group
    assert out["hr@10_max_min"] == pytest.approx(2.0)
    assert out["ndcg@10_max_min"] == pytest.approx(2.0)


def test_group_ratio_is_none_when_it_cannot_be_measured() -> None:
    labels = np.array(["a"] * 60 + ["b"] * 60, dtype=object)
    zero_b = fairness.group_quality(labels, np.r_[np.ones(60), np.zeros(60)], np.zeros(120))
    assert zero_b["hr@10_max_min"] is None  # the worst group scores 0: the ratio is unbounded
    one_group = fairness.group_quality(np.array(["a"] * 60, dtype=object), np.ones(60), np.ones(60))
    assert one_group["ndcg@10_max_min"] is None


def test_evaluate_reports_bias_and_groups_of_the_lists_users_get() -> None:
    """Two users, 20 items: the scores put known items on top, so the lists are known."""
    n_users, n_items = 2, 20
    table = np.tile(-np.arange(n_items, dtype=np.float64), (n_users, 1))  # item 0 best
    seen = Interactions.build(
        np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0, 1, 0]), n_users, n_items
    )
    held = Interactions.build(np.array([0, 1]), np.array([2, 15]), np.array([9, 9]), 2, n_items)
    groups = {"gender": np.array(["F", "M"], dtype=object)}
    m = evaluate(FixedScorer(table), seen, held, groups=groups)
    # user 0 sees 0,1 -> top 10 = items 2..11; user 1 sees 0 -> items 1..10
    exposure = np.bincount(np.r_[np.arange(2, 12), np.arange(1, 11)], minlength=n_items)
    assert m.gini == pytest.approx(fairness.gini(exposure))
    # head = 4 most popular of 20 in `seen`: item 0 (2 users), item 1 (1), then items 2, 3
    assert m.long_tail == pytest.approx(1 - 5 / 20)  # slots on items 1, 2, 3: 1+2+2 = 5
    # novelty: item 1 seen by 1 of 2 users -> 1 bit; unseen items count as 1 user -> 1 bit too
    assert m.novelty == pytest.approx(1.0)
    assert m.hr == 0.5  # user 0's item 2 ranks first; user 1's item 15 ranks 14th
    assert m.groups["gender"]["groups"]["F"] == {"users": 1, "hr@10": 1.0, "ndcg@10": 1.0}
    assert m.groups["gender"]["groups"]["M"]["hr@10"] == 0.0
    assert set(m.groups) == {"gender", "activity"}
    assert m.as_dict()["long_tail@10"] == pytest.approx(0.75)
    assert not math.isnan(m.as_dict()["novelty@10"])
