"""The release gate: is the candidate at least as good as production, on the same users?

Both releases are scored on the SAME held-out interactions (the newest interaction of each user
in the candidate's window), each through its own vocabulary, scorers, seen-item history and
popularity fallback, with the scoring primitives offline evaluation uses (`scores_with_fallback`,
`pessimistic_rank`, `top_n_rows`): a user a release does not know gets that release's popularity
ranking, an item it does not know it cannot recommend (a miss), as in serving. A held-out pair
that production already has in its history (windows overlap) is dropped for both: production
would never show it, and keeping it would compare the two releases on different questions.

Per kind, and for the default kind, the per-user differences (candidate - production) of NDCG@10
and HR@10 get a seeded, vectorised percentile-bootstrap interval. Against a non-inferiority
margin m: `pass` when the lower bound > -m, `fail` when the upper bound < -m (worse beyond the
margin with confidence), otherwise `inconclusive`. Hard failures override the statistics: a kind
missing, non-finite scores for users the candidate knows, catalogue coverage@10 collapsed, or
fewer test users than a minimum. Why the default margins: docs/retrain.md.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_registry.registry import Registry
from trainer.errors import TrainerError
from trainer.evaluate import scores_with_fallback
from trainer.models import Scorer, top_n_rows
from trainer.models.data import Interactions, Vocab
from trainer.models.ranking import K, ndcg_gains, pessimistic_rank, scored_blocks
from trainer.models.release_format import InvalidRelease, ReleaseData, read_release

log = logging.getLogger("trainer.gate")

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
_SEVERITY = {PASS: 0, INCONCLUSIVE: 1, FAIL: 2}
METRICS = (f"ndcg@{K}", f"hr@{K}")
_BATCH = 256
_BOOT_CELLS = 2_000_000  # resampled values per bootstrap chunk (memory bound, ~16 MB)


class GateSettings(BaseSettings):
    """TRAIN_GATE_* environment variables; defaults justified in docs/retrain.md."""

    model_config = SettingsConfigDict(env_prefix="TRAIN_GATE_", extra="ignore")

    # Non-inferiority margins (absolute), ~2.5 standard errors of one model's metric on
    # ML-100K's 943 test users (NDCG@10 0.005, HR@10 0.010) and ~5 of a seed-only retrain's
    # paired difference (0.0025, 0.005): an equal candidate passes ~97 times in 100.
    margin_ndcg: float = Field(default=0.0125, ge=0)
    margin_hr: float = Field(default=0.025, ge=0)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)  # two-sided; lower bound is 2.5 %
    bootstrap: int = Field(default=2000, ge=100)
    min_users: int = Field(default=100, ge=1)
    min_coverage_ratio: float = Field(default=0.5, ge=0, le=1)  # of production's coverage@10
    coverage_users: int = Field(default=2000, ge=1)  # coverage@10 over the first N test users
    default_kind: str = "als"
    # The default-kind comparison must pass; any kind that FAILS refuses the release; kinds
    # listed here must pass too (others may be inconclusive: recorded, not refused).
    strict_kinds: str = ""
    inconclusive: Literal["refuse", "accept"] = "refuse"
    seed: int = 0

    def margins(self) -> dict[str, float]:
        return {METRICS[0]: self.margin_ndcg, METRICS[1]: self.margin_hr}

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass
class ReleaseView:
    """What the gate needs of one release: ids, scorers, each user's seen items, the fallback."""

    name: str
    vocab: Vocab
    scorers: dict[str, Scorer]
    history: sp.csr_matrix  # users x items, > 0 where seen (never recommended)
    fallback: np.ndarray  # the popularity ranking unknown users get

    @classmethod
    def build(
        cls, name: str, vocab: Vocab, scorers: dict[str, Scorer], seen: Interactions
    ) -> ReleaseView:
        """A candidate in memory, before publishing: the scorers test measured; `seen` is
        train+validation, what they must not rank again (past 1M interactions they were fit on
        train alone, `MEASURE_TUNED_FROM`)."""
        pop = scorers["popularity"]
        return cls(name, vocab, scorers, seen.matrix().tocsr(), pop.global_scores())  # type: ignore[attr-defined]


def load_release(registry: Registry, version: str) -> tuple[ReleaseView, ReleaseData]:
    """Fetch a published release (every sha256 verified), read it as serving does (format
    checked), and view it for the gate. The ReleaseData keeps the manifest and catalogue."""
    with tempfile.TemporaryDirectory(prefix=f"marquee-gate-{version}-") as tmp:
        root = Path(tmp)
        manifest = registry.fetch(version, root)
        try:
            data = read_release(root, manifest)
        except InvalidRelease as exc:
            raise TrainerError(f"release {version}: {exc}") from None
    history = sp.csr_matrix(
        (
            np.ones(data.history_indices.size, dtype=np.float32),
            data.history_indices,
            data.history_indptr,
        ),
        shape=(data.vocab.n_users, data.vocab.n_items),
    )
    pop = data.scorers["popularity"]
    view = ReleaseView(version, data.vocab, data.scorers, history, pop.global_scores())  # type: ignore[attr-defined]
    return view, data


@dataclass(frozen=True)
class HeldOut:
    """The held-out interactions, in external ids, one per user."""

    user_ids: np.ndarray
    item_ids: np.ndarray

    @classmethod
    def from_split(cls, vocab: Vocab, test: Interactions) -> HeldOut:
        return cls(vocab.user_ids[test.user_idx], vocab.item_ids[test.item_idx])

    def __len__(self) -> int:
        return int(self.user_ids.size)


def _index(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of `ids` in `sorted_ids`, -1 where absent (a vectorised Vocab lookup)."""
    if sorted_ids.size == 0:
        return np.full(ids.size, -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.size - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)


@dataclass
class KindScores:
    """One release's per-user outcome on the held-out pairs for one kind."""

    ndcg: np.ndarray
    hit: np.ndarray
    recommended: np.ndarray  # bool per item of this release: in someone's top 10
    non_finite_users: int  # known users whose scores were NaN/inf somewhere

    @property
    def coverage(self) -> float:
        return float(self.recommended.mean()) if self.recommended.size else 0.0


def seen_pairs(view: ReleaseView, held: HeldOut) -> np.ndarray:
    """True where the release already has the held-out (user, item) in its history."""
    users = _index(view.vocab.user_ids, held.user_ids)
    items = _index(view.vocab.item_ids, held.item_ids)
    ok = (users >= 0) & (items >= 0)
    out = np.zeros(len(held), dtype=bool)
    if ok.any():
        out[ok] = np.asarray(view.history[users[ok], items[ok]]).ravel() > 0
    return out


def score_kind(
    view: ReleaseView, kind: str, held: HeldOut, coverage_users: int | None = None
) -> KindScores:
    """Full-ranking NDCG@10 / hit@10 per held-out pair, through the release's own serving path.

    Coverage@10 counts the items in the top 10 (`top_n_rows`, as served) of the first
    `coverage_users` held-out users (all by default): the same users for both releases."""
    coverage_users = len(held) if coverage_users is None else coverage_users
    scorer = view.scorers[kind]
    users = _index(view.vocab.user_ids, held.user_ids)
    items = _index(view.vocab.item_ids, held.item_ids)
    ranks = np.empty(len(held), dtype=np.int64)
    recommended = np.zeros(view.vocab.n_items, dtype=bool)
    non_finite = 0
    raw = lambda u: scores_with_fallback(scorer, u, None)  # noqa: E731 (checked before the fallback)
    for batch, scores in scored_blocks(raw, users, _BATCH):
        u, t = users[batch], items[batch]
        start = batch.start
        known = u >= 0
        non_finite += int((~np.isfinite(scores[known])).any(axis=1).sum())
        scores[np.isnan(scores).all(axis=1)] = view.fallback  # evaluate's rule: popularity
        mask = np.zeros(scores.shape, dtype=bool)
        if known.any():
            mask[known] = np.asarray(view.history[u[known]].todense()) > 0
        target = np.where(t >= 0, t, 0)
        r = pessimistic_rank(scores, mask.copy(), target)
        ranks[batch] = np.where(t >= 0, r, view.vocab.n_items)  # an unknown item: a miss
        rows = min(scores.shape[0], max(0, coverage_users - start))
        if rows:
            best, _, _ = top_n_rows(scores[:rows], K, exclude=mask[:rows])
            recommended[best[best >= 0]] = True
    return KindScores(ndcg_gains(ranks), (ranks < K).astype(np.float64), recommended, non_finite)


def bootstrap_ci(
    diffs: np.ndarray, n_boot: int, confidence: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean of each row of `diffs` (metrics x users).

    All rows share the same resampled users (a paired, joint resample). Resampling n users
    with replacement is drawing multinomial counts over the distinct per-user outcomes: NDCG@10
    and HR@10 differences take at most ~120 distinct pairs of values, so each replicate costs
    O(distinct) instead of O(users), the same distribution exactly. Returns (lo, hi, se).
    """
    diffs = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    m, n = diffs.shape
    if not diffs.any():  # identical outcomes (same scorer on both sides): nothing to resample
        zero = np.zeros(m)
        return zero, zero, zero
    values, inverse = np.unique(diffs.T, axis=0, return_inverse=True)  # distinct x metrics
    p = np.bincount(inverse.ravel(), minlength=values.shape[0]) / n
    means = np.empty((m, n_boot))
    chunk = max(1, _BOOT_CELLS // values.shape[0])
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = rng.multinomial(n, p, size=b)  # b x distinct: how often each outcome is drawn
        means[:, start : start + b] = (counts @ values).T / n
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2], axis=1)
    return lo, hi, means.std(axis=1, ddof=1)


def metric_verdict(lo: float, hi: float, margin: float) -> str:
    if lo > -margin:
        return PASS
    if hi < -margin:
        return FAIL
    return INCONCLUSIVE


def worst(verdicts: list[str]) -> str:
    return max(verdicts, key=_SEVERITY.__getitem__, default=PASS)


def compare(
    cand: KindScores,
    prod: KindScores | None,
    keep: np.ndarray,
    settings: GateSettings,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """One comparison (a kind, or the default kinds) on the held-out pairs in `keep`."""
    n = int(keep.sum())
    out: dict[str, Any] = {"users": n, "hard_failures": []}
    out["candidate"] = {
        METRICS[0]: round(float(cand.ndcg[keep].mean()) if n else 0.0, 5),
        METRICS[1]: round(float(cand.hit[keep].mean()) if n else 0.0, 5),
        f"coverage@{K}": round(cand.coverage, 5),
    }
    if cand.non_finite_users:
        out["hard_failures"].append(
            f"non-finite scores for {cand.non_finite_users} users the candidate knows"
        )
    if n < settings.min_users:
        out["hard_failures"].append(f"{n} test users < minimum {settings.min_users}")
    if prod is None:
        if cand.coverage == 0:
            out["hard_failures"].append("coverage@10 is zero")
        out["verdict"] = FAIL if out["hard_failures"] else PASS
        return out
    out["production"] = {
        METRICS[0]: round(float(prod.ndcg[keep].mean()) if n else 0.0, 5),
        METRICS[1]: round(float(prod.hit[keep].mean()) if n else 0.0, 5),
        f"coverage@{K}": round(prod.coverage, 5),
    }
    floor = settings.min_coverage_ratio * prod.coverage
    if cand.coverage < floor:
        out["hard_failures"].append(
            f"coverage@10 collapsed: {cand.coverage:.4f} < {settings.min_coverage_ratio} x "
            f"production's {prod.coverage:.4f}"
        )
    verdicts = []
    if n >= 2:
        diffs = np.stack([cand.ndcg[keep] - prod.ndcg[keep], cand.hit[keep] - prod.hit[keep]])
        lo, hi, se = bootstrap_ci(diffs, settings.bootstrap, settings.confidence, rng)
        out["delta"] = {}
        for i, metric in enumerate(METRICS):
            margin = settings.margins()[metric]
            verdict = metric_verdict(float(lo[i]), float(hi[i]), margin)
            verdicts.append(verdict)
            out["delta"][metric] = {
                "mean": round(float(diffs[i].mean()), 5),
                "se": round(float(se[i]), 5),
                "lo": round(float(lo[i]), 5),
                "hi": round(float(hi[i]), 5),
                "margin": margin,
                "verdict": verdict,
            }
    else:
        verdicts.append(INCONCLUSIVE)
    out["verdict"] = FAIL if out["hard_failures"] else worst(verdicts)
    return out


@dataclass
class GateInputs:
    candidate: ReleaseView
    production: ReleaseView | None
    held_out: HeldOut
    candidate_default: str | None = None  # the kind the candidate serves by default
    production_default: str | None = None
    cache: dict[tuple[str, str], KindScores] = field(default_factory=dict)

    def scores(self, which: str, kind: str, coverage_users: int | None = None) -> KindScores:
        view = self.candidate if which == "candidate" else self.production
        assert view is not None
        key = (which, kind)
        if key not in self.cache:
            self.cache[key] = score_kind(view, kind, self.held_out, coverage_users)
        return self.cache[key]


def run_gate(inputs: GateInputs, settings: GateSettings) -> dict[str, Any]:
    """The gate block recorded in the candidate's manifest: verdict, decision and every number."""
    cand, prod, held = inputs.candidate, inputs.production, inputs.held_out
    rng = np.random.default_rng(settings.seed)
    keep = np.ones(len(held), dtype=bool)
    excluded = 0
    if prod is not None:
        leaked = seen_pairs(prod, held) | seen_pairs(cand, held)
        excluded = int(leaked.sum())
        keep &= ~leaked
    expected = sorted(set(cand.scorers) | set(prod.scorers if prod is not None else ()))
    cand_default = inputs.candidate_default or settings.default_kind
    prod_default = inputs.production_default or settings.default_kind
    reasons: list[str] = []
    comparisons: dict[str, Any] = {}
    strict = {k.strip() for k in settings.strict_kinds.split(",") if k.strip()} | {"default"}
    for kind in expected:
        if kind not in cand.scorers:
            comparisons[kind] = {"verdict": FAIL, "hard_failures": ["missing from the candidate"]}
            continue
        comparisons[kind] = compare(
            inputs.scores("candidate", kind, settings.coverage_users),
            inputs.scores("production", kind, settings.coverage_users)
            if prod is not None and kind in prod.scorers  # a new kind: nothing to compare to
            else None,
            keep,
            settings,
            rng,
        )
    if cand_default not in cand.scorers:
        comparisons["default"] = {"verdict": FAIL, "hard_failures": ["default kind missing"]}
    elif cand_default == prod_default and cand_default in comparisons:
        comparisons["default"] = dict(comparisons[cand_default])  # the same comparison
    else:
        has_prod_default = prod is not None and prod_default in prod.scorers
        comparisons["default"] = compare(
            inputs.scores("candidate", cand_default, settings.coverage_users),
            inputs.scores("production", prod_default, settings.coverage_users)
            if has_prod_default
            else None,
            keep,
            settings,
            rng,
        )
    comparisons["default"].update(candidate_kind=cand_default, production_kind=prod_default)
    counted = [c["verdict"] for n, c in comparisons.items() if n in strict or c["verdict"] == FAIL]
    notes = []
    for name, comp in comparisons.items():
        for failure in comp.get("hard_failures", []):
            reasons.append(f"{name}: {failure}")
        if comp["verdict"] != PASS and not comp.get("hard_failures"):
            counts = name in strict or comp["verdict"] == FAIL
            (reasons if counts else notes).append(f"{name}: {comp['verdict']}")
    verdict = worst(counted)
    if any(c.get("hard_failures") for c in comparisons.values()):
        verdict = FAIL
    accept = verdict == PASS or (verdict == INCONCLUSIVE and settings.inconclusive == "accept")
    return {
        "verdict": verdict,
        "decision": "accept" if accept else "refuse",
        "against": prod.name if prod is not None else None,
        "reasons": reasons,
        "notes": notes,  # verdicts that did not decide (a non-strict kind inconclusive)
        "rule": (
            "paired per-user delta (candidate - production), percentile bootstrap; pass if "
            "lower bound > -margin, fail if upper bound < -margin, else inconclusive; the "
            "release needs the default kind (and strict kinds) to pass and no kind to fail"
        ),
        "settings": settings.public(),
        "held_out": {
            "pairs": len(held),
            "compared": int(keep.sum()),
            "excluded_seen_by_a_release": excluded,
            "unknown_users": _unknown(inputs, "user_ids"),
            "unknown_items": _unknown(inputs, "item_ids"),
        },
        "comparisons": comparisons,
    }


def _unknown(inputs: GateInputs, attr: str) -> dict[str, int]:
    out = {}
    for which, view in (("candidate", inputs.candidate), ("production", inputs.production)):
        if view is None:
            continue
        ids = getattr(inputs.held_out, attr)
        vocab = view.vocab.user_ids if attr == "user_ids" else view.vocab.item_ids
        out[which] = int((_index(vocab, ids) < 0).sum())
    return out


def summary_lines(gate: dict[str, Any]) -> list[str]:
    """Markdown lines: verdict, then one row per comparison with its numbers."""
    lines = [
        f"**Gate: {gate['verdict']}** ({gate['decision']}) against "
        f"{gate['against'] or 'no production release'}; "
        f"{gate['held_out']['compared']} held-out users compared "
        f"({gate['held_out']['excluded_seen_by_a_release']} excluded: already seen by a release)",
        "",
        "| comparison | verdict | users | cand NDCG@10 | prod NDCG@10 | ΔNDCG [CI] | "
        "ΔHR@10 [CI] | cand cov@10 | prod cov@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, comp in gate["comparisons"].items():
        c, p, d = comp.get("candidate", {}), comp.get("production", {}), comp.get("delta", {})

        def ci(metric: str, d: dict = d) -> str:
            x = d.get(metric)
            return f"{x['mean']:+.4f} [{x['lo']:+.4f}, {x['hi']:+.4f}]" if x else "-"

        label = name
        if name == "default":
            label = f"default ({comp['candidate_kind']} vs {comp['production_kind']})"
        lines.append(
            f"| {label} | {comp['verdict']} | {comp.get('users', '-')} | "
            f"{c.get('ndcg@10', '-')} | {p.get('ndcg@10', '-')} | {ci('ndcg@10')} | "
            f"{ci('hr@10')} | {c.get('coverage@10', '-')} | {p.get('coverage@10', '-')} |"
        )
    if gate["reasons"]:
        lines += ["", "Reasons: " + "; ".join(gate["reasons"])]
    if gate.get("notes"):
        lines += ["", "Not deciding: " + "; ".join(gate["notes"])]
    return lines
