"""Operator reads: one document with what a person running the fleet needs to see.

Read-only and public like /releases and /switch/history (no salt, no client addresses); the
page's operator view renders it and acts through the admin routes.
"""

from __future__ import annotations

import math
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
RATING_KEYS = ("rmse", "mae", "n", "baseline_rmse", "baseline_mae")
GROUPINGS = ("gender", "age_band", "occupation", "activity")  # listed first, in this order
MAX_GROUPINGS = 8  # per kind: the trainer writes four (gender, age_band, occupation, activity)
MAX_NAME = 60  # characters of a grouping's or group's name
MIN_GROUP_USERS = 50  # trainer/fairness.py's default, for manifests that do not say


def _num(value: Any) -> float | None:
    """A finite number from a manifest, else None (manifests are data: anything may be there)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def _group(name: str, group: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name[:MAX_NAME],
        "users": group["users"],
        "ndcg@10": group["ndcg@10"],
        "hr@10": _num(group.get("hr@10")),
    }


def _fairness_summary(grouping: Any) -> dict[str, Any] | None:
    """One grouping of `kinds.<kind>.fairness` in a few fields: how many groups, the max/min
    ratios the trainer computed, and the best and worst group by NDCG@10 among those it ratios
    (at least `min_users` users; None when fewer than two qualify). Never the group list."""
    if not isinstance(grouping, dict):
        return None
    groups = grouping.get("groups")
    groups = groups if isinstance(groups, dict) else {}
    min_users = _num(grouping.get("min_users"))
    floor = MIN_GROUP_USERS if min_users is None else min_users
    ratioed = sorted(
        (
            (str(name), g)
            for name, g in groups.items()
            if isinstance(g, dict)
            and _num(g.get("users")) is not None
            and g["users"] >= floor
            and _num(g.get("ndcg@10")) is not None
        ),
        key=lambda ng: ng[0],
    )
    best = worst = None
    if len(ratioed) >= 2:
        best = _group(*max(ratioed, key=lambda ng: ng[1]["ndcg@10"]))
        worst = _group(*min(ratioed, key=lambda ng: ng[1]["ndcg@10"]))
    return {
        "groups": len(groups),
        "ratioed": len(ratioed),
        "min_users": min_users,
        "ndcg@10_max_min": _num(grouping.get("ndcg@10_max_min")),
        "hr@10_max_min": _num(grouping.get("hr@10_max_min")),
        "best": best,
        "worst": worst,
    }


def _fairness(info: dict[str, Any]) -> dict[str, Any] | None:
    fairness = info.get("fairness")
    if not isinstance(fairness, dict) or not fairness:
        return None
    # the trainer's groupings in its order, then any other (manifests store keys sorted)
    names = sorted(fairness, key=lambda n: (GROUPINGS.index(n) if n in GROUPINGS else 99, n))
    kept = names[:MAX_GROUPINGS]
    return {str(name)[:MAX_NAME]: _fairness_summary(fairness[name]) for name in kept}


def _rating(manifest: dict[str, Any]) -> dict[str, float | None] | None:
    """The rating part's test RMSE/MAE and its global mean + biases baseline (None: no part)."""
    block = manifest.get("rating")
    metrics = block.get("metrics") if isinstance(block, dict) else None
    if not isinstance(metrics, dict):
        return None
    return {key: _num(metrics.get(key)) for key in RATING_KEYS}


def _release_summary(service: Service) -> list[dict[str, Any]]:
    active = service.pool.active.version if service.pool.active else None
    out = []
    for release in service.pool.loaded():
        manifest = release.manifest
        kinds = {
            kind: info if isinstance(info, dict) else {}
            for kind, info in (manifest.get("kinds") or {}).items()
        }
        out.append(
            {
                "version": release.version,
                "active": release.version == active,
                "pinned": release.version in service.pool.pinned,
                "memory_bytes": release.nbytes(),
                **{k: manifest.get(k) for k in MANIFEST_KEYS},
                # per kind: the test metrics (quality and popularity bias: coverage, gini,
                # long_tail, novelty @10) and the per-grouping fairness summary
                "metrics": {kind: info.get("metrics") for kind, info in kinds.items()},
                "fairness": {kind: _fairness(info) for kind, info in kinds.items()},
                "rating": _rating(manifest),
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
    """This replica's sync state, loaded releases with offline metrics (quality, popularity
    bias, a fairness summary per grouping, rating RMSE/MAE), gate and drift, the experiment,
    the pointer's and the rollout's recent history, and every replica's report."""
    return await run_in_threadpool(_state, service)
