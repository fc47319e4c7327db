"""The rating model: recovers a known low-rank rating matrix, falls back to biases, round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.interactions import leave_last_out
from trainer.models.data import Interactions
from trainer.models.rating import RatingModel, RatingParams, errors, fit, load_part
from trainer.rating_eval import train_rating


def _ratings(values: np.ndarray, mask: np.ndarray) -> Interactions:
    users, items = np.nonzero(mask)
    return Interactions.build(
        users, items, np.arange(users.size), *values.shape, rating=values[users, items]
    )


def _low_rank(seed: int = 0, n_users: int = 60, n_items: int = 50):
    rng = np.random.default_rng(seed)
    mu, bu, bi = 3.5, rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    p, q = rng.normal(0, 0.5, (n_users, 2)), rng.normal(0, 0.5, (n_items, 2))
    truth = mu + bu[:, None] + bi[None, :] + p @ q.T
    return truth, rng.random((n_users, n_items)) < 0.5


def test_recovers_a_noise_free_low_rank_matrix_on_unseen_cells() -> None:
    truth, observed = _low_rank()
    model = fit(
        _ratings(truth, observed),
        RatingParams(factors=2, reg=1e-4, bias_reg=1e-4, iterations=60),
        np.random.default_rng(0),
    )
    held = _ratings(truth, ~observed)
    assert errors(model, held)["rmse"] < 0.05  # far below the spread of the truth (~0.7)
    biases_only = fit(
        _ratings(truth, observed), RatingParams(factors=0, bias_reg=1e-4), np.random.default_rng(0)
    )
    assert errors(biases_only, held)["rmse"] > 5 * errors(model, held)["rmse"]


def test_biases_only_model_is_the_regularised_mean_model() -> None:
    # 2 users x 2 items, all rated; bias_reg 0 -> exact additive fit of an additive matrix
    values = np.array([[1.0, 3.0], [3.0, 5.0]])
    model = fit(
        _ratings(values, np.ones_like(values, bool)),
        RatingParams(factors=0, bias_reg=0.0, iterations=30),
        np.random.default_rng(0),
    )
    assert model.mu == pytest.approx(3.0)
    pred = model.predict_many(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(pred, [1, 3, 3, 5], atol=1e-6)


def test_fallbacks_and_clipping() -> None:
    model = RatingModel(
        mu=3.0,
        user_bias=np.array([0.5, -4.0]),
        item_bias=np.array([1.0, 3.0]),
        user_factors=np.zeros((2, 1)),
        item_factors=np.zeros((2, 1)),
        scale=(1.0, 5.0),
    )
    assert model.predict(0, 0) == (pytest.approx(4.5), "full")
    assert model.predict(0, 1) == (5.0, "full")  # 6.5 clipped to the top of the scale
    assert model.predict(1, -1) == (1.0, "user_bias_only")  # -1 clipped to the bottom
    assert model.predict(-1, 0) == (pytest.approx(4.0), "item_bias_only")
    assert model.predict(-1, 7) == (3.0, "global_mean")  # 7 is outside the 2 items


def test_save_load_round_trip_and_a_malformed_part_is_refused(tmp_path: Path) -> None:
    truth, observed = _low_rank(1, 10, 8)
    model = fit(_ratings(truth, observed), RatingParams(factors=3), np.random.default_rng(0))
    model.save(tmp_path / "rating")
    (tmp_path / "rating" / "meta.json").write_text(json.dumps({"kind": "rating"}))
    manifest = {"parts": {"rating": "0" * 64}}
    back = load_part(tmp_path, manifest, 10, 8)
    assert back is not None
    pairs = (np.array([1, 2]), np.array([3, 4]))
    np.testing.assert_array_equal(back.predict_many(*pairs), model.predict_many(*pairs))
    assert load_part(tmp_path, {"parts": {}}, 10, 8) is None  # an older release: no part
    with pytest.raises(ValueError, match="vocabulary"):
        load_part(tmp_path, manifest, 11, 8)
    np.save(tmp_path / "rating" / "item_bias.npy", np.full(8, np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        load_part(tmp_path, manifest, 10, 8)


def test_train_rating_picks_on_validation_and_reports_both_models(tmp_path: Path) -> None:
    truth, observed = _low_rank(2)
    data = _ratings(np.round(truth * 2) / 2, observed)
    block = train_rating(data, leave_last_out(data), 0, tmp_path / "rating")
    assert block is not None
    m = block["metrics"]
    assert block["params"]["factors"] > 0  # the data is low-rank: factors win on validation
    assert m["rmse"] < m["baseline_rmse"] and m["n"] == truth.shape[0]
    meta = json.loads((tmp_path / "rating" / "meta.json").read_text())
    assert meta["kind"] == "rating" and len(meta["trials"]) >= 2
    unrated = Interactions.build(np.array([0]), np.array([0]), np.array([0]), 1, 1)
    assert train_rating(unrated, leave_last_out(unrated), 0, tmp_path / "none") is None


def test_ridge_equals_a_direct_weighted_solve_per_group() -> None:
    """`_Groups.ridge` builds each Gram matrix from its upper triangle: known answer, one
    weighted ridge regression solved directly per group."""
    from trainer.models.rating import _Groups

    rng = np.random.default_rng(5)
    n_groups, n_others, rows, d = 7, 9, 40, 4
    pairs = rng.choice(n_groups * n_others, rows, replace=False)
    ids, others = pairs // n_others, pairs % n_others
    weight, target = rng.uniform(0.5, 2.0, rows), rng.normal(size=rows)
    other_side = rng.normal(size=(n_others, d))
    params = RatingParams(reg=0.3, bias_reg=2.0)
    got = _Groups(ids, others, n_groups, n_others, weight).ridge(other_side, target, params)
    design = np.column_stack([np.ones(n_others), other_side[:, 1:]])
    for g in range(n_groups):
        at = ids == g
        x, w, y = design[others[at]], weight[at], target[at]
        penalty = np.diag([params.bias_reg] + [params.reg * max(w.sum(), 1.0)] * (d - 1))
        want = np.linalg.solve(x.T @ (w[:, None] * x) + penalty, x.T @ (w * y))
        np.testing.assert_allclose(got[g], want, rtol=1e-10, atol=1e-12)
