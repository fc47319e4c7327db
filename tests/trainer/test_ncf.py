"""NCF's data-sized settings, its pre-train -> fuse -> fine-tune schedule, and what it records.

Fast: a few hundred users with two taste groups, a handful of epochs.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.interactions import Interactions, leave_last_out
from trainer.models import ncf
from trainer.models.ranking import full_ranking_ndcg


@pytest.mark.parametrize(
    ("n", "dim", "batch", "lr"),
    [
        (99_000, 32, 256, 0.001),  # ML-100K's training split: the settings tuned there
        (1_000_000, 64, 2048, 0.002828),
        (10_000_000, 32, 4096, 0.004),  # past 1M: cost-bound; epochs hold at most 2M positives
        (5_000, 16, 256, 0.001),
    ],
)
def test_sizes_follow_the_data(n: int, dim: int, batch: int, lr: float) -> None:
    p = ncf.NCFParams().resolve(n)
    assert (p.dim, p.batch_size, p.lr) == (dim, batch, lr)
    large = n > 1_000_000
    assert p.negatives == (4 if large else 6)
    # negatives by popularity where it was measured (up to 1M), uniform past it
    assert p.negative_pop_power == (0.0 if large else 0.5)
    assert ncf.NCFParams(negative_pop_power=0.75).resolve(n).negative_pop_power == 0.75
    if large:  # the cheap tower and capped epochs that keep a 10M release in its time
        assert p.hidden == (32, 16, 8)
        assert (p.pretrain_epochs, p.finetune_epochs, p.patience) == (12, 3, 3)
    else:
        assert p.hidden == (min(2 * dim, 64), min(dim, 32), min(dim // 2, 16))
        assert (p.pretrain_epochs, p.finetune_epochs, p.patience) == (40, 10, 6)
    pinned = ncf.NCFParams(dim=8, hidden=(8,), batch_size=64, lr=0.01).resolve(n)
    assert (pinned.dim, pinned.hidden, pinned.batch_size, pinned.lr) == (8, (8,), 64, 0.01)
    assert pinned.resolve(n) == pinned  # resolving twice (the refit) changes nothing


def _two_tastes(
    seed: int = 0, n_users: int = 200, n_items: int = 60, per_user: int = 12
) -> Interactions:
    """Even users like even items, odd users odd items: a structure NCF must find."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        pool = np.arange(u % 2, n_items, 2)
        for i in rng.choice(pool, min(per_user, pool.size), replace=False):
            users.append(u)
            items.append(i)
    ts = rng.permutation(len(users))
    return Interactions.build(np.array(users), np.array(items), ts, n_users, n_items)


FAST = {"dim": 8, "hidden": (16, 8), "batch_size": 128, "lr": 0.01, "pretrain_epochs": 6}


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_pretraining_records_its_choices_and_the_refit_repeats_them(loss: str) -> None:
    split = leave_last_out(_two_tastes())
    params = ncf.NCFParams(**FAST, loss=loss)
    tuned = ncf.fit(split.train, params, np.random.default_rng(0), split.valid)
    chosen = tuned.resolved_params
    assert 1 <= chosen.pretrain_epochs <= 6 and 0 <= chosen.finetune_epochs <= 10
    assert chosen.alpha in ncf._ALPHAS and chosen.dim == 8
    # validation picked them, so the tuned model is at least as good as any alpha after it
    assert full_ranking_ndcg(tuned, split.train, split.valid) > 0.2  # chance is about 0.1
    refit = ncf.fit(split.train_valid, chosen, np.random.default_rng(0))
    again = ncf.fit(split.train_valid, chosen, np.random.default_rng(0))
    assert refit.resolved_params is None  # nothing chosen without validation
    np.testing.assert_array_equal(refit.score_many(np.arange(5)), again.score_many(np.arange(5)))
    scores = refit.score_many(np.arange(20))
    same_taste = np.array([[(u + i) % 2 == 0 for i in range(60)] for u in range(20)])
    assert scores[same_taste].mean() > scores[~same_taste].mean() + 0.5


def test_fused_output_is_the_alpha_mix_of_the_two_heads() -> None:
    """Serving sees one NeuMF output layer: alpha * GMF head + (1 - alpha) * MLP head."""
    import torch

    data = _two_tastes(n_users=20, n_items=10, per_user=3)
    params = ncf.NCFParams(**FAST).resolve(len(data))
    model = ncf._build(torch, data.n_users, data.n_items, params)
    users = torch.arange(20)
    items = torch.arange(10).repeat(20, 1)  # (20 users, 10 items each)
    gmf, mlp = (t.detach().numpy() for t in model(users, items))
    for alpha in (0.0, 0.3, 1.0):
        scorer = ncf.NCFScorer(ncf._export(model, alpha))
        expected = alpha * gmf + (1 - alpha) * mlp
        np.testing.assert_allclose(scorer.score_many(np.arange(20)), expected, atol=1e-5)


def test_a_rows_weight_scales_its_pull() -> None:
    """Watch rows carry a weight < 1: the same pairs at weight 1 must end up scored higher than
    at weight 0.1 (known effect), all else (data, seed, negatives) equal."""
    base = _two_tastes(n_users=40, n_items=20, per_user=6)
    # each user also "watched" one item of the other taste, at the end of their history
    extra = Interactions.build(np.arange(40), (np.arange(40) + 1) % 20, np.full(40, 10_000), 40, 20)
    joined = base.concat(extra)
    watched = joined.timestamp == 10_000
    params = ncf.NCFParams(**{**FAST, "pretrain_epochs": 20, "finetune_epochs": 0})
    # uniform negatives: on 20 items the popularity sampler's draws move this pull by as much as
    # the effect itself (seed 0: -0.08, seeds 1-5: 0.12-0.22), and the sampler is not the subject
    params = params.model_copy(
        update={"alpha": 0.5, "recency_tau": None, "negative_pop_power": 0.0}
    )
    for seed in range(3):  # the effect on every seed, not one lucky run
        means = {}
        for w in (0.1, 1.0):
            weight = np.where(watched, w, 1.0).astype(np.float32)
            data = Interactions(
                joined.user_idx, joined.item_idx, joined.timestamp, 40, 20, None, weight
            )
            scorer = ncf.fit(data, params, np.random.default_rng(seed))
            means[w] = scorer.score_many(np.arange(40))[
                np.arange(40), (np.arange(40) + 1) % 20
            ].mean()
        assert means[1.0] > means[0.1] + 0.1, (seed, means)


def test_latest_rated_is_each_users_last_rating_with_something_left_to_train() -> None:
    # user 0: three ratings; user 1: one rating (nothing would be left); user 2: a watch last
    data = Interactions.build(
        np.array([0, 0, 0, 1, 2, 2]),
        np.array([1, 2, 3, 1, 4, 5]),
        np.array([10, 20, 30, 10, 10, 20]),
        3,
        6,
        weight=np.array([1, 1, 1, 1, 1, 0.3], dtype=np.float32),
    )
    picked = ncf._latest_rated(data)
    assert list(zip(data.user_idx[picked], data.item_idx[picked], strict=True)) == [(0, 3)]


@pytest.mark.parametrize("inner", [True, False])
def test_validation_also_scores_each_users_next_training_item(inner: bool) -> None:
    """With `inner_holdout` the tuning fit trains without each validation user's latest row
    and scores it beside the validation row: two held-out items per user, never trained on."""
    import torch

    split = leave_last_out(_two_tastes())
    params = ncf.NCFParams(**FAST, inner_holdout=inner).resolve(len(split.train))
    trainer = ncf._Trainer(torch, split.train, params, np.random.default_rng(0), split.valid)
    held = [h for _, h in trainer.checks]
    assert held[-1] is trainer.valid
    if not inner:
        assert len(held) == 1 and len(trainer.data) == len(split.train)
        return
    latest = split.train.select(split.train.steps_from_end() == 0)
    assert len(held) == 2 and len(held[0]) == len(latest) == split.train.n_users
    assert np.array_equal(held[0].item_idx, latest.item_idx)
    assert len(trainer.data) == len(split.train) - len(latest)
    trained = set(zip(trainer.data.user_idx, trainer.data.item_idx, strict=True))
    assert not trained & set(zip(held[0].user_idx, held[0].item_idx, strict=True))
    # the validation row's ranking excludes the held-out training item: it is known, not new
    seen, _ = trainer.checks[1]
    assert len(seen) == len(split.train)
    score = trainer._validate(0.5)
    assert 0.0 <= score <= 1.0


def test_tuning_scores_a_seeded_sample_of_validation_users_at_scale() -> None:
    from trainer.pipeline import tuning_sample

    split = leave_last_out(_two_tastes(n_users=300))
    assert tuning_sample(split.valid, 0) is split.valid  # small data: every user
    a, b = tuning_sample(split.valid, 0, most=100), tuning_sample(split.valid, 0, most=100)
    assert len(a) == 100 and np.array_equal(a.user_idx, b.user_idx)
    assert len(np.unique(a.user_idx)) == 100 and set(a.user_idx) <= set(split.valid.user_idx)


def test_negatives_are_unseen_and_the_draws_match_checking_every_draw() -> None:
    """The sampler re-checks only new draws; the result must equal re-checking all of them."""
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 30
    users = rng.integers(0, n_users, 600)
    items = rng.integers(0, n_items, 600)
    keys = np.unique(users.astype(np.int64) * n_items + items)  # a dense matrix: many clashes
    positives = ncf._Positives(keys, n_users * n_items)
    assert positives.bits is not None  # small: the bitmap
    got = ncf._sample_negatives(np.random.default_rng(7), users, n_items, positives, 4)[1]

    reference_rng = np.random.default_rng(7)
    neg_users = np.repeat(users, 4)
    want = reference_rng.integers(0, n_items, size=neg_users.size)
    for _ in range(20):
        clash = np.isin(neg_users.astype(np.int64) * n_items + want, keys)
        if not clash.any():
            break
        want[clash] = reference_rng.integers(0, n_items, size=int(clash.sum()))
    np.testing.assert_array_equal(got, want)
    assert not np.isin(neg_users.astype(np.int64) * n_items + got, keys).any()


def test_positives_bitmap_and_binary_search_give_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 97, 61  # n_users * n_items not a multiple of 8: the last byte is partial
    keys = rng.integers(0, n_users * n_items, 2_000)  # duplicates too: the fit's rows may repeat
    queries = np.concatenate([keys, rng.integers(0, n_users * n_items, 5_000), [0, 5916]])
    bitmap = ncf._Positives(keys, n_users * n_items)
    monkeypatch.setattr(ncf, "_BITMAP_BYTES", 0)
    search = ncf._Positives(keys, n_users * n_items)
    assert bitmap.bits is not None and search.bits is None
    want = np.isin(queries, keys)
    np.testing.assert_array_equal(bitmap.contains(queries), want)
    np.testing.assert_array_equal(search.contains(queries), want)
    users = rng.integers(0, n_users, 300)
    a = ncf._sample_negatives(np.random.default_rng(1), users, n_items, bitmap, 4)
    b = ncf._sample_negatives(np.random.default_rng(1), users, n_items, search, 4)
    np.testing.assert_array_equal(a[1], b[1])


def test_popularity_negatives_follow_count_plus_one_to_the_power() -> None:
    """Known answer: item i is drawn in proportion to (count_i + 1)^power among the items the
    user has not interacted with; an item with no training rows is still drawn; no positive is."""
    n_items = 6
    counts = np.array([0, 1, 3, 8, 24, 63])  # item 0: in the catalogue, never trained on
    items = np.repeat(np.arange(n_items), counts).astype(np.int32)
    users = np.arange(items.size, dtype=np.int32) % 40 + 1  # user 0 has no rows
    data = Interactions.build(users, items, np.arange(items.size), 41, n_items)
    cdf = ncf._negative_cdf(data, 0.5)
    assert ncf._negative_cdf(data, 0.0) is None  # uniform
    positives = ncf._Positives(
        data.user_idx.astype(np.int64) * n_items + data.item_idx, 41 * n_items
    )
    draws = 120_000
    got = ncf._sample_negatives(
        np.random.default_rng(5), np.zeros(draws, np.int32), n_items, positives, 1, cdf
    )[1]
    share = np.bincount(got, minlength=n_items) / draws
    want = np.sqrt(counts + 1.0) / np.sqrt(counts + 1.0).sum()
    # each share's standard error is below 0.0015: 0.006 is more than four of them
    np.testing.assert_allclose(share, want, atol=0.006)
    assert share[0] > 0.03  # the never-trained item is drawn (about 5 %)

    user = 3  # a user with positives: never drawn, the rest by the same law (redraws included)
    got = ncf._sample_negatives(
        np.random.default_rng(6), np.full(60_000, user, np.int32), n_items, positives, 1, cdf
    )[1]
    own = data.item_idx[data.user_idx == user]
    assert own.size and not np.isin(got, own).any()
    want = np.sqrt(counts + 1.0)
    want[own] = 0
    share = np.bincount(got, minlength=n_items) / got.size
    np.testing.assert_allclose(share, want / want.sum(), atol=0.008)


def test_popularity_counts_weigh_each_row_and_bad_powers_are_refused() -> None:
    """A watch (weight < 1) counts towards an item's draw share by its weight, not as a whole
    row; a negative or NaN power is a configuration error."""
    from pydantic import ValidationError

    users = np.arange(4, dtype=np.int32)
    items = np.array([0, 0, 1, 1], dtype=np.int32)
    weight = np.array([1.0, 1.0, 0.5, 0.5], dtype=np.float32)  # item 1: two watches
    data = Interactions.build(users, items, np.zeros(4, np.int64), 4, 3, weight=weight)
    probs = np.diff(np.concatenate([[0.0], ncf._negative_cdf(data, 1.0)]))
    np.testing.assert_allclose(probs, np.array([3.0, 2.0, 1.0]) / 6.0)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValidationError):
            ncf.NCFParams(negative_pop_power=bad)
        with pytest.raises(ValidationError):
            ncf.NCFParams(user_norm=bad)


def test_user_norm_weighs_each_users_rows_by_activity_to_the_power() -> None:
    """Known answer: a user with 4x the mean activity has each row weighted 4^-0.5 relative to
    an average user, the weights average 1 over rows, and a fit with them still learns."""
    import torch

    # users 0-2: 2 rows each, user 3: 8 rows (mean over users 3.5)
    users = np.repeat(np.arange(4), [2, 2, 2, 8]).astype(np.int32)
    items = np.concatenate([[0, 1], [2, 3], [4, 5], np.arange(6, 14)]).astype(np.int32)
    data = Interactions.build(users, items, np.arange(users.size), 4, 14)
    params = ncf.NCFParams(**FAST, user_norm=0.5).resolve(len(data))
    trainer = ncf._Trainer(torch, data, params, np.random.default_rng(0), None)
    w = trainer.row_weights.numpy()
    assert abs(w.mean() - 1) < 1e-6
    light, heavy = w[data.user_idx == 0][0], w[data.user_idx == 3][0]
    np.testing.assert_allclose(heavy / light, (8 / 2) ** -0.5, rtol=1e-5)
    off_params = params.model_copy(update={"user_norm": 0.0})
    off = ncf._Trainer(torch, data, off_params, np.random.default_rng(0), None)
    assert off.row_weights is None  # 0: no per-row factor at all

    split = leave_last_out(_two_tastes())
    scorer = ncf.fit(split.train, ncf.NCFParams(**FAST, user_norm=0.5), np.random.default_rng(0))
    assert full_ranking_ndcg(scorer, split.train, split.valid) > 0.2  # chance is about 0.1
