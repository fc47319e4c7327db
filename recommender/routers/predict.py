"""GET /predict/{user_id}/{movie_id}: the active release's rating estimate for one pair.

The estimate comes from the release's `rating` part (trainer/models/rating.py). An unknown user or
movie is not an error: the answer falls back to the biases that are known and says so in
`estimate` ("full", "user_bias_only", "item_bias_only", "global_mean"). Ids follow /recommend's
rules (ASCII digits, 1..2^63-1, else 422 with {"error", "detail"}). A release without a rating
part (trained before it existed) answers 404 `unknown_model`.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from recommender.deps import ServiceDep
from recommender.errors import UnknownModel
from recommender.http import MAX_ID, JSONResponse, int_param

router = APIRouter()

_ID_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
_PARAMS = [
    {"name": name, "in": "path", "required": True, "schema": _ID_SCHEMA}
    for name in ("user_id", "movie_id")
]


@router.get("/predict/{user_id}/{movie_id}", openapi_extra={"parameters": _PARAMS})
async def predict(request: Request, service: ServiceDep) -> JSONResponse:
    started = time.perf_counter()
    user_id = int_param("user_id", request.path_params["user_id"], 1, MAX_ID)
    movie_id = int_param("movie_id", request.path_params["movie_id"], 1, MAX_ID)
    release = service.pool.current()  # one release for the whole answer
    model = release.rating
    if model is None:
        raise UnknownModel(f"release {release.version} has no rating model")
    rating, estimate = model.predict(
        release.user_index(user_id), release.vocab.item_index(movie_id)
    )
    request.state.labels = {
        "model": "rating",
        "version": release.version,
        "arm": "",
        "fallback": "" if estimate == "full" else estimate,
    }
    manifest = release.manifest
    return JSONResponse(
        {
            "user_id": user_id,
            "movie_id": movie_id,
            "rating": round(rating, 4),
            "estimate": estimate,
            "model_version": release.version,
            "provenance": {
                "request_id": getattr(request.state, "request_id", None),
                "timestamp": int(time.time() * 1000),
                "model_name": "rating",
                "model_version": release.version,
                "git_sha": manifest.get("git_sha"),
                "data_snapshot_id": manifest.get("data_snapshot_id"),
                "container_image_digest": manifest.get("image_digest"),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            },
        }
    )
