"""Drift between the window production was trained on and the events that arrived since.

Tests (each a statistic, a threshold and a verdict; the report is JSON and goes into the
candidate's manifest):

- `item_popularity`: Jensen-Shannon distance (base 2, 0..1) between the two item distributions.
- `genre_mix`: JS distance between genre shares (an event on an item with g genres adds 1/g to
  each).
- `rating_values`: JS distance between the rating-value histograms.
- `events_per_user`: Wasserstein-1 distance between log(1 + events per user), in units of the
  pooled standard deviation; counts are scaled by the ratio of the windows' durations first.
- `new_items` / `new_users`: share of the current events on items / from users the reference
  never saw.

The distribution tests are calibrated on sampling noise (as NannyML calibrates on reference
chunks): under "nothing changed" both windows are draws from their pooled distribution, so
`null_draws` multinomial (or permutation) draws of the same sizes give the statistic's null
mean and sd, and the threshold is max(floor, mean + sigmas * sd). Small windows get a looser
threshold, large ones cannot flag a change below the floor (at large n every change is
"significant"; Evidently's KS problem). Defaults: docs/retrain.md and tests/trainer/test_drift.py
(two disjoint random halves of one window never drift; a genre surge or 10x new items does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import pandas as pd

    from trainer.data import Dataset

NO_GENRE = "(none)"


class DriftSettings(BaseSettings):
    """TRAIN_DRIFT_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="TRAIN_DRIFT_", extra="ignore")

    sigmas: float = Field(default=4.0, gt=0)  # null mean + sigmas * sd
    null_draws: int = Field(default=30, ge=5)
    js_floor: float = Field(default=0.05, ge=0)  # item popularity, genre mix, rating values
    events_per_user_floor: float = Field(default=0.1, ge=0)  # in pooled sds (Evidently: 0.1)
    new_items_max: float = Field(default=0.04, ge=0, le=1)  # ML-100K next 20 %: 1.0 %
    new_users_max: float = Field(default=0.5, ge=0, le=1)
    min_events: int = Field(default=100, ge=1)  # fewer current events: no verdict (too few)
    seed: int = 0


@dataclass
class Profile:
    """What drift needs of a window: counts per item, per user, per rating value, per genre."""

    name: str
    item_ids: np.ndarray  # sorted unique int64
    item_counts: np.ndarray  # events per item
    item_genres: list[str]  # '|' separated genres per item ('' unknown)
    user_ids: np.ndarray
    user_counts: np.ndarray
    ratings: dict[str, int] | None  # rating value -> events (None: not recorded)
    first_ts: int | None
    last_ts: int | None

    @property
    def events(self) -> int:
        return int(self.item_counts.sum())

    def days(self) -> float | None:
        if self.first_ts is None or self.last_ts is None:
            return None
        return max((self.last_ts - self.first_ts) / 86_400, 1.0)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "users": int(self.user_ids.size),
            "items": int(self.item_ids.size),
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
        }


def _rating_hist(values: np.ndarray) -> dict[str, int]:
    keys, counts = np.unique(np.round(values.astype(np.float64) * 2) / 2, return_counts=True)
    return {f"{k:g}": int(c) for k, c in zip(keys, counts, strict=True)}


def profile_ratings(
    name: str, ratings: pd.DataFrame, genres: dict[int, str] | None = None
) -> Profile:
    """A window from a ratings table (user_id, item_id, rating, timestamp)."""
    items, item_counts = np.unique(ratings["item_id"].to_numpy(np.int64), return_counts=True)
    users, user_counts = np.unique(ratings["user_id"].to_numpy(np.int64), return_counts=True)
    ts = ratings["timestamp"].to_numpy(np.int64)
    genres = genres or {}
    return Profile(
        name,
        items,
        item_counts,
        [genres.get(int(i), "") for i in items],
        users,
        user_counts,
        _rating_hist(ratings["rating"].to_numpy()) if "rating" in ratings else None,
        int(ts.min()) if ts.size else None,
        int(ts.max()) if ts.size else None,
    )


def profile_dataset(
    name: str, dataset: Dataset, after_ts: int | None = None, with_watches: bool = False
) -> Profile:
    """A Dataset's window; with `after_ts`, only its events newer than that (what is new).

    `with_watches` counts watched (user, item) pairs as interactions too, as a release trained
    with watch weight > 0 has them in its history (`uses_watches`): both sides of a drift
    comparison must count the same things. The rating histogram stays ratings only."""
    import pandas as pd

    ratings = dataset.ratings
    if with_watches and dataset.watches is not None and len(dataset.watches):
        watched = dataset.watches[["user_id", "item_id", "timestamp"]]
        ratings = pd.concat([ratings, watched], ignore_index=True)
    if after_ts is not None:
        ratings = ratings[ratings["timestamp"] > after_ts]
    profile = profile_ratings(name, ratings, genres_of(dataset.items))
    if with_watches:  # NaN ratings of the watch rows are not ratings
        rated = dataset.ratings
        if after_ts is not None:
            rated = rated[rated["timestamp"] > after_ts]
        profile.ratings = _rating_hist(rated["rating"].to_numpy())
    return profile


def uses_watches(manifest: dict[str, Any]) -> bool:
    """Whether a release's history (what `profile_release` counts) includes watched pairs."""
    signal = manifest.get("watch_signal") or {}
    return bool(signal.get("weight"))


def genres_of(items: pd.DataFrame) -> dict[int, str]:
    return dict(zip(items["item_id"].astype(int), items["genres"].astype(str), strict=True))


def data_block(dataset: Dataset) -> dict[str, Any]:
    """The manifest's `data` block: what a later drift report needs that the release's own
    vocab part (ids, each user's seen items, catalogue) does not hold."""
    ts = dataset.ratings["timestamp"].to_numpy(np.int64)
    return {
        "first_ts": int(ts.min()) if ts.size else None,
        "last_ts": int(ts.max()) if ts.size else None,
        "ratings": _rating_hist(dataset.ratings["rating"].to_numpy()),
    }


def profile_release(name: str, release: Any) -> Profile:
    """A release's training window, from its vocab part and the manifest's `data` block.

    `release` is a `trainer.models.release_format.ReleaseData`. Per item and per user counts
    are its history (one interaction per user and item, as the trainer deduplicates)."""
    vocab = release.vocab
    item_counts = np.bincount(release.history_indices, minlength=vocab.n_items)
    user_counts = np.diff(release.history_indptr)
    data = release.manifest.get("data") or {}
    genres = [
        (release.catalogue[str(int(i))].genres if str(int(i)) in release.catalogue else "")
        for i in vocab.item_ids
    ]
    return Profile(
        name,
        vocab.item_ids,
        item_counts,
        genres,
        vocab.user_ids,
        user_counts,
        data.get("ratings"),
        data.get("first_ts"),
        data.get("last_ts"),
    )


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (0 = identical, 1 = disjoint). Rows need not sum to 1."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    return float(_js_rows(p[None], q[None])[0])


def _js_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-300)
    q = q / np.maximum(q.sum(axis=-1, keepdims=True), 1e-300)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / m), 0.0)
        return terms.sum(axis=-1)

    return np.sqrt(np.clip((kl(p) + kl(q)) / 2, 0.0, 1.0))


def _aligned(ref: Profile, cur: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item counts of both windows over the union of their items, and each union item's genres."""
    union = np.union1d(ref.item_ids, cur.item_ids)
    a = np.zeros(union.size)
    b = np.zeros(union.size)
    a[np.searchsorted(union, ref.item_ids)] = ref.item_counts
    b[np.searchsorted(union, cur.item_ids)] = cur.item_counts
    genres = dict(zip(ref.item_ids.tolist(), ref.item_genres, strict=True))
    genres.update((i, g) for i, g in zip(cur.item_ids.tolist(), cur.item_genres, strict=True) if g)
    return a, b, np.array([genres.get(int(i), "") for i in union], dtype=object)


def _genre_matrix(item_genres: np.ndarray) -> tuple[list[str], np.ndarray]:
    """items x genres weights: 1/g for each of an item's g genres (NO_GENRE when it has none)."""
    per_item = [[x for x in str(g).split("|") if x] or [NO_GENRE] for g in item_genres]
    names = sorted({x for gs in per_item for x in gs})
    col = {n: j for j, n in enumerate(names)}
    w = np.zeros((len(per_item), len(names)))
    for i, gs in enumerate(per_item):
        for x in gs:
            w[i, col[x]] = 1.0 / len(gs)
    return names, w


def _permuted(
    a: np.ndarray, b: np.ndarray, draws: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both windows had their events been shuffled between them (the null): a
    multivariate hypergeometric split of the pooled counts, O(categories) per draw. Drawing
    each side from the pooled distribution instead would understate the null for items seen
    once (such an item always lands on one side)."""
    pooled = (a + b).astype(np.int64)
    first = rng.multivariate_hypergeometric(pooled, int(a.sum()), size=draws, method="marginals")
    return first.astype(np.float64), (pooled - first).astype(np.float64)


def _threshold(null: np.ndarray, floor: float, sigmas: float) -> dict[str, float]:
    mean, sd = float(null.mean()), float(null.std(ddof=1))
    return {
        "threshold": round(max(floor, mean + sigmas * sd), 6),
        "null_mean": round(mean, 6),
        "null_sd": round(sd, 6),
        "floor": floor,
    }


def _result(statistic: float, calib: dict[str, float], **extra: Any) -> dict[str, Any]:
    threshold = calib["threshold"]
    score = statistic / threshold if threshold > 0 else float(statistic > 0)
    return {
        "statistic": round(statistic, 6),
        **calib,
        "score": round(score, 4),
        "flagged": bool(statistic > threshold),
        **extra,
    }


def drift_report(
    ref: Profile, cur: Profile, settings: DriftSettings, window: Profile | None = None
) -> dict[str, Any]:
    """Every drift test of `cur` against `ref`, with the numbers behind each verdict.

    `window`: the whole current window when `cur` is only its events newer than the reference.
    Events per user are compared on it: a few days of new events against a 90-day reference
    says more about the lengths of the windows than about the users."""
    rng = np.random.default_rng(settings.seed)
    report: dict[str, Any] = {
        "reference": ref.describe(),
        "current": cur.describe(),
        "settings": settings.model_dump(mode="json"),
        "tests": {},
    }
    if cur.events < settings.min_events or ref.events == 0:
        report.update(flagged=False, flagged_tests=[], verdict="too_few_events")
        report["reason"] = f"{cur.events} current events < minimum {settings.min_events}"
        return report
    tests = report["tests"]
    a, b, union_genres = _aligned(ref, cur)
    n_a, n_b = int(a.sum()), int(b.sum())
    draws_a, draws_b = _permuted(a, b, settings.null_draws, rng)
    tests["item_popularity"] = _result(
        js_distance(a, b),
        _threshold(_js_rows(draws_a, draws_b), settings.js_floor, settings.sigmas),
    )
    names, w = _genre_matrix(union_genres)
    ga, gb = a @ w, b @ w
    tests["genre_mix"] = _result(
        js_distance(ga, gb),
        _threshold(_js_rows(draws_a @ w, draws_b @ w), settings.js_floor, settings.sigmas),
        reference={n: round(float(x / n_a), 4) for n, x in zip(names, ga, strict=True)},
        current={n: round(float(x / n_b), 4) for n, x in zip(names, gb, strict=True)},
    )
    if ref.ratings and cur.ratings:
        keys = sorted(set(ref.ratings) | set(cur.ratings), key=float)
        ra = np.array([ref.ratings.get(k, 0) for k in keys], dtype=np.float64)
        rb = np.array([cur.ratings.get(k, 0) for k in keys], dtype=np.float64)
        null = _js_rows(*_permuted(ra, rb, settings.null_draws, rng))
        tests["rating_values"] = _result(
            js_distance(ra, rb),
            _threshold(null, settings.js_floor, settings.sigmas),
            reference={k: round(float(x / ra.sum()), 4) for k, x in zip(keys, ra, strict=True)},
            current={k: round(float(x / rb.sum()), 4) for k, x in zip(keys, rb, strict=True)},
        )
    else:
        tests["rating_values"] = {"skipped": "a window has no recorded rating values"}
    tests["events_per_user"] = _events_per_user(ref, window or cur, settings, rng)
    new_items = ~np.isin(cur.item_ids, ref.item_ids)
    share = float(cur.item_counts[new_items].sum() / n_b)
    tests["new_items"] = _share(share, settings.new_items_max, int(new_items.sum()))
    new_users = ~np.isin(cur.user_ids, ref.user_ids)
    share = float(cur.user_counts[new_users].sum() / cur.user_counts.sum())
    tests["new_users"] = _share(share, settings.new_users_max, int(new_users.sum()))
    flagged = [name for name, t in tests.items() if t.get("flagged")]
    report.update(flagged=bool(flagged), flagged_tests=flagged)
    report["verdict"] = "drift" if flagged else "no_drift"
    return report


def _share(share: float, limit: float, distinct: int) -> dict[str, Any]:
    return {
        "statistic": round(share, 6),
        "threshold": limit,
        "score": round(share / limit, 4) if limit > 0 else float(share > 0),
        "flagged": bool(share > limit),
        "distinct": distinct,
    }


def _events_per_user(
    ref: Profile, cur: Profile, settings: DriftSettings, rng: np.random.Generator
) -> dict[str, Any]:
    from scipy.stats import wasserstein_distance

    scale = 1.0
    ref_days, cur_days = ref.days(), cur.days()
    if ref_days and cur_days:
        scale = ref_days / cur_days  # a shorter window has fewer events per user by design
    x = np.log1p(ref.user_counts.astype(np.float64))
    y = np.log1p(cur.user_counts.astype(np.float64) * scale)
    pooled = np.concatenate([x, y])
    sd = float(pooled.std()) or 1.0
    stat = wasserstein_distance(x, y) / sd
    null = np.empty(settings.null_draws)
    for i in range(settings.null_draws):
        perm = rng.permutation(pooled)
        null[i] = wasserstein_distance(perm[: x.size], perm[x.size :]) / sd
    return _result(
        float(stat),
        _threshold(null, settings.events_per_user_floor, settings.sigmas),
        duration_scale=round(scale, 4),
        reference_median=float(np.median(ref.user_counts)),
        current_median=float(np.median(cur.user_counts)),
    )


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Markdown: one row per test."""
    if report.get("verdict") == "too_few_events":
        return [f"**Drift: not assessed** ({report['reason']})"]
    head = "DRIFT" if report["flagged"] else "no drift"
    lines = [
        f"**Drift: {head}** ({report['current']['events']} new events vs "
        f"{report['reference']['events']} in {report['reference']['name']})",
        "",
        "| test | statistic | threshold | flagged |",
        "|---|---|---|---|",
    ]
    for name, t in report["tests"].items():
        if "skipped" in t:
            lines.append(f"| {name} | - | - | skipped: {t['skipped']} |")
        else:
            flag = "**yes**" if t["flagged"] else "no"
            lines.append(f"| {name} | {t['statistic']:.4f} | {t['threshold']:.4f} | {flag} |")
    return lines
