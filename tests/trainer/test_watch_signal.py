"""Watch events as a weaker implicit signal: loading them from snapshots, the weight each row
carries through `Interactions`, the split staying on ratings, and the weight chosen on
validation (known effects: watches with the ratings' taste earn a weight, noise does not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingestor.schema import RateEvent, WatchEvent
from ingestor.snapshot import ValidRows, write_batch
from model_registry.registry import Registry
from model_registry.storage import open_store
from scripts.bench_train import synthetic
from trainer.data import Dataset, load_snapshots
from trainer.errors import DataError
from trainer.interactions import (
    Interactions,
    build_vocab,
    fit_sets,
    leave_last_out,
    watch_interactions,
)
from trainer.models.als import ALSParams, confidence
from trainer.models.popularity import PopularityParams
from trainer.models.popularity import fit as fit_popularity
from trainer.pipeline import Trained, choose_watch_weight, train_release

T0_MS = 1_700_000_000_000


def _window(seed: int, noise: bool) -> Dataset:
    """Half of each user's synthetic interactions become watches: the same taste as the ratings,
    or (noise) the same number of uniformly random movies at the same times."""
    ratings, items = synthetic(300, 200, 12_000, seed=seed)
    rng = np.random.default_rng(seed + 100)
    is_watch = rng.random(len(ratings)) < 0.5
    watches = ratings[is_watch][["user_id", "item_id", "timestamp"]].copy()
    ratings = ratings[~is_watch].reset_index(drop=True)
    if noise:
        watches["item_id"] = rng.integers(1, len(items) + 1, size=len(watches))
        rated = set(zip(ratings["user_id"], ratings["item_id"], strict=True))
        pairs = zip(watches["user_id"], watches["item_id"], strict=True)
        watches = watches[[p not in rated for p in pairs]]
        watches = watches.drop_duplicates(["user_id", "item_id"])
    watches = watches.reset_index(drop=True).assign(minutes=1)
    return Dataset(ratings=ratings, items=items, layout="test", watches=watches)


# (a) / (b): known effects on the chosen weight


@pytest.mark.parametrize("kind", ["als", "itemcf"])
@pytest.mark.parametrize("seed", [0, 1])
def test_watches_with_the_ratings_taste_earn_a_weight(kind: str, seed: int) -> None:
    block = choose_watch_weight(_window(seed, noise=False), ["popularity", kind], seed)
    assert block["kind"] == kind and block["weight"] > 0
    assert set(block["trials"]) == {"0.0", "0.25", "0.5", "1.0"}
    assert block["trials"][str(block["weight"])] > block["trials"]["0.0"]


@pytest.mark.parametrize("kind", ["als", "itemcf"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_watches_are_left_out(kind: str, seed: int) -> None:
    block = choose_watch_weight(_window(seed, noise=True), ["popularity", kind], seed)
    assert block["weight"] == 0.0
    assert max(block["trials"].values()) == block["trials"]["0.0"]


def test_als_chooses_when_both_are_trained_and_no_tuner_means_no_watches() -> None:
    data = _window(0, noise=False)
    assert choose_watch_weight(data, ["popularity", "itemcf", "als"])["kind"] == "als"
    block = choose_watch_weight(data, ["popularity"])
    assert block["weight"] == 0.0 and block["kind"] is None and block["trials"] == {}


# (c): snapshots with watch events


def _write(store_uri: str, topic: str, first: int, events: list, partition: int = 0) -> None:
    offsets = list(range(first, first + len(events)))
    payloads = [e.model_dump_json().encode() for e in events]
    rows = ValidRows(offsets, events, payloads)
    write_batch(open_store(store_uri), None, topic, partition, first, offsets[-1], rows, [])


def _rate(user: int, movie: int, t: int, rating: float = 4.0) -> RateEvent:
    return RateEvent(user_id=user, movie_id=movie, rating=rating, ts=T0_MS + t * 1000)


def _watch(user: int, movie: int, t: int, minute: int) -> WatchEvent:
    return WatchEvent(user_id=user, movie_id=movie, minute=minute, ts=T0_MS + t * 1000)


def test_snapshot_watches_collapse_drop_rated_pairs_and_dedupe(tmp_path: Path) -> None:
    uri = (tmp_path / "events").as_uri()
    _write(uri, "rate", 0, [_rate(1, 10, 100), _rate(1, 11, 200), _rate(2, 10, 150)])
    minutes = [_watch(1, 12, 50 + m * 60, m) for m in range(5)]  # 5 minutes of one movie
    minutes += [_watch(1, 10, 40, 0), _watch(1, 10, 100, 1)]  # a movie user 1 also rated
    minutes += [_watch(3, 13, 500, 0), _watch(3, 13, 560, 1)]  # a watch-only user and movie
    _write(uri, "watch", 0, minutes)
    _write(uri, "watch", 7, minutes[7:])  # a replayed batch: offsets 7, 8 again (new file)

    data = load_snapshots(uri)
    assert len(data.ratings) == 3
    watches = data.watches
    assert watches is not None
    got = {
        (int(r.user_id), int(r.item_id)): (int(r.timestamp), int(r.minutes))
        for r in watches.itertuples()
    }
    t0 = T0_MS // 1000
    assert got == {(1, 12): (t0 + 50, 5), (3, 13): (t0 + 500, 2)}  # first minute's time
    assert data.skipped["watch_pair_also_rated"] == 1
    assert data.skipped["watch_duplicate_offset"] == 2
    stats = data.stats()
    assert stats["watch_pairs"] == 2 and stats["watch_minutes"] == 7
    assert stats["ratings"] == 3 and stats["users"] == 2  # ratings' figures as before
    assert 13 in set(data.items["item_id"])  # a movie only ever watched is in the catalogue


def test_snapshot_watches_outside_the_catalogue_are_dropped(tmp_path: Path) -> None:
    from scripts.bench_train import write_ml100k

    ratings, items = synthetic(20, 30, 200, seed=1)
    catalogue = write_ml100k(tmp_path / "ml", ratings, items)
    uri = (tmp_path / "events").as_uri()
    _write(uri, "rate", 0, [_rate(1, 3, 100)])
    _write(uri, "watch", 0, [_watch(1, 4, 50, 0), _watch(1, 999, 60, 0)])
    data = load_snapshots(uri, catalogue=catalogue)
    assert data.watches is not None and list(data.watches["item_id"]) == [4]
    assert data.skipped["watch_item_not_in_catalogue"] == 1


def test_watches_without_ratings_are_a_data_error(tmp_path: Path) -> None:
    uri = (tmp_path / "events").as_uri()
    _write(uri, "watch", 0, [_watch(1, 12, 50, 0)])
    with pytest.raises(DataError, match=r"no rate events.*1 watch events"):
        load_snapshots(uri)


def test_snapshots_without_watches_have_none(tmp_path: Path) -> None:
    uri = (tmp_path / "events").as_uri()
    _write(uri, "rate", 0, [_rate(1, 10, 100), _rate(2, 10, 150)])
    data = load_snapshots(uri)
    assert data.watches is None and "watch_pairs" not in data.stats()


# (d): the split stays on ratings; watches only ever join the training side


def test_held_out_rows_are_ratings_and_watches_precede_them() -> None:
    dataset = _window(0, noise=False)
    watches = dataset.watches
    assert watches is not None
    watch_only = pd.DataFrame({"user_id": [10_000], "item_id": [1], "timestamp": [0]})
    watches = pd.concat([watches, watch_only.assign(minutes=1)], ignore_index=True)
    vocab = build_vocab(dataset.ratings, watches)
    data = Interactions.from_ratings(dataset.ratings, vocab)
    split = leave_last_out(data)
    sets = fit_sets(data, split, watch_interactions(watches, vocab, 0.5))

    rated = set(zip(dataset.ratings["user_id"], dataset.ratings["item_id"], strict=True))
    for held in (split.valid, split.test):
        pairs = zip(vocab.user_ids[held.user_idx], vocab.item_ids[held.item_idx], strict=True)
        assert all(p in rated for p in pairs)  # never a watch-only pair
        assert held.weight is None
    assert vocab.user_index(10_000) not in set(split.valid.user_idx) | set(split.test.user_idx)
    # the split is the one the ratings alone give
    alone = leave_last_out(Interactions.from_ratings(dataset.ratings, build_vocab(dataset.ratings)))
    assert len(split.valid) == len(alone.valid) and len(split.test) == len(alone.test)

    for fit, held in ((sets.tune, split.valid), (sets.holdout, split.test)):
        cutoff = dict(zip(held.user_idx.tolist(), held.timestamp.tolist(), strict=True))
        is_watch = fit.weights() < 1.0
        assert is_watch.any()
        for user, ts in zip(fit.user_idx[is_watch], fit.timestamp[is_watch], strict=True):
            assert ts < cutoff.get(int(user), np.iinfo(np.int64).max)
    assert len(sets.final) == len(data) + len(watches)
    assert vocab.user_index(10_000) in set(sets.final.user_idx[sets.final.weights() < 1])


# (e): the weight column through Interactions, and the kinds honouring it


def test_weight_survives_select_and_concat() -> None:
    a = Interactions.build(
        np.array([0, 1]), np.array([0, 1]), np.array([5, 6]), 2, 3, rating=np.array([4.0, 3.0])
    )
    b = Interactions.build(
        np.array([1, 0]), np.array([2, 2]), np.array([1, 9]), 2, 3, weight=np.array([0.25, 0.5])
    )
    assert a.weight is None and a.weights().tolist() == [1.0, 1.0]
    picked = b.select(b.user_idx == 0)  # build sorted b by user: (0, 2, 9) first
    assert picked.weight is not None and picked.weight.tolist() == [0.5]
    both = a.concat(b)  # sorted by (user, timestamp, item); a's rows count 1.0
    assert both.rating is None  # ratings survive only when both sides have them
    assert list(zip(both.user_idx, both.timestamp, both.weights(), strict=True)) == [
        (0, 5, 1.0),
        (0, 9, 0.5),
        (1, 1, 0.25),
        (1, 6, 1.0),
    ]
    assert both.weight is not None and both.weight.dtype == np.float32
    assert a.concat(a).weight is None
    assert both.select(both.weights() < 1).weights().tolist() == [0.5, 0.25]


def test_popularity_and_als_scale_with_the_weight() -> None:
    data = Interactions.build(
        np.array([0, 1, 2]), np.array([0, 1, 1]), np.zeros(3), 3, 2, weight=np.array([1, 0.5, 0.25])
    )
    pop = fit_popularity(data, PopularityParams(), np.random.default_rng(0))
    assert pop.global_scores().tolist() == [1.0, 0.75]
    conf = confidence(data, ALSParams(weighting="binary", alpha=2.0)).toarray()
    assert conf.tolist() == [[2.0, 0.0], [0.0, 1.0], [0.0, 0.5]]
    zero = Interactions.build(np.array([0]), np.array([1]), np.zeros(1), 1, 2, weight=np.zeros(1))
    assert confidence(zero, ALSParams(weighting="binary")).nnz == 0  # absent, not "confidence 0"


# end to end: the weight recorded in the manifest, watch-only users in the release


def test_a_release_records_the_watch_signal(tmp_path: Path) -> None:
    dataset = _window(0, noise=False)
    watches = dataset.watches
    assert watches is not None
    extra = pd.DataFrame({"user_id": [10_000], "item_id": [1], "timestamp": [0], "minutes": [3]})
    dataset.watches = pd.concat([watches, extra], ignore_index=True)
    registry = Registry.open((tmp_path / "reg").as_uri())
    seen: list[Trained] = []
    report = train_release(
        dataset, registry, ["popularity", "itemcf"], extend=lambda t: seen.append(t) or {}
    )
    trained = seen[0]  # a watch-only user is in the release and scored from their watches
    user = trained.vocab.user_index(10_000)
    assert user >= 0 and trained.sets is not None
    scores = next(r for r in trained.results if r.kind == "itemcf").holdout_scorer.score(user)
    assert np.isfinite(scores).all() and scores.max() > 0
    assert user not in set(trained.split.test.user_idx)
    signal = Registry.open(registry.uri).manifest(report.version)["watch_signal"]
    assert signal == report.as_dict()["watch_signal"]
    assert signal["kind"] == "itemcf" and signal["weight"] > 0
    assert signal["watch_pairs"] == len(dataset.watches)
    assert set(signal["trials"]) == {"0.0", "0.25", "0.5", "1.0"}
    assert "watches: " in report.table()


def test_without_watches_the_manifest_says_null(tmp_path: Path) -> None:
    ratings, items = synthetic(60, 40, 900, seed=3)
    registry = Registry.open((tmp_path / "reg").as_uri())
    report = train_release(Dataset(ratings, items, "test"), registry, ["popularity"])
    manifest = Registry.open(registry.uri).manifest(report.version)
    assert manifest["watch_signal"] is None and "watch_pairs" not in manifest["dataset"]
    assert "watches" not in report.table()


def test_drift_counts_watches_on_both_sides_when_the_release_used_them(tmp_path: Path) -> None:
    """A release trained with watches has them in its history; the same window profiled with
    watches must then match it (events per user, item shares), and without them it must not."""
    from trainer.drift import profile_dataset, profile_release, uses_watches
    from trainer.gate import load_release

    dataset = _window(0, noise=False)
    registry = Registry.open((tmp_path / "reg").as_uri())
    report = train_release(dataset, registry, ["popularity", "itemcf"])
    _, data = load_release(registry, report.version)
    assert uses_watches(data.manifest)
    reference = profile_release(report.version, data)
    same = profile_dataset("window", dataset, with_watches=True)
    ratings_only = profile_dataset("window", dataset)
    assert same.events == reference.events
    assert ratings_only.events < reference.events
    assert same.ratings == ratings_only.ratings  # the rating histogram stays ratings only
    assert not uses_watches({"watch_signal": None}) and not uses_watches({})
