"""Explanations describe the served ranking: their contributions add up to the served scores."""

from __future__ import annotations

import numpy as np
import pytest

from model_registry.registry import Registry
from recommender.explain import (
    MAX_LIMIT,
    REASON_FILLED,
    REASON_NCF,
    REASON_POPULAR,
    _als,
    _itemcf,
    explain_answer,
    explain_for_history,
    explain_for_user,
)
from recommender.recommend import recommend, recommend_for_history
from recommender.release import LoadedRelease, load_release


@pytest.fixture(scope="module")
def release(synthetic_release: dict) -> LoadedRelease:
    return load_release(Registry.open(synthetic_release["registry"]), "v0.1")


def _all_contributions(release, kind, items, weights, answer) -> np.ndarray:
    """Every history item's contribution (limit = MAX_LIMIT covers these short histories)."""
    why = explain_answer(release, kind, items, weights, answer, limit=MAX_LIMIT)
    return np.array([sum(b.get("weight", 0.0) for b in because) for because in why])


def _reasons(why: list[list[dict]]) -> list[str]:
    assert all(len(because) == 1 and set(because[0]) == {"reason"} for because in why), why
    return [because[0]["reason"] for because in why]


def test_itemcf_contributions_add_up_to_the_served_scores(release: LoadedRelease) -> None:
    scorer = release.scorers["itemcf"]
    for user_id in release.vocab.user_ids[:10].tolist():
        answer = recommend(release, user_id, 5, "itemcf")
        row = scorer.history[release.user_index(user_id)]
        targets = np.array([release.vocab.item_index(m) for m in answer.item_ids])
        terms = _itemcf(scorer, row.indices.astype(np.int64), row.data.astype(float), targets)
        assert terms.sum(axis=1) == pytest.approx(answer.scores, rel=1e-4, abs=1e-5)
        why = explain_for_user(release, "itemcf", user_id, answer)
        for term_row, because in zip(terms, why, strict=True):
            top = np.sort(term_row[term_row > 0])[::-1][:3]
            assert [b["weight"] for b in because] == pytest.approx(top, abs=1e-6)
            titles = [release.titles[release.vocab.item_index(b["movie_id"])] for b in because]
            assert [b["title"] for b in because] == titles and all(titles)
            assert all(release.vocab.item_index(b["movie_id"]) in row.indices for b in because)


def test_itemcf_history_explanations_are_exact(release: LoadedRelease) -> None:
    movie_ids, weights = [2, 4, 6, 4], [1.0, 0.5, 0.8, 0.2]  # movie 4 twice: summed
    answer = recommend_for_history(release, movie_ids, weights, 8, "itemcf")
    why = explain_for_history(release, "itemcf", movie_ids, weights, answer, limit=MAX_LIMIT)
    for because, score in zip(why, answer.scores, strict=True):
        assert {b["movie_id"] for b in because} <= {2, 4, 6}
        assert sum(b["weight"] for b in because) == pytest.approx(score, rel=1e-4, abs=1e-5)
    short = explain_for_history(release, "itemcf", movie_ids, weights, answer, limit=1)
    assert all(len(because) == 1 for because in short)


def test_als_fold_in_split_adds_up_to_the_fold_in_score(release: LoadedRelease) -> None:
    movie_ids, weights = [1, 3, 5, 7, 9], [1.0, 0.8, 0.6, 1.0, 0.4]
    answer = recommend_for_history(release, movie_ids, weights, 6, "als")
    idxs = np.array([release.vocab.item_index(m) for m in movie_ids])
    # all terms, negative ones included, add up to the score: check against the raw split
    targets = np.array([release.vocab.item_index(m) for m in answer.item_ids])
    terms = _als(release.scorers["als"], idxs, np.asarray(weights), targets)
    assert terms.sum(axis=1) == pytest.approx(answer.scores, rel=1e-3, abs=1e-4)
    listed = _all_contributions(release, "als", idxs, np.asarray(weights), answer)
    positive = np.where(terms > 0, terms, 0).sum(axis=1)
    assert listed == pytest.approx(positive, rel=1e-4, abs=1e-5)


def test_als_known_user_names_their_own_movies(release: LoadedRelease) -> None:
    user_id = int(release.vocab.user_ids[3])
    answer = recommend(release, user_id, 5, "als")
    seen = set(release.vocab.item_ids[release.seen(release.user_index(user_id))].tolist())
    why = explain_for_user(release, "als", user_id, answer)
    assert any("movie_id" in because[0] for because in why)
    for because in why:
        named = [b for b in because if "movie_id" in b]
        assert len(because) <= 3 and {b["movie_id"] for b in named} <= seen


def test_reasons_without_a_breakdown(release: LoadedRelease) -> None:
    user_id = int(release.vocab.user_ids[0])
    pop = recommend(release, user_id, 4, "popularity")
    assert _reasons(explain_for_user(release, "popularity", user_id, pop)) == [REASON_POPULAR] * 4
    ncf = recommend(release, user_id, 4, "ncf")
    assert _reasons(explain_for_user(release, "ncf", user_id, ncf)) == [REASON_NCF] * 4
    # NCF cannot fold in an anonymous history: popularity served it, and the reason says so
    anon = recommend_for_history(release, [1, 2], [1.0, 1.0], 4, "ncf")
    assert anon.fallback == "popularity"
    why = explain_for_history(release, "ncf", [1, 2], [1.0, 1.0], anon)
    assert _reasons(why) == [REASON_FILLED] * 4
    # an unknown user: every kind fell back to popularity
    for kind in ("itemcf", "als"):
        answer = recommend(release, 10**12, 3, kind)
        why = explain_for_user(release, kind, 10**12, answer)
        assert _reasons(why) == [REASON_FILLED] * 3


def test_history_is_bounded(release: LoadedRelease, monkeypatch: pytest.MonkeyPatch) -> None:
    from recommender import explain

    items = np.arange(release.vocab.n_items, dtype=np.int64)
    weights = np.linspace(0.1, 1.0, items.size)
    answer = recommend(release, int(release.vocab.user_ids[0]), 3, "itemcf")
    monkeypatch.setattr(explain, "MAX_HISTORY", 5)
    why = explain_answer(release, "itemcf", items, weights, answer, limit=MAX_LIMIT)
    heaviest = set(release.vocab.item_ids[items[-5:]].tolist())
    assert all({b.get("movie_id") for b in because} <= heaviest for because in why)


def test_a_movie_given_twice_is_named_once(release: LoadedRelease) -> None:
    movie_ids, weights = [1, 3, 1, 5], [1.0, 0.8, 0.5, 0.6]
    for kind in ("itemcf", "als"):
        answer = recommend_for_history(release, movie_ids, weights, 5, kind)
        why = explain_for_history(release, kind, movie_ids, weights, answer, limit=MAX_LIMIT)
        for because in why:
            named = [b["movie_id"] for b in because if "movie_id" in b]
            assert len(named) == len(set(named)) and set(named) <= {1, 3, 5}
