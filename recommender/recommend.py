"""One recommendation: pick the scorer, score, drop seen items, top-k, fill from popularity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recommender.errors import UnknownModel
from recommender.release import LoadedRelease
from trainer.models import top_n


@dataclass(frozen=True)
class Answer:
    kind: str
    item_ids: list[int]
    scores: list[float]
    titles: list[str]
    fallback: str | None


def recommend(release: LoadedRelease, user_id: int, k: int, kind: str) -> Answer:
    scorer = release.scorers.get(kind)
    if scorer is None:
        raise UnknownModel(
            f"model {kind!r} is not in release {release.version}; "
            f"available: {sorted(release.scorers)}"
        )
    user_idx = release.vocab.user_index(user_id)
    seen = release.seen(user_idx)
    fallback = None
    if user_idx < 0:
        items, scores = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        fallback = "popularity"
    else:
        items, scores = top_n(scorer.score(user_idx), k, exclude=seen)
    if items.size < k:
        # The model could not fill the list (unknown user, NaN scores): popularity fills the rest.
        fallback = "popularity"
        extra_items, extra_scores = top_n(
            release.popularity.global_scores(),
            k - items.size,
            exclude=np.concatenate([seen, items]),
        )
        items = np.concatenate([items, extra_items])
        scores = np.concatenate([scores, extra_scores])
    ids = release.vocab.item_ids[items]
    return Answer(
        kind=kind,
        item_ids=[int(i) for i in ids],
        scores=[round(float(s), 6) for s in scores],
        titles=[release.titles[i] for i in items],
        fallback=fallback,
    )
