"""The rating part of a release: tuned, measured and staged the way the ranking kinds are.

Same split as the ranking kinds (each user's last interaction is test, the one before it
validation): each candidate of `rating.GRID` is fit on train and scored by RMSE on validation;
the winner and the plain global mean + biases baseline (`rating.BASELINE`, no factors, no
recency weights) are refit on train+validation and measured on test (past `MEASURE_TUNED_FROM`
interactions their tuned fits are measured instead, as for the ranking kinds); the winner is refit
on all data and staged as the part `rating`. Skipped, with a log line, when the data carries no
explicit ratings.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import PublishRefused
from trainer.interactions import HOLDOUT_REFIT, HOLDOUT_TUNED, measures_tuned_fit
from trainer.models import rating
from trainer.models.data import Interactions

log = logging.getLogger("trainer")


def train_rating(
    data: Interactions, split: Any, seed: int, out: Path, measure_tuned: bool | None = None
) -> dict[str, Any] | None:
    """Stage the rating part under `out`; return its manifest block (None: no ratings).

    `measure_tuned`: test measures the tuned fits (None: decided from `data`'s size; a release
    passes the decision it made for its ranking kinds)."""
    if data.rating is None or split.train.rating is None or len(split.test) == 0:
        log.info("[rating] no explicit ratings in this data: no rating part")
        return None
    trials = []
    tuned = measures_tuned_fit(data) if measure_tuned is None else measure_tuned
    fits: dict[str, tuple[rating.RatingModel, float]] = {}  # params JSON -> (fit, seconds)
    for candidate in rating.GRID:
        params = rating.RatingParams(**candidate)
        start = time.perf_counter()
        model = rating.fit(split.train, params, np.random.default_rng(seed))
        seconds = time.perf_counter() - start
        valid = rating.errors(model, split.valid)
        trials.append({"params": params.model_dump(mode="json"), "valid_rmse": valid["rmse"]})
        log.info(
            "[rating] valid RMSE %.4f %s (%.1fs)", valid["rmse"], json.dumps(candidate), seconds
        )
        if tuned:
            fits[params.model_dump_json()] = (model, seconds)
    chosen = _best(trials)
    baseline = rating.RatingParams(**rating.BASELINE)
    # The tuned fits when kept (the baseline is a GRID candidate), else refits on train+valid;
    # the label says what was measured, both models alike.
    kept = [fits.get(p.model_dump_json()) for p in (chosen, baseline)]
    del fits
    if kept[0] is not None and kept[1] is not None:
        (model, train_seconds), (base_model, _) = kept
        holdout_fit = HOLDOUT_TUNED
    else:
        model, train_seconds = _timed_fit(split, chosen, seed)
        base_model, _ = _timed_fit(split, baseline, seed)
        holdout_fit = HOLDOUT_REFIT
    test = rating.errors(model, split.test)
    base = rating.errors(base_model, split.test)
    log.info(
        "[rating] test RMSE %.4f MAE %.4f (biases only: %.4f / %.4f)",
        test["rmse"],
        test["mae"],
        base["rmse"],
        base["mae"],
    )
    final = rating.fit(data, chosen, np.random.default_rng(seed))
    arrays = final.arrays()
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise PublishRefused("rating: artifact has non-finite values; not publishing")
    final.save(out)
    metrics = {
        "rmse": test["rmse"],
        "mae": test["mae"],
        "n": test["n"],
        "baseline_rmse": base["rmse"],
        "baseline_mae": base["mae"],
        "train_seconds": round(train_seconds, 2),
    }
    meta = {
        "kind": rating.PART,
        "params": chosen.model_dump(mode="json"),
        "baseline_params": baseline.model_dump(mode="json"),
        "metrics": metrics,
        "holdout_fit": holdout_fit,
        "trials": trials,
        "n_users": final.n_users,
        "n_items": final.n_items,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return {"params": meta["params"], "metrics": metrics, "holdout_fit": holdout_fit}


def _timed_fit(
    split: Any, params: rating.RatingParams, seed: int
) -> tuple[rating.RatingModel, float]:
    """The refit on train+validation that the test numbers measure, and its seconds."""
    start = time.perf_counter()
    model = rating.fit(split.train_valid, params, np.random.default_rng(seed))
    return model, time.perf_counter() - start


def _best(trials: list[dict[str, Any]]) -> rating.RatingParams:
    return rating.RatingParams(**min(trials, key=lambda t: t["valid_rmse"])["params"])
