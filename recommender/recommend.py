"""One recommendation: pick the scorer, score, drop seen items, top-k, fill from popularity."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recommender.errors import UnknownModel
from recommender.release import LoadedRelease
from trainer.models import Scorer, top_n


@dataclass(frozen=True)
class Answer:
    kind: str
    item_ids: list[int]
    scores: list[float]
    titles: list[str]
    fallback: str | None
    ignored: list[int] = field(default_factory=list)  # given movie ids the release does not know


def scorer_for(release: LoadedRelease, kind: str) -> Scorer:
    scorer = release.scorers.get(kind)
    if scorer is None:
        raise UnknownModel(
            f"model {kind!r} is not in release {release.version}; "
            f"available: {sorted(release.scorers)}"
        )
    return scorer


def recommend(release: LoadedRelease, user_id: int, k: int, kind: str) -> Answer:
    """Top-k for a known or unknown user id; an unknown user gets popularity."""
    scorer = scorer_for(release, kind)
    user_idx = release.user_index(user_id)
    top = release.top.get(kind)
    if top is not None and user_idx >= 0 and k <= top.items.shape[1]:
        n = min(k, int(top.counts[user_idx]))  # precomputed at load with the same top_n
        if n == k:  # the common case, kept lean: a request costs a few slices
            items = top.items[user_idx, :n].tolist()
            return Answer(
                kind,
                top.movie_ids[user_idx, :n].tolist(),
                top.scores[user_idx, :n].tolist(),
                [release.titles[i] for i in items],
                None,
            )
        return _answer(
            release,
            kind,
            None,
            release.seen(user_idx),
            k,
            (top.items[user_idx, :n], top.scores[user_idx, :n]),
        )
    scores = scorer.score(user_idx) if user_idx >= 0 else None
    return _answer(release, kind, scores, release.seen(user_idx), k)


def recommend_for_history(
    release: LoadedRelease, movie_ids: list[int], weights: list[float], k: int, kind: str
) -> Answer:
    """Top-k for an anonymous user from the movies they just watched (fold-in where possible)."""
    scorer = scorer_for(release, kind)
    idxs = np.array([release.vocab.item_index(m) for m in movie_ids], dtype=np.int64)
    known = idxs >= 0
    ignored = [m for m, ok in zip(movie_ids, known, strict=True) if not ok]
    items, w = idxs[known], np.asarray(weights, dtype=np.float32)[known]
    scores = scorer.score_history(items, w) if items.size else None
    answer = _answer(release, kind, scores, items, k)
    return Answer(
        answer.kind, answer.item_ids, answer.scores, answer.titles, answer.fallback, ignored
    )


def _answer(
    release: LoadedRelease,
    kind: str,
    scores: np.ndarray | None,
    exclude: np.ndarray,
    k: int,
    ranked: tuple[np.ndarray, np.ndarray] | None = None,
) -> Answer:
    """`ranked` is an already computed top list; otherwise `scores` are ranked here."""
    fallback = None
    if ranked is not None:
        items, values = ranked
    elif scores is None:
        items, values = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    else:
        items, values = top_n(scores, k, exclude=exclude)
    if items.size < k:
        # The model could not fill the list (unknown user, NaN scores): popularity fills the rest.
        more, more_values = top_n(
            release.popularity.global_scores(),
            k - items.size,
            exclude=np.concatenate([exclude, items]),
        )
        fallback = "popularity" if more.size else None
        items = np.concatenate([items, more])
        values = np.concatenate([values, more_values])
    return Answer(
        kind=kind,
        item_ids=release.vocab.item_ids[items].tolist(),
        scores=np.round(values.astype(np.float64), 6).tolist(),
        titles=[release.titles[i] for i in items.tolist()],
        fallback=fallback,
    )
