"""Admin routes: control-plane writes behind the bearer token.

Each route authenticates through `AdminDep` before its body is read (bodies are parsed by hand
after the dependency ran), so an anonymous caller learns nothing about the schema and costs no
parsing. Writes go through the same `model_registry.control` functions as the CLI.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from recommender.deps import ServiceDep
from recommender.errors import InvalidRequest
from recommender.http import MAX_ID, actor, body_schema, check_version, read_body


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(max_length=32)
    reason: str = Field(default="", max_length=500)
    expected_seq: int | None = Field(default=None, ge=0, le=MAX_ID)
    force: bool = False  # promote a release the gate refused (recorded as forced)


class WeightsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: dict[Annotated[str, Field(max_length=64)], Annotated[float, Field(ge=0, le=1e6)]] = (
        Field(min_length=1, max_length=32)
    )
    reason: str = Field(default="", max_length=500)
    expected_seq: int | None = Field(default=None, ge=0, le=MAX_ID)


def _admin(action: str):
    def check(
        request: Request,
        service: ServiceDep,
        authorization: Annotated[str | None, Header()] = None,
        x_actor: Annotated[str | None, Header()] = None,
    ) -> str:
        service.check_admin(authorization, action)
        return actor(x_actor)

    return Depends(check)


router = APIRouter()


@router.post("/switch", openapi_extra=body_schema(SwitchRequest))
async def switch(
    request: Request, service: ServiceDep, by: Annotated[str, _admin("switch")]
) -> dict[str, Any]:
    """Load and validate a release here, move the production pointer, serve it here at once;
    every other replica follows within REC_SYNC_SECONDS. 409 if the pointer moved since
    `expected_seq` (or while this call ran)."""
    body = await read_body(request, SwitchRequest)
    version = check_version(body.version)
    return await run_in_threadpool(
        service.switch, version, by, body.reason, body.expected_seq, body.force
    )


@router.get("/switch")
async def switch_legacy(
    service: ServiceDep,
    by: Annotated[str, _admin("switch")],
    model: Annotated[str, Query(max_length=32)],
) -> dict[str, Any]:
    """The older contract: GET /switch?model=v0.3. Same checks and record; the answer carries
    that contract's fields (status, model_version, previous_version) beside ours."""
    record = await run_in_threadpool(service.switch, check_version(model), by, "GET /switch")
    return {
        "status": "ok",
        "model_version": record["to"],
        "previous_version": record["from"],
        **record,
    }


@router.post("/releases/{version}")
async def load_release(
    version: str, service: ServiceDep, by: Annotated[str, _admin("load_release")]
) -> dict[str, Any]:
    """Load a release as a candidate on this replica (for vX.Y/kind requests and arms)."""
    release = await run_in_threadpool(service.load_candidate, check_version(version))
    return {"version": release.version, "memory_bytes": release.nbytes()}


@router.put("/experiment/weights", openapi_extra=body_schema(WeightsRequest))
async def set_weights(
    request: Request, service: ServiceDep, by: Annotated[str, _admin("weights")]
) -> dict[str, Any]:
    """New arm weights for the fleet (a control-plane record); survives restarts."""
    body = await read_body(request, WeightsRequest)
    if not all(math.isfinite(w) for w in body.weights.values()):
        raise InvalidRequest("weights must be finite")
    return await run_in_threadpool(
        service.set_weights, body.weights, by, body.reason, body.expected_seq
    )
