"""FastAPI application: recommendations, A/B routing, hot swap, health, metrics, JSON errors."""

from __future__ import annotations

import gc
import logging
import math
import re
import time
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_registry.registry import VERSION_RE
from recommender.errors import InvalidRequest, ServiceError
from recommender.recommend import Answer, recommend, recommend_for_history
from recommender.release import LoadedRelease
from recommender.service import Service
from recommender.settings import ServiceSettings
from recommender.telemetry import RequestMiddleware

log = logging.getLogger("recommender")

MAX_ID = 2**63 - 1
_ACTOR = re.compile(r"^[A-Za-z0-9@._:-]{1,64}$")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


class HistoryRequest(BaseModel):
    """An anonymous user's recent movies (oldest first), optionally with their ratings."""

    model_config = ConfigDict(extra="forbid")

    movie_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(min_length=1, max_length=500)
    ratings: list[Annotated[float, Field(ge=0.5, le=5.0)]] | None = Field(
        default=None, max_length=500
    )
    k: int = Field(default=10, ge=1, le=100)
    model: str | None = Field(default=None, max_length=64)


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=32)
    reason: str = Field(default="", max_length=500)


class WeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0, le=1e6)]] = (
        Field(min_length=1, max_length=32)
    )
    reason: str = Field(default="", max_length=500)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await run_in_threadpool(service.start)
        except ServiceError as exc:  # keep running: /readyz answers 503 until a release loads
            log.error("no release loaded at start: %s", exc.detail)
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # full scans, which otherwise pause requests for tens of ms (the p99 under load).
        gc.freeze()
        yield
        service.stop()

    app = FastAPI(
        title="Marquee recommender",
        version="1",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # Metrics come from our own Prometheus instrumentation; FastAPI's OpenTelemetry hook
        # otherwise checks its providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.add_middleware(
        RequestMiddleware, telemetry=service.telemetry, max_body=settings.max_body_bytes
    )
    _error_handlers(app)
    _public_routes(app, service)
    _admin_routes(app, service)
    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in exc.errors()
        )
        return _error(422, "invalid_request", problems[:500])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the trace goes to the log, never to the client
        return _error(500, "internal_error", "unexpected error; see the service log")


def _answer_body(
    request: Request,
    service: Service,
    release: LoadedRelease,
    answer: Answer,
    user_id: int | None,
    arm: str | None,
    started: float,
) -> dict[str, Any]:
    manifest = release.manifest
    request.state.labels = {
        "model": answer.kind,
        "version": release.version,
        "arm": arm or "",
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
        service.publisher.publish(
            {
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
        )
    return body


_INT = re.compile(r"^-?\d{1,25}$")
_RECOMMEND_PARAMS = [
    {
        "name": "user_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
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
]


def _query(raw: bytes) -> dict[str, str]:
    """Query parameters, last value wins; plain ASCII needs no unquoting (the common case)."""
    text = raw.decode("latin-1")
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    return dict(pair.partition("=")[::2] for pair in text.split("&") if pair)


def _int_param(name: str, raw: str, low: int, high: int) -> int:
    if not _INT.match(raw) or not low <= int(raw) <= high:
        raise InvalidRequest(f"{name}: must be an integer from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def _public_routes(app: FastAPI, service: Service) -> None:
    # The hottest route parses its three parameters by hand: FastAPI's per-parameter validation
    # cost ~40 us a request here, a fifth of the whole /healthz floor. Same rules, same errors,
    # and the schema below documents them for clients and schemathesis.
    @app.get("/recommend/{user_id}", openapi_extra={"parameters": _RECOMMEND_PARAMS})
    async def recommend_user(request: Request) -> JSONResponse:
        started = time.perf_counter()
        query = _query(request.scope["query_string"])
        user_id = _int_param("user_id", request.path_params["user_id"], 1, MAX_ID)
        k = _int_param("k", query.get("k", "10"), 1, 100)
        model = query.get("model")
        if model is not None and len(model) > 64:
            raise InvalidRequest("model: at most 64 characters")
        release, kind, arm = service.route(user_id, model)  # one release for the whole answer
        answer = recommend(release, user_id, k, kind)
        arm_name = arm.name if arm else None
        return JSONResponse(
            _answer_body(request, service, release, answer, user_id, arm_name, started)
        )

    @app.post("/recommend")
    async def recommend_history(request: Request, body: HistoryRequest) -> JSONResponse:
        started = time.perf_counter()
        if body.ratings is not None and len(body.ratings) != len(body.movie_ids):
            raise InvalidRequest("ratings must have one value per movie id")
        weights = [r / 5.0 for r in body.ratings] if body.ratings else [1.0] * len(body.movie_ids)
        release, kind, _ = service.route(None, body.model)
        answer = recommend_for_history(release, body.movie_ids, weights, body.k, kind)
        out = _answer_body(request, service, release, answer, None, None, started)
        out["ignored_movie_ids"] = answer.ignored
        return JSONResponse(out)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        release = service.pool.active
        return {"status": "ok", "version": release.version if release else None}

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        release = service.pool.current()
        return {"status": "ready", "version": release.version, "models": sorted(release.scorers)}

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return service.pool.current().manifest

    @app.get("/releases")
    async def releases() -> dict[str, Any]:
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

    @app.get("/experiment")
    async def experiment() -> dict[str, Any]:
        if service.experiment is None:
            return {"configured": False, "default_model": service.settings.default_model}
        return {
            "configured": True,
            **service.experiment.describe(),
            "history": service.registry.audit("experiment", limit=20),
        }

    @app.get("/switch/history")
    async def switch_history(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        return {"history": await run_in_threadpool(service.registry.audit, "switches", limit)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.telemetry.registry), media_type=CONTENT_TYPE_LATEST)


def _actor(x_actor: str | None, request: Request) -> str:
    who = x_actor if x_actor and _ACTOR.match(x_actor) else "admin"
    host = request.client.host if request.client else "unknown"
    return f"{who}@{host}"


def _check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise InvalidRequest(f"version must look like v0.3, got {version[:40]!r}")
    return version


def _admin_routes(app: FastAPI, service: Service) -> None:
    @app.post("/switch")
    async def switch(
        request: Request,
        body: SwitchRequest,
        authorization: Annotated[str | None, Header()] = None,
        x_actor: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        service.check_admin(authorization)
        version = _check_version(body.version)
        return await run_in_threadpool(
            service.switch, version, _actor(x_actor, request), body.reason
        )

    @app.get("/switch")
    async def switch_legacy(
        request: Request,
        model: Annotated[str, Query(max_length=32)],
        authorization: Annotated[str | None, Header()] = None,
        x_actor: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """The older contract: GET /switch?model=v0.3 (same checks, same audit)."""
        service.check_admin(authorization)
        version = _check_version(model)
        return await run_in_threadpool(
            service.switch, version, _actor(x_actor, request), "GET /switch"
        )

    @app.post("/releases/{version}")
    async def load_release(
        version: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        service.check_admin(authorization)
        release = await run_in_threadpool(service.load_candidate, _check_version(version))
        return {"version": release.version, "memory_bytes": release.nbytes()}

    @app.put("/experiment/weights")
    async def set_weights(
        request: Request,
        body: WeightsRequest,
        authorization: Annotated[str | None, Header()] = None,
        x_actor: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        service.check_admin(authorization)
        if not all(math.isfinite(w) for w in body.weights.values()):
            raise InvalidRequest("weights must be finite")
        return await run_in_threadpool(
            service.set_weights, body.weights, _actor(x_actor, request), body.reason
        )
