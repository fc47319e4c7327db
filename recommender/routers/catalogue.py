"""The catalogue of the active release: title search, movie look-up, a known user's history.

Search is a substring match over the release's titles, most popular first. The index (one
case-folded string of every title in popularity order, plus the offset where each title starts)
is built once per release, on first use, and kept on the release object: a query costs one
`str.find` pass at most, and stops as soon as `limit` titles matched.
"""

from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from recommender.deps import ServiceDep
from recommender.errors import InvalidRequest
from recommender.http import MAX_ID, int_param
from recommender.release import LoadedRelease

router = APIRouter(tags=["catalogue"])

MAX_QUERY = 100
MAX_IDS = 100
_YEAR = re.compile(r"\(([0-9]{4})\)\s*\Z")
_SEP = "\x00"  # between titles in the index; a query may not contain control characters
_BUILD = threading.Lock()


@dataclass(frozen=True)
class CatalogueIndex:
    text: str  # case-folded titles in popularity order, each followed by _SEP
    starts: list[int]  # offset of each title in `text`
    order: np.ndarray  # item_idx of each title, most popular first


def catalogue_index(release: LoadedRelease) -> CatalogueIndex:
    """The release's search index, built on first use and cached on the release itself."""
    index = release.__dict__.get("_catalogue_index")
    if index is None:
        with _BUILD:  # two first requests at once build it once
            index = release.__dict__.get("_catalogue_index")
            if index is None:
                index = _build(release)
                release.__dict__["_catalogue_index"] = index
    return index


def _build(release: LoadedRelease) -> CatalogueIndex:
    order = np.argsort(-release.popularity.global_scores(), kind="stable")
    starts, parts, offset = [], [], 0
    for idx in order.tolist():
        title = release.titles[idx].replace(_SEP, " ").casefold() + _SEP
        starts.append(offset)
        parts.append(title)
        offset += len(title)
    return CatalogueIndex("".join(parts), starts, order)


def search(release: LoadedRelease, query: str, limit: int) -> list[int]:
    """Item indices whose title contains `query` (case-insensitive), most popular first."""
    index = catalogue_index(release)
    needle = query.casefold()
    if not needle:
        return index.order[:limit].tolist()
    if _SEP in needle:  # it would match across two titles
        return []
    found: list[int] = []
    pos = index.text.find(needle)
    while pos >= 0 and len(found) < limit:
        title = bisect.bisect_right(index.starts, pos) - 1
        found.append(int(index.order[title]))
        nxt = index.starts[title + 1] if title + 1 < len(index.starts) else len(index.text)
        pos = index.text.find(needle, nxt)  # one hit per title
    return found


def movie(release: LoadedRelease, item_idx: int) -> dict[str, Any]:
    title = release.titles[item_idx]
    year = _YEAR.search(title)
    genres = release.genres[item_idx] if item_idx < len(release.genres) else ""
    return {
        "movie_id": int(release.vocab.item_ids[item_idx]),
        "title": title,
        "year": int(year.group(1)) if year else None,
        "genres": [g for g in genres.split("|") if g],
    }


def _query_param(raw: str) -> str:
    query = raw.strip()
    if len(query) > MAX_QUERY:
        raise InvalidRequest(f"q: at most {MAX_QUERY} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in query):
        raise InvalidRequest("q: control characters are not allowed")
    return query


def _ids_param(raw: str) -> list[int]:
    parts = raw.split(",")
    if len(parts) > MAX_IDS:
        raise InvalidRequest(f"ids: at most {MAX_IDS} movie ids")
    return [int_param("ids", p, 1, MAX_ID) for p in parts]


_LIMIT = {"type": "integer", "minimum": 1, "maximum": 50}
_MOVIES_PARAMS = [
    {
        "name": "q",
        "in": "query",
        "required": False,
        "description": "part of a title, case-insensitive; empty: the most popular movies",
        "schema": {"type": "string", "maxLength": MAX_QUERY, "default": ""},
    },
    {
        "name": "ids",
        "in": "query",
        "required": False,
        "description": "comma-separated movie ids to look up instead of searching (at most 100)",
        "schema": {"type": "string", "pattern": "^[0-9]{1,19}(,[0-9]{1,19}){0,99}$"},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {**_LIMIT, "default": 10},
    },
]
_HISTORY_PARAMS = [
    {
        "name": "user_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
    },
    {"name": "limit", "in": "query", "required": False, "schema": {**_LIMIT, "default": 20}},
]


@router.get("/movies", openapi_extra={"parameters": _MOVIES_PARAMS})
async def movies(request: Request, service: ServiceDep) -> dict[str, Any]:
    """Search the active release's catalogue by title, or look movies up by id."""
    params = request.query_params
    limit = int_param("limit", params.get("limit", "10"), 1, 50)
    query = _query_param(params.get("q", ""))
    release = service.pool.current()
    if "ids" in params:
        idxs = [release.vocab.item_index(m) for m in _ids_param(params["ids"])]
        found = [i for i in idxs if i >= 0][:MAX_IDS]
    else:
        found = search(release, query, limit)
    return {"version": release.version, "movies": [movie(release, i) for i in found]}


@router.get("/users/{user_id}/history", openapi_extra={"parameters": _HISTORY_PARAMS})
async def user_history(request: Request, service: ServiceDep) -> dict[str, Any]:
    """A known user's movies in the active release, and the A/B arm they are routed to.

    The release keeps no timestamps; when its itemcf model weights history by recency, those
    weights give the order (most recent first), otherwise the order is by movie id.
    """
    user_id = int_param("user_id", request.path_params["user_id"], 1, MAX_ID)
    limit = int_param("limit", request.query_params.get("limit", "20"), 1, 50)
    release = service.pool.current()
    experiment = getattr(service, "experiment", None)
    arm = experiment.assign(user_id) if experiment is not None else None
    user_idx = release.user_index(user_id)
    items, order = release.seen(user_idx), "movie_id"
    itemcf = release.scorers.get("itemcf")
    history = getattr(itemcf, "history", None)
    if user_idx >= 0 and history is not None:
        row = history[user_idx]
        if row.nnz and np.ptp(row.data) > 0:
            items = row.indices[np.argsort(-row.data, kind="stable")]
            order = "recent_first"
    return {
        "user_id": user_id,
        "version": release.version,
        "known": user_idx >= 0,
        "arm": None if arm is None else {"name": arm.name, "model": arm.model},
        "order": order,
        "total": int(items.size),
        "movies": [movie(release, int(i)) for i in items[:limit]],
    }
