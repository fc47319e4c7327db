"""Public routes: recommendations, health, the active release, experiment and history reads."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from model_registry.control import POINTER
from recommender.deps import ServiceDep
from recommender.errors import InvalidRequest
from recommender.http import MAX_ID, JSONResponse, int_param, query_params
from recommender.recommend import Answer, recommend, recommend_for_history
from recommender.release import LoadedRelease
from recommender.service import Service

router = APIRouter()
PROBE_HEADER = b"x-marquee-probe"  # synthetic traffic: served, never counted in arms or KPIs
HISTORY_MAX = 100  # history pages are bounded: each record is one read


class HistoryRequest(BaseModel):
    """An anonymous user's recent movies (oldest first), optionally with their ratings."""

    model_config = ConfigDict(extra="forbid")

    movie_ids: list[Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]] = Field(
        min_length=1, max_length=500
    )
    ratings: list[Annotated[float, Field(ge=0.5, le=5.0)]] | None = Field(
        default=None, max_length=500
    )
    k: int = Field(default=10, ge=1, le=100, strict=True)
    model: str | None = Field(default=None, max_length=64)
    explain: bool = False


def is_probe(request: Request) -> bool:
    for name, value in request.scope["headers"]:
        if name == PROBE_HEADER:
            return value.strip() in (b"1", b"true")
    return False


def answer_body(
    request: Request,
    service: Service,
    release: LoadedRelease,
    answer: Answer,
    user_id: int | None,
    arm: str | None,
    started: float,
    probe: bool = False,
) -> dict[str, Any]:
    manifest = release.manifest
    request.state.labels = {
        "model": answer.kind,
        "version": release.version,
        "arm": "probe" if probe else (arm or ""),
        "fallback": answer.fallback or "",
    }
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    body = {
        "user_id": user_id,
        "model": answer.kind,
        "version": release.version,
        "arm": arm,
        "fallback": answer.fallback,
        "items": answer.item_ids,
        "recommendations": [
            {"movie_id": i, "title": t, "score": s}
            for i, t, s in zip(answer.item_ids, answer.titles, answer.scores, strict=True)
        ],
        "provenance": {
            "request_id": request.state.request_id,
            "timestamp": int(time.time() * 1000),
            "model_name": answer.kind,
            "model_version": release.version,
            "git_sha": manifest.get("git_sha"),
            "data_snapshot_id": manifest.get("data_snapshot_id"),
            "container_image_digest": manifest.get("image_digest"),
            "latency_ms": latency_ms,
        },
    }
    if service.publisher is not None:
        record = {
            "user_id": user_id,
            "items": answer.item_ids,
            "model": answer.kind,
            "version": release.version,
            "arm": arm,
            "fallback": answer.fallback,
            "latency_ms": latency_ms,
            "request_id": request.state.request_id,
            "ts": body["provenance"]["timestamp"],
        }
        if probe:
            record["probe"] = True
        service.publisher.publish(record)
    return body


_RECOMMEND_PARAMS = [
    {
        "name": "user_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "description": "ASCII digits only",
    },
    {
        "name": "k",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
    },
    {
        "name": "model",
        "in": "query",
        "required": False,
        "description": "a kind (popularity, itemcf, als, ncf) or vX.Y/kind; default: A/B arm",
        "schema": {"type": "string", "maxLength": 64},
    },
    {
        "name": "explain",
        "in": "query",
        "required": False,
        "description": "add `because` to each item: the history items that contributed most",
        "schema": {"type": "boolean", "default": False},
    },
]


def _flag(name: str, raw: str | None) -> bool:
    if raw is None or raw in ("false", "0"):
        return False
    if raw in ("true", "1"):
        return True
    raise InvalidRequest(f"{name}: must be true or false, got {raw[:20]!r}")


# The hottest route parses its parameters by hand: FastAPI's per-parameter validation cost
# ~40 us a request here, a fifth of the whole /healthz floor. Same rules, same errors, and the
# schema above documents them for clients and schemathesis.
@router.get("/recommend/{user_id}", openapi_extra={"parameters": _RECOMMEND_PARAMS})
async def recommend_user(request: Request) -> JSONResponse:
    started = time.perf_counter()
    service: Service = request.app.state.service  # not a dependency: ~60 us less per request
    query = query_params(request.scope["query_string"])
    user_id = int_param("user_id", request.path_params["user_id"], 1, MAX_ID)
    k = int_param("k", query.get("k", "10"), 1, 100)
    model = query.get("model")
    if model is not None and len(model) > 64:
        raise InvalidRequest("model: at most 64 characters")
    explain = _flag("explain", query.get("explain"))
    probe = is_probe(request)
    release, kind, arm = service.route(user_id, model, probe)  # one release for the answer
    answer = recommend(release, user_id, k, kind)
    body = answer_body(
        request, service, release, answer, user_id, arm.name if arm else None, started, probe
    )
    if explain:
        from recommender.explain import explain_for_user

        for item, because in zip(
            body["recommendations"], explain_for_user(release, kind, user_id, answer), strict=True
        ):
            item["because"] = because
    return JSONResponse(body)


@router.post("/recommend")
async def recommend_history(
    request: Request, body: HistoryRequest, service: ServiceDep
) -> JSONResponse:
    started = time.perf_counter()
    if body.ratings is not None and len(body.ratings) != len(body.movie_ids):
        raise InvalidRequest("ratings must have one value per movie id")
    weights = [r / 5.0 for r in body.ratings] if body.ratings else [1.0] * len(body.movie_ids)
    probe = is_probe(request)
    release, kind, _ = service.route(None, body.model, probe)
    answer = recommend_for_history(release, body.movie_ids, weights, body.k, kind)
    out = answer_body(request, service, release, answer, None, None, started, probe)
    out["ignored_movie_ids"] = answer.ignored
    if body.explain:
        from recommender.explain import explain_for_history

        for item, because in zip(
            out["recommendations"],
            explain_for_history(release, kind, body.movie_ids, weights, answer),
            strict=True,
        ):
            item["because"] = because
    return JSONResponse(out)


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    """Alive (the process answers); `version` is what it serves, null before the first load."""
    release = request.app.state.service.pool.active  # the load balancer's hot path: no Depends
    return {"status": "ok", "version": release.version if release else None}


@router.get("/readyz")
async def readyz(service: ServiceDep) -> dict[str, Any]:
    """Ready when a release is loaded. A replica that cannot follow the control plane still
    serves (ready) and says so: `in_sync` false and the reason."""
    release = service.pool.current()
    sync = service.follower.state()
    return {
        "status": "ready",
        "version": release.version,
        "models": sorted(release.scorers),
        "in_sync": sync["in_sync"],
        "reason": sync["reason"],
        "pointer": sync["pointer"],
        "pointer_seq": sync["pointer_seq"],
    }


@router.get("/version")
async def version(service: ServiceDep) -> dict[str, Any]:
    return service.pool.current().manifest


@router.get("/releases")
async def releases(service: ServiceDep) -> dict[str, Any]:
    active = service.pool.active.version if service.pool.active else None
    return {
        "active": active,
        "max_loaded": service.pool.max_loaded,
        "loaded": [
            {
                "version": r.version,
                "active": r.version == active,
                "memory_bytes": r.nbytes(),
                "models": sorted(r.scorers),
                "pinned": r.version in service.pool.pinned,
            }
            for r in service.pool.loaded()
        ],
    }


@router.get("/experiment")
async def experiment(
    service: ServiceDep, authorization: Annotated[str | None, Header()] = None
) -> dict[str, Any]:
    """The experiment this replica routes by; the salt only for an authenticated admin."""
    current = service.experiment
    if current is None:
        return {"configured": False, "default_model": service.settings.default_model}
    history = await run_in_threadpool(service.history, "experiment", 20, None)
    return {
        "configured": True,
        **current.describe(show_salt=service.is_admin(authorization)),
        "history": history["history"],
    }


@router.get("/switch/history")
async def switch_history(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=HISTORY_MAX)] = 20,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
) -> dict[str, Any]:
    """The production pointer's history, newest first; pass `next_before` back to page."""
    return await run_in_threadpool(service.history, POINTER, limit, before)


@router.get("/metrics")
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
