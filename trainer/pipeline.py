"""Dataset -> tuned, evaluated, published release of every requested model kind.

For each kind: fit every candidate of its grid on train and score it on validation (early-stopping
kinds stop on that validation set); refit the winner on train+validation and measure it on test
(the numbers reported and stored); refit once more on all data and publish that model. Past
`MEASURE_TUNED_FROM` interactions the middle refit is skipped and the winning tuned fit is measured
(`holdout_fit` "train" in the report and manifest; one interaction fewer per user than a refit).

Watch events (snapshots), when the data has them, join the training side of each fit with a
weight chosen first on validation (`choose_watch_weight`, docs/retrain.md "Watch events"); the
split, and so every number measured, stays on ratings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from model_registry.registry import Registry
from trainer.data import Dataset
from trainer.drift import data_block
from trainer.errors import PublishRefused, TrainerError
from trainer.evaluate import Metrics, bias_table, evaluate, latency_ms
from trainer.interactions import (
    HOLDOUT_REFIT,
    HOLDOUT_TUNED,
    MEASURE_TUNED_FROM,
    FitSets,
    Interactions,
    Split,
    Vocab,
    build_vocab,
    fit_sets,
    leave_last_out,
    measures_tuned_fit,
    watch_interactions,
)
from trainer.models import MODELS, release_format
from trainer.models.popularity import PopularityParams
from trainer.models.popularity import fit as fit_popularity
from trainer.rating_eval import train_rating

log = logging.getLogger("trainer")

_LIBRARIES = {"als": ("implicit",), "ncf": ("torch",)}
_LATENCY_USERS = 200
# Tuning scores each candidate on at most this many validation users (a seeded sample): at 10M
# interactions scoring all 71k users took half of each trial, and 10k users put the standard
# error of NDCG@10 near 0.002, below the gaps between candidates. Test numbers use every user.
TUNING_USERS = 10_000
# Candidate weights of a watch relative to a rating, and the kinds that choose among them
# (the cheapest personalised kind being trained; none of them: watches unused).
WATCH_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
_WATCH_TUNERS = ("als", "itemcf")


@dataclass
class KindResult:
    kind: str
    params: dict[str, Any]
    metrics: dict[str, float | int]
    trials: list[dict[str, Any]] = field(default_factory=list)
    # The fit the test metrics measure (on train+validation, or past MEASURE_TUNED_FROM the
    # tuned fit on train: `holdout_fit`); the gate scores it too.
    holdout_scorer: Any = field(default=None, repr=False, compare=False)
    # HR/NDCG per user group on the test split (trainer/fairness.py), per grouping
    fairness: dict[str, Any] = field(default_factory=dict)
    # what the measured fit trained on: "train+valid" (a refit), or "train" (the tuned fit itself,
    # on data past MEASURE_TUNED_FROM interactions)
    holdout_fit: str = HOLDOUT_REFIT

    def row(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.metrics}


@dataclass
class Report:
    version: str
    registry: str
    dataset: dict[str, Any]
    results: list[KindResult]
    rating: dict[str, Any] | None = None  # the rating part's params and RMSE/MAE
    watch_signal: dict[str, Any] | None = None  # the chosen watch weight (None: no watches)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "registry": self.registry,
            "dataset": self.dataset,
            "protocol": PROTOCOL,
            "kinds": {
                r.kind: {
                    "params": r.params,
                    "metrics": r.metrics,
                    "trials": r.trials,
                    "fairness": r.fairness,
                    "holdout_fit": r.holdout_fit,
                }
                for r in self.results
            },
            "rating": self.rating,
            "watch_signal": self.watch_signal,
        }

    def table(self) -> str:
        head = (
            f"{'kind':<11}{'HR@10':>8}{'NDCG@10':>9}{'cov@10':>8} |{'sHR@10':>8}{'sNDCG@10':>9}"
            f" |{'train s':>8}{'MB':>7}{'p50 ms':>8}{'p95 ms':>8}"
        )
        lines = [head, "-" * len(head)]
        for r in self.results:
            m = r.metrics
            lines.append(
                f"{r.kind:<11}{m['hr@10']:>8.4f}{m['ndcg@10']:>9.4f}{m['coverage@10']:>8.3f} |"
                f"{m['sampled_hr@10']:>8.4f}{m['sampled_ndcg@10']:>9.4f} |"
                f"{m['train_seconds']:>8.1f}{m['artifact_mb']:>7.2f}{m['p50_ms']:>8.3f}{m['p95_ms']:>8.3f}"
            )
        lines.append(
            "HR/NDCG/cov: full ranking of all unseen items, leave-last-out test, ties "
            "pessimistic. sHR/sNDCG: NCF paper's sampled protocol (1 + 99 negatives)."
        )
        lines += ["", *bias_table(self.results)]
        if self.watch_signal is not None:
            w = self.watch_signal
            trials = ", ".join(f"{k}: {v:.4f}" for k, v in w["trials"].items())
            lines.append(
                f"watches: {w['watch_pairs']} pairs, weight {w['weight']:g}"
                + (f" (valid NDCG@10 by {w['kind']}: {trials})" if w["kind"] else "")
            )
        if self.rating is not None:
            m = self.rating["metrics"]
            lines.append(
                f"rating: test RMSE {m['rmse']:.4f} MAE {m['mae']:.4f} "
                f"(global mean + biases: {m['baseline_rmse']:.4f} / {m['baseline_mae']:.4f})"
            )
        return "\n".join(lines)


@dataclass
class Trained:
    """What `extend` gets: the data, its split and each kind's result (holdout scorer too)."""

    dataset: Dataset
    vocab: Vocab
    split: Any
    results: list[KindResult]
    # what each fit trained on; `sets.holdout` is what the holdout scorers must not rank again
    sets: FitSets | None = None

    @property
    def holdout_seen(self) -> Interactions:
        return self.split.train_valid if self.sets is None else self.sets.holdout


PROTOCOL = (
    "leave-last-out by (timestamp, item_id); last=test, second-to-last=validation; "
    "tuned on validation, refit on train+validation, measured on test (past "
    f"{MEASURE_TUNED_FROM:,} interactions the tuned fit itself: holdout_fit 'train'); "
    "full ranking of all unseen items, top 10, ties pessimistic; "
    "sampled = test item + 99 seeded unseen items"
)


def git_sha() -> str:
    if os.environ.get("GIT_SHA"):
        return os.environ["GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else "unknown"


def _versions(kind: str) -> dict[str, str]:
    names = ("numpy", "scipy", *_LIBRARIES.get(kind, ()))
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _fallback(data: Interactions) -> np.ndarray:
    """The ranking unknown users get: plain popularity of `data`, as the service serves it."""
    return fit_popularity(data, PopularityParams(), np.random.default_rng(0)).global_scores()


def train_release(
    dataset: Dataset,
    registry: Registry,
    kinds: list[str],
    seed: int = 0,
    snapshot_id: str | None = None,
    extend: Callable[[Trained], dict[str, Any]] | None = None,
    publish: bool = True,
) -> Report:
    """Train, evaluate and publish. `extend` sees the trained kinds before publishing and
    returns manifest blocks to add (the retrain's `gate` and `drift`); `publish=False` stops
    before the registry (a dry run: the report's version is "unpublished")."""
    unknown = [k for k in kinds if k not in MODELS]
    if unknown:
        raise TrainerError(f"unknown model kind(s) {unknown}; choose from {sorted(MODELS)}")
    if "popularity" not in kinds:
        kinds = ["popularity", *kinds]  # the service's fallback for unknown users
        log.info("adding popularity: every release carries it as the fallback for unknown users")
    watch_signal = None
    if dataset.watches is not None:
        watch_signal = choose_watch_weight(dataset, kinds, seed)
    weight = watch_signal["weight"] if watch_signal else 0.0
    # w = 0: the watches are not used at all (no watch-only users or items either)
    watches = dataset.watches if weight > 0 else None
    vocab = build_vocab(dataset.ratings, *([] if watches is None else [watches]))
    data = Interactions.from_ratings(dataset.ratings, vocab)
    split = leave_last_out(data)
    sets = fit_sets(
        data, split, None if watches is None else watch_interactions(watches, vocab, weight)
    )
    groups = dataset.user_groups(vocab.user_ids)  # demographics where the data has them
    log.info(
        "data: %d interactions, %d users, %d items; split train %d / valid %d / test %d",
        len(data),
        vocab.n_users,
        vocab.n_items,
        len(split.train),
        len(split.valid),
        len(split.test),
    )
    if watches is not None:
        log.info("watches: %d pairs join training with weight %s", len(watches), weight)
    tuned = measures_tuned_fit(sets.final)  # large data: test measures the tuned fits
    results = []
    with tempfile.TemporaryDirectory(prefix="marquee-release-") as tmp:
        staging = Path(tmp)
        for kind in kinds:
            results.append(_train_kind(kind, sets, split, seed, staging / kind, groups, tuned))
        # ratings only, but the same rule as the kinds (the size counts watches too)
        rating = train_rating(data, split, seed, staging / "rating", measure_tuned=tuned)
        _stage_vocab(staging / "vocab", vocab, sets.final, dataset)
        snapshot = snapshot_id or dataset.snapshot_id()
        manifest = {
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git_sha": git_sha(),
            "data_snapshot_id": snapshot,
            "image_digest": os.environ.get("IMAGE_DIGEST") or None,
            "dataset": dataset.stats(),
            "protocol": PROTOCOL,
            "kinds": {
                r.kind: {
                    "params": r.params,
                    "metrics": r.metrics,
                    "fairness": r.fairness,
                    "holdout_fit": r.holdout_fit,
                }
                for r in results
            },
            "rating": rating,
            "gate": None,
            "data": data_block(dataset),  # what a later drift report needs of this window
            "watch_signal": watch_signal,
        }
        if extend is not None:
            manifest.update(extend(Trained(dataset, vocab, split, results, sets)))
        if not publish:
            return Report(
                "unpublished", registry.uri, dataset.stats(), results, rating, watch_signal
            )
        version = registry.publish(staging, manifest)
    log.info("published %s to %s", version, registry.uri)
    return Report(version, registry.uri, dataset.stats(), results, rating, watch_signal)


def choose_watch_weight(
    dataset: Dataset, kinds: list[str], seed: int = 0, weights: tuple[float, ...] = WATCH_WEIGHTS
) -> dict[str, Any]:
    """The weight of a watch relative to a rating, chosen on validation NDCG@10.

    One kind (ALS if trained, else item-CF; neither: weight 0) with its grid's first candidate
    is fit on train + the watches before each user's validation interaction, once per weight
    (0 = ratings only), and scored on the ratings' validation set. Every trial excludes the same
    items from ranking (the user's ratings and watches before the target), so the weights
    compete on equal terms. The lowest weight wins a tie: the weaker signal must earn its place.
    """
    watches = dataset.watches
    assert watches is not None
    block: dict[str, Any] = {"weight": 0.0, "kind": None, "trials": {}, "watch_pairs": len(watches)}
    kind = next((k for k in _WATCH_TUNERS if k in kinds), None)
    if len(watches) == 0 or kind is None:
        why = "no watch pairs left" if len(watches) == 0 else "no ALS or item-CF to choose with"
        log.info("[watch] %s: watches unused (weight 0)", why)
        return {**block, "reason": why}
    vocab = build_vocab(dataset.ratings, watches)
    data = Interactions.from_ratings(dataset.ratings, vocab)
    split: Split = leave_last_out(data)
    seen = fit_sets(data, split, watch_interactions(watches, vocab, 1.0)).tune
    spec = MODELS[kind]
    params = spec.candidates()[0]
    best = (-1.0, 0.0)
    valid = tuning_sample(split.valid, seed)
    for w in sorted(weights):
        start = time.perf_counter()
        train = (
            split.train
            if w <= 0
            else fit_sets(data, split, watch_interactions(watches, vocab, w)).tune
        )
        scorer = spec.fit(train, params, np.random.default_rng(seed), valid)
        m = evaluate(scorer, seen, valid, _fallback(train), sampled=False)
        block["trials"][str(w)] = round(m.ndcg, 5)
        log.info(
            "[watch] weight %s: valid NDCG@10 %.4f HR@10 %.4f (%s, %.1fs)",
            w,
            m.ndcg,
            m.hr,
            kind,
            time.perf_counter() - start,
        )
        if m.ndcg > best[0]:
            best = (m.ndcg, w)
    log.info("[watch] chose weight %s (%d watch pairs)", best[1], len(watches))
    return {**block, "weight": best[1], "kind": kind, "params": params.model_dump(mode="json")}


def tuning_sample(valid: Interactions, seed: int, most: int = TUNING_USERS) -> Interactions:
    """The validation rows tuning scores: all of them, or a seeded sample of `most` users."""
    if len(valid) <= most:
        return valid
    keep = np.zeros(len(valid), dtype=bool)
    keep[np.random.default_rng(seed).choice(len(valid), most, replace=False)] = True
    return valid.select(keep)


def _train_kind(
    kind: str,
    sets: FitSets,
    split: Any,
    seed: int,
    out: Path,
    groups: dict[str, np.ndarray] | None = None,
    measure_tuned: bool = False,
) -> KindResult:
    spec = MODELS[kind]
    train = sets.tune  # split.train, plus watches before each user's validation interaction
    valid = tuning_sample(split.valid, seed)
    fallback_train = _fallback(train)
    trials = []
    # (valid NDCG, resolved params, the fit, its seconds); the fit is kept only when measured
    best: tuple[float, Any, Any, float] = (-1.0, None, None, 0.0)
    candidates = spec.candidates()
    # the kind's first line: progress readers (and bench_train's per-kind times) start here
    log.info("[%s] tuning %d candidate(s) on validation", kind, len(candidates))
    tuning_started = time.perf_counter()
    for i, params in enumerate(candidates, start=1):
        if measure_tuned:  # the tuned fit is the measured one: it trains on every training row
            params = params.for_measured_tuning()
        start = time.perf_counter()
        scorer = spec.fit(train, params, np.random.default_rng(seed), valid)
        fit_seconds = time.perf_counter() - start
        resolved = scorer.resolved_params or params
        m = evaluate(scorer, train, valid, fallback_train, sampled=False)
        trials.append(
            {"params": resolved.model_dump(mode="json"), "valid_ndcg@10": round(m.ndcg, 5)}
        )
        per_trial = (time.perf_counter() - tuning_started) / i
        log.info(
            "[%s] trial %d/%d valid NDCG@10 %.4f HR@10 %.4f (%.1fs, about %.0fs of trials left) %s",
            kind,
            i,
            len(candidates),
            m.ndcg,
            m.hr,
            time.perf_counter() - start,
            per_trial * (len(candidates) - i),
            json.dumps(resolved.model_dump(mode="json")),
        )
        if m.ndcg > best[0]:
            best = (m.ndcg, resolved, scorer if measure_tuned else None, fit_seconds)
        del scorer  # a losing fit's memory goes before the next candidate's fit
    chosen = best[1]
    train_valid = sets.holdout  # split.train_valid, plus watches before each test interaction
    if measure_tuned:  # large data: the tuned fit is measured (MEASURE_TUNED_FROM)
        scorer, train_seconds, holdout_fit = best[2], best[3], HOLDOUT_TUNED
        log.info(
            "[%s] measuring the tuned fit on test (no refit past %d interactions)",
            kind,
            MEASURE_TUNED_FROM,
        )
    else:
        start = time.perf_counter()
        scorer = spec.fit(train_valid, chosen, np.random.default_rng(seed), None)
        train_seconds, holdout_fit = time.perf_counter() - start, HOLDOUT_REFIT
    fallback_tv = _fallback(train_valid)
    data = sets.final  # every rating and every watch
    test: Metrics = evaluate(scorer, train_valid, split.test, fallback_tv, seed=seed, groups=groups)
    users = np.random.default_rng(seed).choice(
        data.n_users, size=min(_LATENCY_USERS, data.n_users), replace=False
    )
    timing = latency_ms(scorer, train_valid, users, fallback_tv)
    log.info(
        "[%s] test NDCG@10 %.4f HR@10 %.4f; refitting on all data to publish (about %.0fs)",
        kind,
        test.ndcg,
        test.hr,
        train_seconds,
    )
    final = spec.fit(data, chosen, np.random.default_rng(seed), None)
    try:  # the release format's own checks: numeric, finite, finite scores for sampled users
        names = release_format.save_scorer(out, final)
    except release_format.InvalidRelease as exc:
        raise PublishRefused(f"{exc}; not publishing") from None
    size_mb = sum((out / n).stat().st_size for n in names) / 1e6
    metrics = {
        **test.as_dict(),
        "train_seconds": round(train_seconds, 2),
        "artifact_mb": round(size_mb, 3),
        **timing,
    }
    meta = {
        "kind": kind,
        "params": chosen.model_dump(mode="json"),
        "metrics": metrics,
        "holdout_fit": holdout_fit,
        "libraries": _versions(kind),
        "trials": trials,
        "n_users": final.n_users,
        "n_items": final.n_items,
    }
    release_format.write_kind_meta(out, final, meta)
    return KindResult(
        kind,
        chosen.model_dump(mode="json"),
        metrics,
        trials,
        scorer,
        fairness=test.groups or {},
        holdout_fit=holdout_fit,
    )


def _stage_vocab(out: Path, vocab: Vocab, data: Interactions, dataset: Dataset) -> None:
    """Ids, each user's full history (for seen-item filtering) and the catalogue for titles."""
    history = data.matrix().tocsr()
    items = dataset.items.set_index("item_id")
    known = items.reindex(vocab.item_ids)
    catalogue = {
        str(int(i)): {
            "title": str(t) if isinstance(t, str) else "",
            "genres": str(g) if isinstance(g, str) else "",
        }
        for i, t, g in zip(vocab.item_ids, known["title"], known["genres"], strict=True)
    }
    release_format.write_vocab(out, vocab, history.indptr, history.indices, catalogue)
