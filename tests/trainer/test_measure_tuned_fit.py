"""Large data: the test numbers measure each kind's tuned fit, with no refit on train+validation
(`MEASURE_TUNED_FROM`). Checked on small data with the threshold lowered: the measured scorer is
exactly the winning tuned fit, the manifest says so, the published models are the ones a normal
release publishes, and the rating part follows the same rule. NCF is left out for time: the rule
is the pipeline's, the same for every kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_registry.registry import Registry
from scripts.bench_train import synthetic
from trainer import interactions
from trainer.data import Dataset
from trainer.interactions import Interactions, build_vocab, leave_last_out
from trainer.models import MODELS
from trainer.models.rating import RatingParams, errors
from trainer.models.rating import fit as fit_rating
from trainer.pipeline import Trained, train_release
from trainer.rating_eval import train_rating

KINDS = ["popularity", "itemcf", "als"]


def _release(tmp_path: Path, name: str) -> tuple[dict, Trained, Path]:
    ratings, items = synthetic(150, 120, 5_000, seed=4)
    registry = Registry.open((tmp_path / name).as_uri())
    seen: list[Trained] = []
    report = train_release(
        Dataset(ratings, items, "test"), registry, KINDS, extend=lambda t: seen.append(t) or {}
    )
    files = tmp_path / f"{name}-files"
    registry.fetch(report.version, files)
    return registry.manifest(report.version), seen[0], files


def test_the_tuned_fit_is_measured_and_the_published_models_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    normal, _, normal_files = _release(tmp_path, "normal")
    monkeypatch.setattr(interactions, "MEASURE_TUNED_FROM", 100)
    large, trained, large_files = _release(tmp_path, "large")

    for kind in KINDS:
        assert normal["kinds"][kind]["holdout_fit"] == "train+valid"
        assert large["kinds"][kind]["holdout_fit"] == "train"
        assert large["kinds"][kind]["params"] == normal["kinds"][kind]["params"]
        # the published model is the fit on all data either way: byte for byte the same
        arrays = sorted((normal_files / kind).glob("*.npy"))
        assert arrays
        for npy in arrays:
            assert npy.read_bytes() == (large_files / kind / npy.name).read_bytes(), npy
    assert large["rating"]["holdout_fit"] == "train"
    assert normal["rating"]["holdout_fit"] == "train+valid"

    # what was measured is the winning candidate fit on train (the tuning fit), not a refit
    sets, split = trained.sets, trained.split
    assert sets is not None
    for result in trained.results:
        spec = MODELS[result.kind]
        params = spec.params(**result.params)
        tuned = spec.fit(sets.tune, params, np.random.default_rng(0), None)
        refit = spec.fit(sets.holdout, params, np.random.default_rng(0), None)
        users = np.unique(split.test.user_idx)
        measured = result.holdout_scorer.score_many(users)
        np.testing.assert_array_equal(measured, tuned.score_many(users))
        if result.kind != "popularity":  # popularity's counts barely move with one row a user
            assert not np.array_equal(measured, refit.score_many(users))
    # its numbers differ from the refit's only by that one interaction per user
    for kind in ("itemcf", "als"):
        a, b = normal["kinds"][kind]["metrics"], large["kinds"][kind]["metrics"]
        assert abs(a["ndcg@10"] - b["ndcg@10"]) < 0.05


def test_threshold_is_past_the_data_size(monkeypatch: pytest.MonkeyPatch) -> None:
    ratings, _ = synthetic(40, 30, 600, seed=1)
    data = Interactions.from_ratings(ratings, build_vocab(ratings))
    assert interactions.MEASURE_TUNED_FROM == 1_000_000
    assert not interactions.measures_tuned_fit(data)
    monkeypatch.setattr(interactions, "MEASURE_TUNED_FROM", len(data))
    assert not interactions.measures_tuned_fit(data)  # exactly the threshold: still a refit
    monkeypatch.setattr(interactions, "MEASURE_TUNED_FROM", len(data) - 1)
    assert interactions.measures_tuned_fit(data)


def test_watches_count_towards_the_size_for_kinds_and_rating_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ratings below the threshold, ratings + watches past it: the release decides once, so
    the rating part (ratings only) follows the ranking kinds."""
    # as tests/trainer/test_watch_signal.py: watches with the ratings' taste earn a weight
    ratings, items = synthetic(300, 200, 12_000, seed=0)
    is_watch = np.random.default_rng(100).random(len(ratings)) < 0.5
    watches = ratings[is_watch][["user_id", "item_id", "timestamp"]].assign(minutes=1)
    dataset = Dataset(
        ratings=ratings[~is_watch].reset_index(drop=True),
        items=items,
        layout="test",
        watches=watches.reset_index(drop=True),
    )
    monkeypatch.setattr(interactions, "MEASURE_TUNED_FROM", len(dataset.ratings) + 10)
    registry = Registry.open((tmp_path / "reg").as_uri())
    report = train_release(dataset, registry, ["popularity", "itemcf"])
    manifest = registry.manifest(report.version)
    assert manifest["watch_signal"]["weight"] > 0  # the watches joined the training data
    assert manifest["kinds"]["itemcf"]["holdout_fit"] == "train"
    assert manifest["rating"]["holdout_fit"] == "train"


def test_rating_part_measures_its_tuned_fits_on_large_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ratings, _ = synthetic(120, 90, 4_000, seed=2)
    data = Interactions.from_ratings(ratings, build_vocab(ratings))
    split = leave_last_out(data)
    normal = train_rating(data, split, 0, tmp_path / "normal")
    monkeypatch.setattr(interactions, "MEASURE_TUNED_FROM", 100)
    large = train_rating(data, split, 0, tmp_path / "large")
    assert normal is not None and large is not None
    assert large["params"] == normal["params"]
    chosen = RatingParams(**large["params"])
    tuned = fit_rating(split.train, chosen, np.random.default_rng(0))
    assert large["metrics"]["rmse"] == errors(tuned, split.test)["rmse"]
    baseline = fit_rating(split.train, RatingParams(factors=0), np.random.default_rng(0))
    assert large["metrics"]["baseline_rmse"] == errors(baseline, split.test)["rmse"]
    refit = fit_rating(split.train_valid, chosen, np.random.default_rng(0))
    assert normal["metrics"]["rmse"] == errors(refit, split.test)["rmse"]
    # the staged (published) part is the same fit on all data either way
    arrays = sorted((tmp_path / "normal").glob("*.npy"))
    assert arrays
    for npy in arrays:
        assert npy.read_bytes() == (tmp_path / "large" / npy.name).read_bytes()


def test_ncf_holds_nothing_out_of_a_tuned_fit_that_is_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NCF's validation leaves each validation user's latest training row out of its tuning fit
    (`inner_holdout`); where that fit is the one measured on test it must see every training
    row, so the pipeline turns the holdout off there, and only there."""
    import dataclasses

    from trainer.models import ncf

    calls: list[tuple[bool, bool]] = []

    def fit(data, params, rng, valid=None):
        calls.append((params.inner_holdout, valid is not None))
        return ncf.fit(data, params, rng, valid)

    fast = {"dim": 8, "hidden": (8,), "pretrain_epochs": 2, "finetune_epochs": 0}
    spec = dataclasses.replace(MODELS["ncf"], fit=fit, grid=(fast,))
    monkeypatch.setitem(MODELS, "ncf", spec)
    ratings, items = synthetic(150, 120, 5_000, seed=4)
    registry = Registry.open((tmp_path / "reg").as_uri())
    for threshold, holdout in ((10**9, True), (100, False)):
        monkeypatch.setattr(interactions, "MEASURE_TUNED_FROM", threshold)
        calls.clear()
        train_release(Dataset(ratings, items, "test"), registry, ["ncf"], publish=False)
        assert [h for h, tuning in calls if tuning] == [holdout]
        assert len(calls) >= 2  # the tuning fit and the published fit at least
