"""One contract for every model kind: known best item, save/load, unknown users, determinism.

The checkerboard: two groups of users and items (even / odd). Each user has consumed every item
of their own group but one, and that one, the user's own index, must be their best unseen item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.models import MODELS, Params, top_n
from trainer.models.data import Interactions

N = 16
FAST_PARAMS: dict[str, dict] = {  # small, quick settings: the contract is about behaviour
    "popularity": {},
    "itemcf": {"neighbours": 8, "shrink": 1.0},
    "als": {
        "factors": 8,
        "regularization": 0.01,
        "iterations": 15,
        "weighting": "binary",
        "alpha": 5.0,
    },
    # Negatives do sample item u for user u (it is unseen; every item has the same count here, so
    # popularity draws are uniform): weight decay and a short run
    # make NCF learn the group structure instead of memorising those draws.
    "ncf": {
        "dim": 8,
        "hidden": (16, 8),
        "pretrain_epochs": 10,
        "finetune_epochs": 5,
        "batch_size": 32,
        "lr": 0.01,
        "weight_decay": 1e-3,
        "recency_tau": None,
    },
}


def checkerboard() -> Interactions:
    users, items = [], []
    for u in range(N):
        for i in range(N):
            if i % 2 == u % 2 and i != u:
                users.append(u)
                items.append(i)
    ts = np.arange(len(users))
    return Interactions.build(np.array(users), np.array(items), ts, N, N)


def _params(kind: str) -> Params:
    return MODELS[kind].params(**FAST_PARAMS[kind])


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request: pytest.FixtureRequest):
    kind = request.param
    data = checkerboard()
    return kind, data, MODELS[kind].fit(data, _params(kind), np.random.default_rng(7), None)


def test_every_kind_has_contract_params() -> None:
    assert set(FAST_PARAMS) == set(MODELS)


def test_known_best_item(fitted) -> None:
    kind, data, scorer = fitted
    seen = data.matrix().tolil().rows
    for u in range(N):
        best, _ = top_n(scorer.score(u), 1, exclude=np.array(seen[u]))
        if kind == "popularity":
            # one ranking for all: the best unseen item is one of the most consumed
            counts = np.bincount(data.item_idx, minlength=N)
            unseen = [i for i in range(N) if i not in seen[u]]
            assert counts[best[0]] == max(counts[unseen])
        else:
            assert best[0] == u, f"{kind}: user {u} got {best[0]}"


def test_scores_are_finite_float32_of_catalogue_size(fitted) -> None:
    _, _, scorer = fitted
    scores = scorer.score_many(np.arange(N))
    assert scores.shape == (N, N) and scores.dtype == np.float32 and np.isfinite(scores).all()


def test_save_load_gives_identical_scores(fitted, tmp_path: Path) -> None:
    kind, _, scorer = fitted
    names = scorer.save(tmp_path / kind)
    assert names and all(n.endswith(".npy") for n in names)
    for name in names:  # no pickles anywhere
        np.load(tmp_path / kind / name, allow_pickle=False)
    loaded = MODELS[kind].scorer.load(tmp_path / kind)
    np.testing.assert_array_equal(loaded.score_many(np.arange(N)), scorer.score_many(np.arange(N)))


def test_unknown_user_gets_nan(fitted) -> None:
    _, _, scorer = fitted
    for user in (-1, N, 10**9):
        assert np.isnan(scorer.score(user)).all()
    mixed = scorer.score_many(np.array([0, -1]))
    assert np.isfinite(mixed[0]).all() and np.isnan(mixed[1]).all()


def test_same_seed_same_scores(fitted) -> None:
    kind, data, scorer = fitted
    again = MODELS[kind].fit(data, _params(kind), np.random.default_rng(7), None)
    np.testing.assert_allclose(
        again.score_many(np.arange(N)), scorer.score_many(np.arange(N)), rtol=1e-5, atol=1e-6
    )


def test_grid_candidates_are_valid_params() -> None:
    for spec in MODELS.values():
        assert spec.candidates(), spec.kind
        for params in spec.candidates():
            assert isinstance(params, spec.params)


def test_params_reject_unknown_fields() -> None:
    from pydantic import ValidationError

    for spec in MODELS.values():
        with pytest.raises(ValidationError):
            spec.params(not_a_param=1)
