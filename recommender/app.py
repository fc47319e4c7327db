"""FastAPI application: /recommend, /healthz, /readyz, with JSON errors and provenance."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_registry.registry import Registry
from recommender.errors import NotReady, ServiceError
from recommender.recommend import recommend
from recommender.release import LoadedRelease, load_release
from recommender.settings import ServiceSettings

log = logging.getLogger("recommender")

MAX_USER_ID = 2**63 - 1
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


class State:
    """What the app serves: the active release (one reference, swapped whole)."""

    def __init__(self, settings: ServiceSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.release: LoadedRelease | None = None
        self.started = time.time()

    def active(self) -> LoadedRelease:
        if self.release is None:
            raise NotReady("no release is loaded yet")
        return self.release

    def load(self, version: str | None = None) -> LoadedRelease:
        version = version or self.registry.latest()
        if version is None:
            raise NotReady(f"the registry {self.registry.uri} has no complete release")
        cache = Path(self.settings.cache_dir) if self.settings.cache_dir else None
        release = load_release(self.registry, version, cache)
        self.release = release
        log.info("serving release %s", version)
        return release


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    state = State(settings, Registry.open(settings.registry))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            state.load(settings.version)
        except ServiceError as exc:  # keep running: /readyz says 503 until a release is there
            log.error("no release loaded at start: %s", exc.detail)
        yield

    app = FastAPI(
        title="Marquee recommender", lifespan=lifespan, default_response_class=JSONResponse
    )
    app.state.marquee = state

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
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the trace goes to the log, never to the client
        return _error(500, "internal_error", "unexpected error; see the service log")

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        release = state.release
        return {
            "status": "ok",
            "version": release.version if release else None,
            "uptime_s": round(time.time() - state.started, 1),
        }

    @app.get("/readyz")
    async def readyz() -> dict[str, Any]:
        release = state.active()
        return {"status": "ready", "version": release.version, "models": sorted(release.scorers)}

    @app.get("/recommend/{user_id}")
    async def recommend_endpoint(
        request: Request,
        user_id: int,
        k: Annotated[int, Query(ge=1, le=100)] = 10,
        model: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        started = time.perf_counter()
        if not 1 <= user_id <= MAX_USER_ID:
            return _error(422, "invalid_request", f"user_id must be between 1 and {MAX_USER_ID}")
        release = state.active()  # one read: the whole answer comes from one release
        kind = model or settings.default_model
        answer = recommend(release, user_id, k, kind)
        manifest = release.manifest
        rid = request.headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        body = {
            "user_id": user_id,
            "model": answer.kind,
            "version": release.version,
            "arm": None,
            "fallback": answer.fallback,
            "items": answer.item_ids,
            "recommendations": [
                {"movie_id": i, "title": t, "score": s}
                for i, t, s in zip(answer.item_ids, answer.titles, answer.scores, strict=True)
            ],
            "provenance": {
                "request_id": rid,
                "timestamp": int(time.time() * 1000),
                "model_name": answer.kind,
                "model_version": release.version,
                "git_sha": manifest.get("git_sha"),
                "data_snapshot_id": manifest.get("data_snapshot_id"),
                "container_image_digest": manifest.get("image_digest"),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        }
        return JSONResponse(body, headers={"X-Request-ID": rid})

    return app
