"""Why each recommended movie: the history items that contributed most, or a plain reason.

Explanations are computed after the answer, from the same release and the same history, so they
describe the ranking that was served:

- itemcf: a score is sum_j w_j * sim(j, i) over the history, so each history item's term is its
  exact contribution (the terms add up to the score).
- ALS: the fold-in user vector is x = A^-1 Y_u^T c (see ALSScorer.score_history), so the score
  y_i . x splits exactly into c_j * y_i^T A^-1 y_j per history item j. For a known user the
  served factors were trained with the whole data set; the same split over their history says
  which of their movies' factors match the item best.
- NCF and popularity: no per-movie breakdown, a reason string.

Each answered item gets a `because` list: the history movies with the largest positive
contributions, `{"movie_id", "title", "weight"}` (weight: the contribution to the item's score),
or, when there is no per-movie breakdown, one `{"reason": str}` saying why the movie is there.

Cost is bounded: at most MAX_HISTORY history items (the heaviest, i.e. the most recent when the
model weights by recency) times the k answered items; one f x f solve for ALS.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommender.recommend import Answer
from recommender.release import LoadedRelease
from trainer.models.als import ALSScorer
from trainer.models.itemcf import ItemCFScorer

MAX_HISTORY = 500  # history items considered per explanation
MAX_LIMIT = 10  # history items named per recommended movie

REASON_POPULAR = "popular right now: among the most watched movies in this release"
REASON_FILLED = "popular right now: the model could not score it, so popularity filled the list"
REASON_NCF = "the neural model's match for this whole history (it has no per-movie breakdown)"
REASON_NONE = "no movie in this history is close to it: listed to fill the list"


def explain_for_user(
    release: LoadedRelease, kind: str, user_id: int, answer: Answer, limit: int = 3
) -> list[list[dict]]:
    """Explanations for `recommend(release, user_id, k, kind)`: one `because` list per item.

    The history is the user's movies in the release; for itemcf their weights are the ones the
    model scored with (recency weights when it was trained with them).
    """
    user_idx = release.user_index(user_id)
    scorer = release.scorers.get(kind)
    if user_idx < 0:
        items, weights = np.empty(0, np.int64), np.empty(0)
    elif isinstance(scorer, ItemCFScorer):
        history = scorer.history
        lo, hi = history.indptr[user_idx], history.indptr[user_idx + 1]
        items, weights = history.indices[lo:hi], history.data[lo:hi]
    else:
        items = release.seen(user_idx)
        weights = np.ones(items.size)
    return explain_answer(release, kind, items, weights, answer, limit)


def explain_for_history(
    release: LoadedRelease,
    kind: str,
    movie_ids: list[int],
    weights: list[float],
    answer: Answer,
    limit: int = 3,
) -> list[list[dict]]:
    """Explanations for `recommend_for_history(release, movie_ids, weights, k, kind)`."""
    idxs = _item_idxs(release, movie_ids)
    known = idxs >= 0
    w = np.asarray(weights, dtype=np.float64)[known]
    return explain_answer(release, kind, idxs[known], w, answer, limit)


def explain_answer(
    release: LoadedRelease,
    kind: str,
    history_item_idxs: np.ndarray,
    weights: np.ndarray,
    answer: Answer,
    limit: int = 3,
) -> list[list[dict]]:
    """One `because` list per item of `answer`: at most `limit` history movies with a positive
    contribution, largest first, or `[{"reason": str}]` when there is none to name."""
    limit = max(1, min(int(limit), MAX_LIMIT))
    n = len(answer.item_ids)
    history = np.asarray(history_item_idxs, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    if history.size > MAX_HISTORY:  # the heaviest (most recent) items: bounded cost
        keep = np.sort(np.argsort(-w, kind="stable")[:MAX_HISTORY])
        history, w = history[keep], w[keep]
    scorer = release.scorers.get(kind)
    if not (history.size and n and isinstance(scorer, ItemCFScorer | ALSScorer)):
        reason = _reason(kind, answer, history.size > 0)
        return [[{"reason": reason}] for _ in range(n)]
    targets = _item_idxs(release, answer.item_ids)
    ordered = np.sort(history)
    repeated = bool((ordered[1:] == ordered[:-1]).any())  # the same movie given twice
    if isinstance(scorer, ItemCFScorer):
        if repeated:  # terms are linear in the weight: one term with the summed weight
            history, inverse = np.unique(history, return_inverse=True)
            w = np.bincount(inverse, weights=w)
        contributions = _itemcf(scorer, history, w, targets)
    else:
        contributions = _als(scorer, history, w, targets)
        if repeated:  # each occurrence is its own row of the fold-in: sum their terms
            history, inverse = np.unique(history, return_inverse=True)
            merged = np.zeros((n, history.size))
            np.add.at(merged.T, inverse, contributions.T)
            contributions = merged
    # The `limit` largest terms of every row at once, largest first, ties to the lower index.
    rows = np.arange(n)[:, None]
    if history.size > limit:
        picked = np.sort(np.argpartition(-contributions, limit - 1, axis=1)[:, :limit], axis=1)
    else:
        picked = np.broadcast_to(np.arange(history.size), (n, history.size))
    order = np.argsort(-contributions[rows, picked], axis=1, kind="stable")
    picked = picked[rows, order]
    values = np.round(contributions[rows, picked], 6).tolist()
    idxs = history[picked]
    movie_ids = release.vocab.item_ids[idxs].tolist()
    titles = release.titles
    filled = [{"reason": REASON_FILLED if answer.fallback else REASON_NONE}]
    out = []
    for row_ids, row_idxs, row_values in zip(movie_ids, idxs.tolist(), values, strict=True):
        because = [
            {"movie_id": m, "title": titles[i], "weight": v}
            for m, i, v in zip(row_ids, row_idxs, row_values, strict=True)
            if v > 0
        ]
        out.append(because or list(filled))
    return out


def _item_idxs(release: LoadedRelease, movie_ids: list[int]) -> np.ndarray:
    """Item index of each movie id, -1 for ids the release does not know (vectorised)."""
    ids = np.asarray(movie_ids, dtype=np.int64)
    known = release.vocab.item_ids
    if not known.size:
        return np.full(ids.size, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(known, ids), known.size - 1)
    return np.where(known[pos] == ids, pos, -1).astype(np.int64)


def _reason(kind: str, answer: Answer, has_history: bool) -> str:
    if kind == "popularity":
        return REASON_POPULAR
    if answer.fallback or not has_history:
        return REASON_FILLED
    if kind == "ncf":
        return REASON_NCF
    return REASON_NONE


def _columns(scorer: ItemCFScorer) -> sp.csc_matrix:
    """The similarity by column (who has item i as a neighbour), built once per scorer."""
    csc = scorer.__dict__.get("_explain_columns")
    if csc is None:
        csc = scorer.similarity.tocsc()
        csc.sort_indices()
        scorer.__dict__["_explain_columns"] = csc  # two first requests at once: built twice
    return csc


def _itemcf(
    scorer: ItemCFScorer, history: np.ndarray, w: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """(k, h): w_j * sim(j, i) for each answered item i and history item j.

    All k similarity columns are gathered at once and matched against the history through a
    position table, so the cost is a few numpy calls whatever k is.
    """
    csc = _columns(scorer)
    starts, ends = csc.indptr[targets], csc.indptr[targets + 1]
    lengths = ends - starts
    out = np.zeros((targets.size, history.size))
    if not lengths.sum():
        return out
    row_of = np.repeat(np.arange(targets.size), lengths)  # which answered item each entry is
    entries = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    entries += np.repeat(starts, lengths)  # positions in csc.indices / csc.data
    where = np.full(scorer.n_items, -1, dtype=np.int64)
    where[history] = np.arange(history.size)  # a repeated movie: its last position
    column = where[csc.indices[entries]]
    hit = column >= 0
    out[row_of[hit], column[hit]] = csc.data[entries[hit]] * w[column[hit]]
    return out


def _als(scorer: ALSScorer, history: np.ndarray, w: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(k, h): c_j * y_i^T A^-1 y_j, the fold-in score of item i split over history items j."""
    y = scorer.item_factors[history].astype(np.float64)  # (h, f)
    c = 1.0 + scorer.confidence * w
    a = scorer._gram + (y.T * (c - 1.0)) @ y + scorer.regularization * np.eye(y.shape[1])
    # A is symmetric, so y_i^T A^-1 y_j = (A^-1 y_i)^T y_j: solve for the k answered items,
    # not the (usually longer) history
    solved = np.linalg.solve(a, scorer.item_factors[targets].T.astype(np.float64))  # (f, k)
    return (solved.T @ y.T) * c
