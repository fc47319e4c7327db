"""The retrain loop: a window of events -> drift report -> every kind -> gate -> publish -> promote.

1. Production is what the control plane's pointer names (none: the first release).
2. Drift: production's training window (its vocab part + the manifest's `data` block) against
   the events of this window that are newer than production's last one (what has arrived).
3. Train every kind (trainer.pipeline); before publishing, the gate scores the candidate's
   fits that test measured (train+validation; past 1M interactions the tuned fits) and
   production on the candidate's held-out interactions (trainer.gate).
4. Publish with `drift`, `gate` and `window` in the manifest, whatever the verdict: a refused
   candidate is published with `gate.decision = "refuse"` so its numbers can be inspected (and
   served by `?model=vX.Y/kind` on purpose), but never promoted by this loop.
5. With `promote`, an accepted candidate becomes production, on top of the pointer record read
   in step 1 only (if someone promoted or rolled back meanwhile, the verdict was against a
   release that is no longer production: refused, nothing moves).

Every decision is also appended to the control plane's `gate` stream with its numbers.
Exit codes (the CLI): 0 published (and promoted if asked), 3 refused, 2 bad input, 1 a
dependency (store) unreachable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from model_registry.control import ControlPlane
from model_registry.errors import Conflict
from model_registry.registry import Registry
from trainer.data import Dataset
from trainer.drift import (
    DriftSettings,
    drift_report,
    profile_dataset,
    profile_release,
    uses_watches,
)
from trainer.drift import summary_lines as drift_lines
from trainer.gate import (
    GateInputs,
    GateSettings,
    HeldOut,
    ReleaseView,
    load_release,
    run_gate,
)
from trainer.gate import summary_lines as gate_lines
from trainer.pipeline import Report, Trained, train_release

log = logging.getLogger("trainer.retrain")

EXIT_OK, EXIT_REFUSED = 0, 3
GATE_STREAM = "gate"


@dataclass
class Outcome:
    """What one retrain did; `as_dict` is the --report JSON."""

    production: str | None
    version: str | None = None
    published: bool = False
    promoted: bool = False
    decision: str = "refuse"
    refusal: str | None = None
    drift: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    report: Report | None = None
    window: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.decision == "accept" else EXIT_REFUSED

    def as_dict(self) -> dict[str, Any]:
        return {
            "production_before": self.production,
            "version": self.version,
            "published": self.published,
            "promoted": self.promoted,
            "decision": self.decision,
            "refusal": self.refusal,
            "exit_code": self.exit_code,
            "window": self.window,
            "seconds": self.seconds,
            "drift": self.drift,
            "gate": self.gate,
            "training": self.report.as_dict() if self.report else None,
        }

    def summary(self) -> str:
        """The Markdown the workflow appends to its job summary."""
        state = "published" if self.published else "not published"
        state = "promoted" if self.promoted else state
        head = f"## Retrain: {self.decision.upper()} — {self.version or 'no release'} ({state})"
        lines = [head, ""]
        window = ", ".join(f"{k} `{v}`" for k, v in self.window.items() if v is not None)
        lines.append(f"Production before: {self.production or 'none'}. Window: {window}.")
        if self.refusal:
            lines += ["", f"**Refused:** {self.refusal}"]
        if self.report is not None:
            lines += ["", "### Offline metrics (leave-last-out test of this window)", ""]
            lines += _metrics_table(self.report)
        lines += ["", "### Drift", ""]
        lines += drift_lines(self.drift) if self.drift else ["No production release: no drift."]
        if self.gate is not None:
            lines += ["", "### Gate", "", *gate_lines(self.gate)]
        return "\n".join(lines) + "\n"


def _metrics_table(report: Report) -> list[str]:
    lines = ["| kind | HR@10 | NDCG@10 | coverage@10 | train s |", "|---|---|---|---|---|"]
    for r in report.results:
        m = r.metrics
        lines.append(
            f"| {r.kind} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['coverage@10']:.3f} | "
            f"{m['train_seconds']:.1f} |"
        )
    return lines


def with_catalogue(dataset: Dataset, catalogue: dict[str, Any]) -> Dataset:
    """Titles and genres from a release's catalogue for items a window has none for (snapshots
    carry ids only)."""
    items = dataset.items.copy()
    missing = (items["title"] == "") & items["item_id"].astype(str).isin(catalogue.keys())
    if missing.any():
        ids = items.loc[missing, "item_id"].astype(str)
        items.loc[missing, "title"] = [catalogue[i].title for i in ids]
        items.loc[missing, "genres"] = [catalogue[i].genres for i in ids]
        dataset.items = pd.DataFrame(items)
    return dataset


def retrain(
    dataset: Dataset,
    registry: Registry,
    kinds: list[str],
    *,
    promote: bool = False,
    dry_run: bool = False,
    gate_settings: GateSettings | None = None,
    drift_settings: DriftSettings | None = None,
    seed: int = 0,
    by: str = "retrain",
    window: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Outcome:
    gate_settings = gate_settings or GateSettings()
    drift_settings = drift_settings or DriftSettings()
    started = clock()
    control = ControlPlane(registry)
    pointer = control.pointer()
    production = pointer.data.get("version") if pointer else None
    outcome = Outcome(production=production, window=dict(window or {}))
    prod_view = None
    if production is not None:
        prod_view, prod_data = load_release(registry, production)
        dataset = with_catalogue(dataset, prod_data.catalogue)
        reference = profile_release(production, prod_data)
        watches = uses_watches(prod_data.manifest)
        current = profile_dataset("new events", dataset, reference.last_ts, watches)
        whole = profile_dataset("window", dataset, with_watches=watches)
        outcome.drift = drift_report(reference, current, drift_settings, whole)
        log.info("drift against %s: %s", production, outcome.drift["verdict"])
    outcome.seconds["drift"] = round(clock() - started, 2)

    def extend(trained: Trained) -> dict[str, Any]:
        gate_started = clock()
        scorers = {r.kind: r.holdout_scorer for r in trained.results}
        candidate = ReleaseView.build("candidate", trained.vocab, scorers, trained.holdout_seen)
        held = HeldOut.from_split(trained.vocab, trained.split.test)
        outcome.gate = run_gate(GateInputs(candidate, prod_view, held), gate_settings)
        outcome.seconds["gate"] = round(clock() - gate_started, 2)
        log.info("gate: %s (%s)", outcome.gate["verdict"], "; ".join(outcome.gate["reasons"]))
        return {"gate": outcome.gate, "drift": outcome.drift, "window": outcome.window}

    train_started = clock()
    outcome.report = train_release(
        dataset, registry, kinds, seed=seed, extend=extend, publish=not dry_run
    )
    outcome.seconds["train_and_gate"] = round(clock() - train_started, 2)
    assert outcome.gate is not None
    outcome.decision = outcome.gate["decision"]
    if outcome.decision != "accept":
        outcome.refusal = (
            "gate " + outcome.gate["verdict"] + ": " + "; ".join(outcome.gate["reasons"])
        )
    if dry_run:
        outcome.seconds["total"] = round(clock() - started, 2)
        return outcome
    outcome.version, outcome.published = outcome.report.version, True
    if promote and outcome.decision == "accept":
        _promote(control, outcome, pointer.seq if pointer else 0, by)
    _record(control, outcome, by)
    outcome.seconds["total"] = round(clock() - started, 2)
    return outcome


def _promote(control: ControlPlane, outcome: Outcome, seq: int, by: str) -> None:
    assert outcome.gate is not None and outcome.version is not None
    default = outcome.gate["comparisons"].get("default", {})
    delta = default.get("delta", {}).get("ndcg@10", {})
    reason = (
        f"retrain: gate {outcome.gate['verdict']} against {outcome.production or 'none'}"
        + (f"; default NDCG@10 delta {delta['mean']:+.4f} [{delta['lo']:+.4f}, "
           f"{delta['hi']:+.4f}]" if delta else "")
    )  # fmt: skip
    try:
        control.promote(outcome.version, by=by, reason=reason, expected_seq=seq)
    except Conflict as exc:
        now = exc.current.data.get("version") if exc.current else None
        outcome.decision = "refuse"
        outcome.refusal = (
            f"production moved to {now} while retraining (the gate compared against "
            f"{outcome.production}); {outcome.version} is published but not promoted"
        )
        log.error(outcome.refusal)
        return
    outcome.promoted = True
    log.info("promoted %s", outcome.version)


def _record(control: ControlPlane, outcome: Outcome, by: str) -> None:
    """The decision in the control plane's `gate` stream, with the numbers behind it."""
    assert outcome.gate is not None
    data = {
        "version": outcome.version,
        "against": outcome.production,
        "verdict": outcome.gate["verdict"],
        "decision": outcome.decision,
        "promoted": outcome.promoted,
        "refusal": outcome.refusal,
        "reasons": outcome.gate["reasons"],
        "default": outcome.gate["comparisons"].get("default"),
        "drift_flagged": (outcome.drift or {}).get("flagged_tests"),
    }
    control.append(
        GATE_STREAM,
        data,
        by=by,
        reason=(outcome.refusal or f"gate {outcome.gate['verdict']}")[:500],
        action="promote" if outcome.promoted else outcome.decision,
    )
