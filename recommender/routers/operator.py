"""Operator reads: one document with what a person running the fleet needs to see.

Read-only and public like /releases and /switch/history (no salt, no client addresses); the
page's operator view renders it and acts through the admin routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from model_registry.control import POINTER, ROLLOUT
from model_registry.errors import RegistryError
from recommender.deps import ServiceDep
from recommender.errors import ServiceError
from recommender.service import Service

router = APIRouter()
MANIFEST_KEYS = ("created_at", "git_sha", "data_snapshot_id", "image_digest", "gate", "drift")


def _release_summary(service: Service) -> list[dict[str, Any]]:
    active = service.pool.active.version if service.pool.active else None
    out = []
    for release in service.pool.loaded():
        manifest = release.manifest
        out.append(
            {
                "version": release.version,
                "active": release.version == active,
                "pinned": release.version in service.pool.pinned,
                "memory_bytes": release.nbytes(),
                **{k: manifest.get(k) for k in MANIFEST_KEYS},
                "metrics": {
                    kind: (info or {}).get("metrics")
                    for kind, info in (manifest.get("kinds") or {}).items()
                },
            }
        )
    return out


def _state(service: Service) -> dict[str, Any]:
    state: dict[str, Any] = {
        "replica": service.replica_id,
        "sync": service.follower.state(),
        "releases": _release_summary(service),
        "experiment": service.experiment.describe() if service.experiment else None,
    }
    try:
        state["history"] = service.history(POINTER, 20, None)["history"]
        state["rollout"] = service.history(ROLLOUT, 20, None)["history"]
        state["replicas"] = service.control.replicas()
        state["control_error"] = None
    except (RegistryError, ServiceError) as exc:  # the view renders with the store down too
        state.update(history=[], rollout=[], replicas=[], control_error=str(exc)[:300])
    return state


@router.get("/operator/state")
async def operator_state(service: ServiceDep) -> dict[str, Any]:
    """This replica's sync state, loaded releases with offline metrics, gate and drift, the
    experiment, the pointer's and the rollout's recent history, and every replica's report."""
    return await run_in_threadpool(_state, service)
