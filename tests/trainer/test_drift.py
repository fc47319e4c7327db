"""Drift thresholds justified by tests: halves of one window never drift; injected drift does.

On ML-100K (skipped without it) and on synthetic MovieLens-shaped data (scripts/bench_train.py's
generator). Measured on ML-100K for docs/retrain.md: the next 20 % by time has 1.0 % of its events
on items the first 80 % never saw (random halves: 0.3 %), so a 10x rise is 10 %; Horror's share
of events is 5.4 %, and doubling it moves the genre-mix JS distance to ~0.10 (floor 0.05; the
natural next-20 % drift is 0.035).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scripts.bench_train import synthetic
from trainer.drift import (
    DriftSettings,
    drift_report,
    genres_of,
    js_distance,
    profile_ratings,
)


@pytest.fixture(scope="module")
def synthetic_window() -> tuple[pd.DataFrame, dict[int, str]]:
    ratings, items = synthetic(1500, 800, 60_000, seed=3)
    return ratings, genres_of(items)


@pytest.fixture(scope="module")
def ml100k_window(ml100k_dir) -> tuple[pd.DataFrame, dict[int, str]]:
    from trainer.data import load_movielens

    dataset = load_movielens(ml100k_dir)
    return dataset.ratings, genres_of(dataset.items)


def _halves(ratings: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    mask = np.random.default_rng(seed).random(len(ratings)) < 0.5
    return ratings[mask], ratings[~mask]


def _report(a: pd.DataFrame, b: pd.DataFrame, genres: dict[int, str]) -> dict:
    return drift_report(
        profile_ratings("reference", a, genres), profile_ratings("current", b, genres),
        DriftSettings(),
    )  # fmt: skip


def _surge(b: pd.DataFrame, genres: dict[int, str], genre: str, share: float, seed: int):
    """Move `share` of the window's events onto items of `genre` (popular ones more often)."""
    rng = np.random.default_rng(seed)
    out = b.copy()
    of_genre = out[out["item_id"].map(lambda i: genre in genres.get(int(i), ""))]["item_id"]
    rows = rng.choice(len(out), size=int(share * len(out)), replace=False)
    out.iloc[rows, out.columns.get_loc("item_id")] = rng.choice(of_genre.to_numpy(), rows.size)
    return out


def _new_items(b: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """Move `share` of the window's events onto item ids nobody has seen before."""
    rng = np.random.default_rng(seed)
    out = b.copy()
    rows = rng.choice(len(out), size=int(share * len(out)), replace=False)
    fresh = int(out["item_id"].max()) + 1 + rng.integers(0, 200, size=rows.size)
    out.iloc[rows, out.columns.get_loc("item_id")] = fresh
    return out


@pytest.mark.parametrize("window", ["synthetic_window", "ml100k_window"])
def test_disjoint_random_halves_of_one_window_do_not_drift(window: str, request) -> None:
    ratings, genres = request.getfixturevalue(window)
    for seed in range(10):
        report = _report(*_halves(ratings, seed), genres)
        assert report["flagged_tests"] == [], (seed, report["tests"])
        assert report["verdict"] == "no_drift"


@pytest.mark.parametrize("window", ["synthetic_window", "ml100k_window"])
def test_a_genre_surge_drifts(window: str, request) -> None:
    ratings, genres = request.getfixturevalue(window)
    a, b = _halves(ratings, 0)
    shares = pd.Series([g for i in b["item_id"] for g in genres[int(i)].split("|")]).value_counts()
    genre = str((shares / len(b) - 0.05).abs().idxmin())  # a genre with ~5 % of events
    report = _report(a, _surge(b, genres, genre, 0.10, seed=1), genres)
    assert "genre_mix" in report["flagged_tests"], report["tests"]["genre_mix"]
    mix = report["tests"]["genre_mix"]
    assert mix["current"][genre] > 1.5 * mix["reference"][genre]


@pytest.mark.parametrize("window", ["synthetic_window", "ml100k_window"])
def test_ten_times_more_new_items_drifts(window: str, request) -> None:
    ratings, genres = request.getfixturevalue(window)
    ordered = ratings.sort_values("timestamp", kind="stable")
    cut = int(len(ordered) * 0.8)
    past, future = ordered.iloc[:cut], ordered.iloc[cut:]
    natural = _report(past, future, genres)["tests"]["new_items"]["statistic"]
    rate = max(natural, 0.005)  # the window's own rate of new items (at least 0.5 %)
    report = _report(past, _new_items(future, 10 * rate, seed=2), genres)
    assert "new_items" in report["flagged_tests"]
    assert not _report(*_halves(ratings, 5), genres)["tests"]["new_items"]["flagged"]


def test_too_few_current_events_is_not_a_verdict() -> None:
    ratings = pd.DataFrame(
        {"user_id": [1, 2, 3], "item_id": [1, 2, 3], "rating": [4.0, 3.0, 5.0],
         "timestamp": [1, 2, 3]}
    )  # fmt: skip
    report = _report(ratings, ratings, {})
    assert report["verdict"] == "too_few_events" and report["flagged"] is False


def test_js_distance_bounds() -> None:
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    assert js_distance(np.array([3, 1]), np.array([6, 2])) == pytest.approx(0.0, abs=1e-9)
    assert 0 < js_distance(np.array([1, 1]), np.array([1, 2])) < 0.2
