"""Staged rollout: move a candidate through traffic steps, judge each step, promote or roll back.

Arms, in this order in the experiment (the order keeps users sticky while weights ramp: growing
the candidate and the control only moves users out of `rest`, never between compared arms):

    candidate  weight s                 the model under test (vX.Y/kind)
    rest       weight 100 - 2s          production, outside the comparison
    control    weight min(s, 100 - s)   production's model, the same size as the candidate

At every step s (e.g. 5, 25, 50) the controller waits a soak, then reads the KPI report
(`ingestor kpi`: SRM, sequential non-inferiority verdict) and the serving metrics of every
replica (error share and p95 latency per arm since the step began) and decides:

    fail          any gate fails              -> candidate to 0, experiment ended, exit 3
    inconclusive  no gate fails, one can't say -> hold another soak; past `max_holds`, fail
    pass          every gate passes           -> next step; past the last step below 100, the
                                                 candidate's release is promoted, exit 0

Steps above 50 (other than the final 100) are refused: they leave no equal-size control.

`decide(state, observations, now, config)` is pure; `Controller` does the I/O with an injected
clock and sleep. Every decision is appended to the control plane's `rollout` stream with its
inputs and the whole next state, BEFORE it is applied, so a controller that dies at any point
resumes from the newest record (and re-applies its weights, which is idempotent).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from model_registry.control import ROLLOUT, ControlPlane
from model_registry.experiments import parse_model_ref

log = logging.getLogger("recommender.rollout")

CANDIDATE, REST, CONTROL = "candidate", "rest", "control"
Action = Literal["start", "wait", "advance", "hold", "rollback", "promote"]


def step_weights(step: int) -> dict[str, float]:
    if step >= 100:
        return {CANDIDATE: 100.0, REST: 0.0, CONTROL: 0.0}
    control = min(step, 100 - step)
    return {CANDIDATE: float(step), REST: float(100 - step - control), CONTROL: float(control)}


ROLLED_BACK = {CANDIDATE: 0.0, REST: 100.0, CONTROL: 0.0}


def parse_steps(text: str) -> tuple[int, ...]:
    try:
        steps = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"steps must be integers, got {text!r}") from None
    if not steps or steps[-1] != 100 or list(steps) != sorted(set(steps)) or steps[0] < 1:
        raise ValueError(f"steps must rise strictly from >= 1 and end at 100, got {text!r}")
    if any(50 < s < 100 for s in steps):
        raise ValueError("steps between 50 and 100 leave no equal-size control arm")
    if len(steps) < 2:
        raise ValueError("at least one step below 100 is needed to compare against control")
    return steps


@dataclass(frozen=True)
class RolloutConfig:
    candidate: str  # vX.Y/kind
    steps: tuple[int, ...] = (5, 25, 50, 100)
    soak_s: float = 600.0
    max_holds: int = 3  # inconclusive soaks in a row allowed at one step, then fail
    max_error_delta: float = 0.01  # candidate error share minus control's
    max_p95_ratio: float = 1.5  # candidate p95 over control p95 ...
    p95_floor_s: float = 0.05  # ... unless the candidate's p95 is below this anyway
    min_requests: int = 20  # candidate requests in a step before the guardrails judge

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}


@dataclass(frozen=True)
class State:
    """Everything needed to resume; stored whole in every rollout record."""

    experiment: str
    candidate: str
    control: str
    steps: tuple[int, ...]
    index: int = 0  # steps[index] is the current step
    holds: int = 0
    status: Literal["running", "promoted", "rolled_back"] = "running"
    step_started_at: float = 0.0
    baseline: dict[str, Any] = field(default_factory=dict)  # serving counters at step start

    @property
    def step(self) -> int:
        return self.steps[self.index]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{**fields, "steps": tuple(data["steps"])})


# ---- serving metrics ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmCounters:
    """Cumulative counters of one arm summed over replicas (what /metrics exposes)."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: tuple[tuple[float, float], ...] = ()  # (le, cumulative count), sorted by le

    def minus(self, before: ArmCounters | None) -> ArmCounters:
        """Counts since `before`; a replica restart (counters went down) counts from zero."""
        if before is None or self.requests < before.requests:
            return self
        old = dict(before.buckets)
        return ArmCounters(
            self.requests - before.requests,
            max(0.0, self.errors - before.errors),
            tuple((le, max(0.0, c - old.get(le, 0.0))) for le, c in self.buckets),
        )

    def p95(self) -> float | None:
        return histogram_quantile(0.95, self.buckets)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "buckets": [[le, c] for le, c in self.buckets],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArmCounters:
        return cls(
            data["requests"],
            data["errors"],
            tuple((float(le), float(c)) for le, c in data["buckets"]),
        )


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket holding rank q·count."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # beyond the last finite bucket: its bound, as Prometheus does
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width else 1.0)
        lower_le, lower_count = le, count
    return lower_le


def parse_serving_metrics(texts: Sequence[str]) -> dict[str, ArmCounters]:
    """Per arm, summed over replicas: requests, 5xx answers and the latency histogram of
    `marquee_requests_total` / `marquee_request_duration_seconds`. Probe requests are labelled
    arm="probe" by the service (or probe="1"), so they never count for an arm here."""
    from prometheus_client.parser import text_string_to_metric_families

    requests: dict[str, float] = {}
    errors: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                arm = labels.get("arm", "")
                if not arm or labels.get("probe", "").lower() in ("1", "true"):
                    continue
                if sample.name == "marquee_requests_total":
                    requests[arm] = requests.get(arm, 0.0) + sample.value
                    if labels.get("status", "").startswith("5"):
                        errors[arm] = errors.get(arm, 0.0) + sample.value
                elif sample.name == "marquee_request_duration_seconds_bucket":
                    le = float(labels["le"])
                    arm_buckets = buckets.setdefault(arm, {})
                    arm_buckets[le] = arm_buckets.get(le, 0.0) + sample.value
    return {
        arm: ArmCounters(
            requests[arm], errors.get(arm, 0.0), tuple(sorted(buckets.get(arm, {}).items()))
        )
        for arm in requests
    }


# ---- the pure decision --------------------------------------------------------------------------
@dataclass(frozen=True)
class Observations:
    kpi: dict[str, Any] | None  # the newest KPI report of this experiment (None: none yet)
    serving: dict[str, ArmCounters] | None  # cumulative per arm now (None: unreachable)
    serving_error: str | None = None


@dataclass(frozen=True)
class Decision:
    verdict: Literal["pass", "fail", "inconclusive", "wait"]
    action: Action
    reasons: list[str]
    gates: dict[str, dict[str, Any]]  # name -> {value, threshold, verdict}
    state: State  # the state after this decision

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "action": self.action,
            "reasons": self.reasons,
            "gates": self.gates,
            "state": self.state.to_json(),
        }


def decide(state: State, obs: Observations, now: float, config: RolloutConfig) -> Decision:
    if state.status != "running":
        return Decision("wait", "wait", [f"rollout already {state.status}"], {}, state)
    if now < state.step_started_at + config.soak_s:
        left = state.step_started_at + config.soak_s - now
        return Decision("wait", "wait", [f"soaking: {left:.0f}s left"], {}, state)
    gates = {**_serving_gates(state, obs, config), "kpi": _kpi_gate(state, obs)}
    failed = [f"{name}: {g['reason']}" for name, g in gates.items() if g["verdict"] == "fail"]
    unsure = [
        f"{name}: {g['reason']}" for name, g in gates.items() if g["verdict"] == "inconclusive"
    ]
    baseline = {arm: c.to_json() for arm, c in (obs.serving or {}).items()}
    if failed:
        return Decision("fail", "rollback", failed, gates, _ended(state, "rolled_back", now))
    if unsure:
        if state.holds + 1 > config.max_holds:
            reasons = [
                f"inconclusive for {state.holds + 1} soaks (ceiling {config.max_holds})",
                *unsure,
            ]
            return Decision("fail", "rollback", reasons, gates, _ended(state, "rolled_back", now))
        held = replace(state, holds=state.holds + 1, step_started_at=now)
        return Decision("inconclusive", "hold", unsure, gates, held)
    passed = [f"{name}: {g['reason']}" for name, g in gates.items()]
    if state.steps[state.index + 1] >= 100:
        promoted = replace(_ended(state, "promoted", now), index=state.index + 1)
        return Decision("pass", "promote", passed, gates, promoted)
    advanced = replace(
        state, index=state.index + 1, holds=0, step_started_at=now, baseline=baseline
    )
    return Decision("pass", "advance", passed, gates, advanced)


def _ended(state: State, status: Literal["promoted", "rolled_back"], now: float) -> State:
    return replace(state, status=status, step_started_at=now)


def _gate(verdict: str, reason: str, value: Any = None, threshold: Any = None) -> dict[str, Any]:
    return {"verdict": verdict, "reason": reason, "value": value, "threshold": threshold}


def _serving_gates(
    state: State, obs: Observations, config: RolloutConfig
) -> dict[str, dict[str, Any]]:
    if obs.serving is None:
        reason = f"serving metrics unreachable ({obs.serving_error})"
        return {"errors": _gate("inconclusive", reason), "latency": _gate("inconclusive", reason)}
    since = {
        arm: obs.serving.get(arm, ArmCounters()).minus(
            ArmCounters.from_json(state.baseline[arm]) if arm in state.baseline else None
        )
        for arm in (CANDIDATE, CONTROL)
    }
    cand, ctrl = since[CANDIDATE], since[CONTROL]
    if cand.requests < config.min_requests or ctrl.requests < config.min_requests:
        reason = (
            f"too little traffic this step: candidate {cand.requests:.0f}, control "
            f"{ctrl.requests:.0f} requests < {config.min_requests}"
        )
        value = {"candidate": cand.requests, "control": ctrl.requests}
        return {
            "errors": _gate("inconclusive", reason, value, config.min_requests),
            "latency": _gate("inconclusive", reason, value, config.min_requests),
        }
    cand_err, ctrl_err = cand.errors / cand.requests, ctrl.errors / ctrl.requests
    err_value = {"candidate": cand_err, "control": ctrl_err, "requests": cand.requests}
    err_text = (
        f"error share {cand_err:.4f} vs control {ctrl_err:.4f} (max +{config.max_error_delta})"
    )
    errors = _gate(
        "fail" if cand_err - ctrl_err > config.max_error_delta else "pass",
        err_text,
        err_value,
        config.max_error_delta,
    )
    cand_p95, ctrl_p95 = cand.p95(), ctrl.p95()
    if cand_p95 is None or ctrl_p95 is None:
        latency = _gate("inconclusive", "no latency histogram for an arm")
    else:
        limit = max(ctrl_p95 * config.max_p95_ratio, config.p95_floor_s)
        latency = _gate(
            "fail" if cand_p95 > limit else "pass",
            f"p95 {cand_p95 * 1000:.1f} ms vs control {ctrl_p95 * 1000:.1f} ms "
            f"(limit {limit * 1000:.1f} ms)",
            {"candidate_s": cand_p95, "control_s": ctrl_p95},
            limit,
        )
    return {"errors": errors, "latency": latency}


def _kpi_gate(state: State, obs: Observations) -> dict[str, Any]:
    report = obs.kpi
    if report is None or report.get("experiment") != state.experiment:
        return _gate("inconclusive", "no KPI report for this experiment yet")
    c = report["comparison"]
    d = c.get("difference") or {}
    value = {
        "users": {arm: k["users"] for arm, k in report["arms"].items()},
        "hit_rate": {arm: k["hit_rate"] for arm, k in report["arms"].items()},
        "delta": d.get("delta"),
        "cs_low": d.get("cs_low"),
        "cs_high": d.get("cs_high"),
        "srm_p_value": (c.get("srm") or {}).get("p_value"),
        "as_of_ms": report.get("as_of_ms"),
        "report": report.get("report_key"),
    }
    return _gate(c["verdict"], "; ".join(c["reasons"]), value, c["gate"])


# ---- the runner ---------------------------------------------------------------------------------
class RolloutError(Exception):
    """Bad input for a rollout (exit 2)."""


class RolloutMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = r = CollectorRegistry()
        self.step = Gauge("marquee_rollout_step", "Candidate traffic percent", registry=r)
        self.holds = Gauge("marquee_rollout_holds", "Inconclusive soaks at this step", registry=r)
        self.decisions = Counter(
            "marquee_rollout_decision_total", "Decisions", ("verdict", "action"), registry=r
        )
        self.gate_value = Gauge(
            "marquee_rollout_gate_value", "Value a gate read", ("gate", "series"), registry=r
        )
        self.gate_threshold = Gauge(
            "marquee_rollout_gate_threshold", "Threshold it was held to", ("gate",), registry=r
        )
        self.gate_pass = Gauge(
            "marquee_rollout_gate_verdict",
            "1 for the gate's verdict",
            ("gate", "verdict"),
            registry=r,
        )

    def record(self, decision: Decision) -> None:
        s = decision.state
        self.step.set(0 if s.status == "rolled_back" else s.steps[min(s.index, len(s.steps) - 1)])
        self.holds.set(s.holds)
        self.decisions.labels(decision.verdict, decision.action).inc()
        for gate, g in decision.gates.items():
            for verdict in ("pass", "fail", "inconclusive"):
                self.gate_pass.labels(gate, verdict).set(1 if g["verdict"] == verdict else 0)
            for series, value in _numbers(g["value"]):
                self.gate_value.labels(gate, series).set(value)
            threshold = g["threshold"]
            if isinstance(threshold, dict):
                threshold = threshold.get("margin")
            if isinstance(threshold, int | float):
                self.gate_threshold.labels(gate).set(threshold)


def _numbers(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [(prefix or "value", float(value))]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if k not in ("as_of_ms",):
                out += _numbers(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return []


@dataclass
class Controller:
    """Runs one rollout against a control plane. `observe()` returns Observations; `clock` and
    `sleep` are injected (sleep returns True when a stop was asked)."""

    cp: ControlPlane
    config: RolloutConfig
    observe: Callable[[State], Observations]
    clock: Callable[[], float]
    sleep: Callable[[float], bool]
    experiment: str | None = None
    control_kind: str | None = None
    by: str = "rollout"
    dry_run: bool = False
    metrics: RolloutMetrics = field(default_factory=RolloutMetrics)
    out: Callable[[dict[str, Any]], None] = lambda _d: None
    decisions: list[Decision] = field(default_factory=list)

    def run(self) -> int:
        """0 promoted, 3 rolled back, 1 stopped before the end (resume by running again)."""
        state = self.resume() or self.start()
        while state.status == "running":
            wake = state.step_started_at + self.config.soak_s
            if self.clock() < wake and self.sleep(wake - self.clock()):
                log.info("stop asked: leaving the rollout at step %d (resumable)", state.step)
                return 1
            decision = decide(state, self.observe(state), self.clock(), self.config)
            if decision.action == "wait":
                continue
            self._record(decision)
            state = decision.state
            self._apply(state)
        return 0 if state.status == "promoted" else 3

    # ---- start / resume ---------------------------------------------------------------------
    def resume(self) -> State | None:
        head = self.cp.head(ROLLOUT)
        if head is None or "state" not in head.data:
            return None
        state = State.from_json(head.data["state"])
        current = self.cp.experiment()
        live = current is not None and current.data.get("name") == state.experiment
        if state.status == "running" and live:
            if state.candidate != self.config.candidate:
                raise RolloutError(
                    f"rollout of {state.candidate} is running (experiment {state.experiment});"
                    " finish or end it first"
                )
            log.info("resuming %s at step %d", state.experiment, state.step)
            self._apply(state)  # the weights may not have been written before the crash
            return state
        if state.status != "running" and live and current.data.get("status") == "running":
            log.info(
                "finishing %s: %s was recorded but not applied", state.experiment, state.status
            )
            self._apply(state)
            return state
        return None

    def start(self) -> State:
        version, _kind = parse_model_ref(self.config.candidate)
        if version is None:
            raise RolloutError(f"candidate {self.config.candidate!r} must be vX.Y/kind")
        pointer = self.cp.pointer()
        if pointer is None:
            raise RolloutError("no production release to compare against: promote one first")
        production = pointer.data["version"]
        if production == version:
            raise RolloutError(f"{version} is already production")
        control = f"{production}/{self.control_kind or _kind}"
        name = self.experiment or f"rollout-{version}-{_kind}"
        current = self.cp.experiment()
        if (
            current is not None
            and current.data.get("status") == "running"
            and (current.data.get("name") != name)
        ):  # someone's A/B test: a rollout would silently replace its arms and salt
            raise RolloutError(
                f"experiment {current.data.get('name')} is running; end it before a rollout"
            )
        state = State(
            name, self.config.candidate, control, self.config.steps, step_started_at=self.clock()
        )
        state = replace(
            state, baseline={a: c.to_json() for a, c in (self.observe(state).serving or {}).items()}
        )
        arms = [
            {"name": CANDIDATE, "model": state.candidate, "weight": 0.0},
            {"name": REST, "model": control, "weight": 100.0},
            {"name": CONTROL, "model": control, "weight": 0.0},
        ]
        weights = step_weights(state.step)
        for arm in arms:
            arm["weight"] = weights[arm["name"]]
        start = Decision("pass", "start", [f"start at {state.step}%"], {}, state)
        if not self.dry_run:
            self.cp.set_experiment(
                {"name": name, "salt": name, "arms": arms, "status": "running"},
                by=self.by,
                reason=f"rollout of {state.candidate}: start at {state.step}%",
                action="rollout",
            )
        self._record(start)
        return state

    # ---- writes (none in a dry run) ---------------------------------------------------------
    def _record(self, decision: Decision) -> None:
        self.decisions.append(decision)
        self.metrics.record(decision)
        body = {**decision.to_json(), "config": self.config.to_json(), "at": self.clock()}
        self.out(body)
        if self.dry_run:
            return
        reason = "; ".join(decision.reasons)[:500]
        self.cp.append(ROLLOUT, body, by=self.by, reason=reason, action=decision.action)

    def _apply(self, state: State) -> None:
        if self.dry_run:
            return
        current = self.cp.experiment()
        running = current is not None and current.data.get("name") == state.experiment
        if not running:
            raise RolloutError(f"experiment {state.experiment} was replaced by someone else")
        if state.status == "running":
            weights = step_weights(state.step)
            have = {a["name"]: a["weight"] for a in current.data["arms"]}
            if have != weights:
                self.cp.set_weights(
                    weights, by=self.by, reason=f"rollout {state.experiment}: step {state.step}%"
                )
            return
        version, _ = parse_model_ref(state.candidate)
        if state.status == "promoted":
            pointer = self.cp.pointer()
            if pointer is None or pointer.data.get("version") != version:
                self.cp.promote(
                    version, by=self.by, reason=f"rollout {state.experiment} passed every step"
                )
        weights = step_weights(100) if state.status == "promoted" else ROLLED_BACK
        if current.data.get("status") == "running":
            arms = [{**a, "weight": weights[a["name"]]} for a in current.data["arms"]]
            self.cp.set_experiment(
                {**current.data, "arms": arms, "status": "ended"},
                by=self.by,
                reason=f"rollout {state.experiment}: {state.status}",
                action="rollout",
            )
