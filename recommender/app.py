"""FastAPI application: the routers, the lifespan (follow the control plane), JSON errors."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from recommender.errors import ServiceError
from recommender.http import JSONResponse, error_response, validation_detail
from recommender.routers import admin, catalogue, operator, predict, public, ui
from recommender.service import Service
from recommender.settings import ServiceSettings
from recommender.telemetry import RequestMiddleware

log = logging.getLogger("recommender")


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Never fatal: a broken release or an unreachable registry leaves the replica up,
        # answering /healthz, not ready, and its follower retrying.
        await run_in_threadpool(service.start)
        # Everything loaded so far lives as long as the process: keep it out of the collector's
        # full scans, which otherwise pause requests for tens of ms (the p99 under load).
        gc.freeze()
        yield
        await run_in_threadpool(service.stop)

    app = FastAPI(
        title="Marquee recommender",
        version="1",
        lifespan=lifespan,
        default_response_class=JSONResponse,
        # /healthz/ is a 404, not a redirect built from the client's Host header.
        redirect_slashes=False,
        # Metrics come from our own Prometheus instrumentation; FastAPI's OpenTelemetry hook
        # otherwise checks its providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.add_middleware(
        RequestMiddleware, telemetry=service.telemetry, max_body=settings.max_body_bytes
    )
    _error_handlers(app)
    # The routers' routes go straight onto the app's router: FastAPI 0.165 keeps an included
    # router as one more level that every request walks (matching, scope bookkeeping); py-spy
    # put it at about 3 % of a /healthz request under load (docs/benchmarks.md).
    for router in (public, admin, operator, catalogue, predict, ui):
        app.router.routes.extend(router.router.routes)
    return app


_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_detail(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")  # the trace goes to the log, never to the client
        return error_response(500, "internal_error", "unexpected error; see the service log")
