"""The rollout controller: the pure decision table, the runner on a fake clock against a real
(in-memory) control plane, crash and resume, dry run, metrics and the CLI's exit codes."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest

from model_registry.control import ROLLOUT, ControlPlane
from model_registry.registry import Registry
from recommender.cli import rollout_main
from recommender.rollout import (
    ArmCounters,
    Controller,
    Observations,
    RolloutConfig,
    RolloutError,
    State,
    decide,
    histogram_quantile,
    parse_serving_metrics,
    parse_steps,
    step_weights,
)

SOAK = 600.0
CONFIG = RolloutConfig(candidate="v0.2/als", steps=(5, 25, 50, 100), soak_s=SOAK, max_holds=2)


def kpi(experiment: str, verdict: str, delta: float = 0.0, half: float = 0.01) -> dict[str, Any]:
    return {
        "experiment": experiment,
        "as_of_ms": 1,
        "report_key": f"kpi/{experiment}/report-x.json",
        "arms": {
            "control": {"users": 1000, "hit_rate": 0.2},
            "candidate": {"users": 1000, "hit_rate": 0.2 + delta},
        },
        "comparison": {
            "verdict": verdict,
            "reasons": [f"kpi says {verdict}"],
            "difference": {"delta": delta, "cs_low": delta - half, "cs_high": delta + half},
            "srm": {"p_value": 0.4},
            "gate": {"margin": 0.02},
        },
    }


def counters(requests: float, errors: float = 0.0, p95_bucket: float = 0.01) -> ArmCounters:
    """A histogram whose every request took just under `p95_bucket` seconds."""
    les = (0.005, 0.01, 0.05, 0.1, 0.5, float("inf"))
    return ArmCounters(
        requests, errors, tuple((le, requests if le >= p95_bucket else 0.0) for le in les)
    )


def serving(n: float, cand_errors: float = 0.0, cand_latency: float = 0.01) -> dict:
    return {
        "control": counters(n),
        "candidate": counters(n, cand_errors, cand_latency),
        "rest": counters(10 * n),
    }


STATE = State("exp", "v0.2/als", "v0.1/als", (5, 25, 50, 100), step_started_at=0.0)


def test_steps_and_weights() -> None:
    assert parse_steps("5,25,50,100") == (5, 25, 50, 100)
    assert step_weights(5) == {"candidate": 5.0, "rest": 90.0, "control": 5.0}
    assert step_weights(50) == {"candidate": 50.0, "rest": 0.0, "control": 50.0}
    for bad in ("", "5,25", "25,5,100", "5,75,100", "100", "0,100", "5,5,100", "a,100"):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_histogram_quantile_like_prometheus() -> None:
    buckets = ((0.1, 50.0), (0.2, 90.0), (0.4, 100.0), (float("inf"), 100.0))
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.95, ((0.1, 0.0), (float("inf"), 0.0))) is None
    assert histogram_quantile(0.99, ((0.1, 10.0), (float("inf"), 100.0))) == 0.1


def test_serving_metrics_summed_over_replicas_without_probes() -> None:
    replica = """# TYPE marquee_requests_total counter
marquee_requests_total{endpoint="/recommend/{user_id}",arm="candidate",status="200"} 90
marquee_requests_total{endpoint="/recommend/{user_id}",arm="candidate",status="500"} 10
marquee_requests_total{endpoint="/recommend/{user_id}",arm="candidate",status="200",probe="1"} 7
marquee_requests_total{endpoint="/healthz",arm="",status="200"} 1000
# TYPE marquee_request_duration_seconds histogram
marquee_request_duration_seconds_bucket{arm="candidate",status="200",le="0.01"} 80
marquee_request_duration_seconds_bucket{arm="candidate",status="200",le="+Inf"} 90
marquee_request_duration_seconds_bucket{arm="candidate",status="500",le="0.01"} 10
marquee_request_duration_seconds_bucket{arm="candidate",status="500",le="+Inf"} 10
"""
    arms = parse_serving_metrics([replica, replica])
    assert set(arms) == {"candidate"}
    c = arms["candidate"]
    assert (c.requests, c.errors) == (200, 20)
    assert c.buckets == ((0.01, 180.0), (float("inf"), 200.0))
    since = c.minus(ArmCounters(100, 10, ((0.01, 90.0), (float("inf"), 100.0))))
    assert (since.requests, since.errors, since.buckets[0]) == (100, 10, (0.01, 90.0))
    assert c.minus(ArmCounters(500, 0, ())) is c  # a restarted replica counts from zero


def test_decision_table() -> None:
    def run(state: State = STATE, now: float = SOAK, **obs: Any) -> Any:
        observations = Observations(
            obs.get("kpi", kpi("exp", "pass")), obs.get("serving", serving(100)), obs.get("err")
        )
        return decide(state, observations, now, CONFIG)

    assert run(now=SOAK - 1).action == "wait"
    d = run()
    assert (d.verdict, d.action, d.state.step, d.state.step_started_at) == (
        "pass",
        "advance",
        25,
        SOAK,
    )
    assert d.state.baseline["candidate"]["requests"] == 100  # the next step counts from here
    assert d.gates["kpi"]["value"]["delta"] == 0.0 and d.gates["kpi"]["threshold"]["margin"]
    d = run(kpi=kpi("exp", "fail", -0.1))
    assert (d.verdict, d.action, d.state.status) == ("fail", "rollback", "rolled_back")
    assert "kpi: kpi says fail" in d.reasons
    d = run(serving=serving(100, cand_errors=5))
    assert d.action == "rollback" and d.gates["errors"]["value"]["candidate"] == 0.05
    d = run(serving=serving(100, cand_latency=0.5))
    assert d.action == "rollback" and "p95" in d.gates["latency"]["reason"]
    d = run(serving=serving(100, cand_latency=0.05))  # 5x control but under the 50 ms floor
    assert d.action == "advance"
    # no evidence is not a pass: hold, and past the ceiling, fail
    for obs in (
        {"kpi": None},
        {"kpi": kpi("other", "pass")},
        {"serving": serving(5)},
        {"serving": None, "err": "refused"},
        {"kpi": kpi("exp", "inconclusive")},
    ):
        d = run(**obs)
        assert (d.verdict, d.action, d.state.holds) == ("inconclusive", "hold", 1), obs
    held = replace(STATE, holds=2)
    d = run(held, kpi=kpi("exp", "inconclusive"))
    assert d.action == "rollback" and "inconclusive for 3 soaks" in d.reasons[0]
    d = run(replace(STATE, index=2))
    assert (d.action, d.state.status, d.state.step) == ("promote", "promoted", 100)
    assert run(d.state).action == "wait"  # nothing after the end


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> bool:
        self.now += seconds
        return False


@pytest.fixture
def cp() -> ControlPlane:
    registry = Registry.open(f"memory://rollout-{uuid.uuid4().hex}")
    for version in ("v0.1", "v0.2"):
        registry.store.put(f"{version}/manifest.json", json.dumps({"version": version}).encode())
    clock = FakeClock()
    plane = ControlPlane(registry, clock=clock)
    plane.promote("v0.1", by="test", reason="baseline")
    return plane


class World:
    """Observations that depend on the controller's weights: each soak serves requests in
    proportion to the candidate's share, and the KPI follows `verdicts` (one per look)."""

    def __init__(self, cp: ControlPlane, verdicts: list[str], crash_after: int | None = None):
        self.cp, self.verdicts, self.looks, self.crash_after = cp, verdicts, 0, crash_after
        self.total = 0.0

    def __call__(self, state: State) -> Observations:
        if self.crash_after is not None and self.looks >= self.crash_after:
            raise SystemExit("controller killed")
        exp = self.cp.experiment()
        live = exp is not None and exp.data["name"] == state.experiment
        # what the replicas serve: the recorded weights (a dry run records none: its plan)
        share = (
            {a["name"]: a["weight"] for a in exp.data["arms"]} if live else step_weights(state.step)
        )
        self.total += 1000 * share.get("candidate", 0) / 100
        verdict = self.verdicts[min(self.looks, len(self.verdicts) - 1)] if self.looks else "pass"
        self.looks += 1
        delta = -0.1 if verdict == "fail" else 0.0
        return Observations(kpi(state.experiment, verdict, delta), serving(self.total))


def controller(cp: ControlPlane, world: World, clock: FakeClock, **kw: Any) -> Controller:
    return Controller(cp, CONFIG, world, clock, clock.sleep, **kw)


def test_a_good_candidate_is_promoted_step_by_step(cp: ControlPlane) -> None:
    clock = FakeClock()
    c = controller(cp, World(cp, ["pass"]), clock)
    assert c.run() == 0
    assert cp.pointer().data["version"] == "v0.2"
    exp = cp.experiment().data
    assert exp["status"] == "ended" and {a["name"]: a["weight"] for a in exp["arms"]} == {
        "candidate": 100.0,
        "rest": 0.0,
        "control": 0.0,
    }
    records, _ = cp.history(ROLLOUT)
    assert [r.action for r in reversed(records)] == ["start", "advance", "advance", "promote"]
    assert clock.now == 1_000_000.0 + 3 * SOAK  # three soaks, no real sleeping
    weights, _ = cp.history("experiment")
    candidate = [
        next(a["weight"] for a in r.data["arms"] if a["name"] == "candidate")
        for r in reversed(weights)
    ]
    assert candidate == [5.0, 25.0, 50.0, 100.0]
    get = c.metrics.registry.get_sample_value
    assert get("marquee_rollout_step") == 100
    assert get("marquee_rollout_decision_total", {"verdict": "pass", "action": "promote"}) == 1
    assert get("marquee_rollout_gate_value", {"gate": "kpi", "series": "delta"}) == 0.0


def test_a_worse_candidate_is_rolled_back_with_its_reasons(cp: ControlPlane) -> None:
    clock = FakeClock()
    assert controller(cp, World(cp, ["pass", "fail"]), clock).run() == 3
    assert cp.pointer().data["version"] == "v0.1"
    exp = cp.experiment().data
    assert exp["status"] == "ended" and exp["arms"][0] == {
        "name": "candidate",
        "model": "v0.2/als",
        "weight": 0.0,
    }
    last = cp.head(ROLLOUT)
    assert last.action == "rollback" and "kpi says fail" in last.reason
    assert last.data["gates"]["kpi"]["value"]["cs_high"] < 0
    assert last.data["state"]["status"] == "rolled_back"


def test_inconclusive_holds_then_fails_at_the_ceiling(cp: ControlPlane) -> None:
    clock = FakeClock()
    assert controller(cp, World(cp, ["inconclusive"]), clock).run() == 3
    actions = [r.action for r in reversed(cp.history(ROLLOUT)[0])]
    assert actions == ["start", "hold", "hold", "rollback"]


def test_a_crashed_controller_resumes_from_the_recorded_state(cp: ControlPlane) -> None:
    clock = FakeClock()
    with pytest.raises(SystemExit):  # dies while observing the second step
        controller(cp, World(cp, ["pass"], crash_after=2), clock).run()
    head = cp.head(ROLLOUT)
    assert head.action == "advance" and head.data["state"]["index"] == 1
    # A crash between the record and the weights: the record says 50 %, the weights 25 %.
    state = State.from_json(head.data["state"])
    cp.append(
        ROLLOUT,
        {**head.data, "state": replace(state, index=2).to_json()},
        by="test",
        reason="advance",
        action="advance",
    )
    resumed = controller(cp, World(cp, ["pass"]), clock)
    assert resumed.run() == 0
    actions = [r.action for r in reversed(cp.history(ROLLOUT)[0])]
    assert actions.count("start") == 1 and actions[-1] == "promote"
    weights = [
        next(a["weight"] for a in r.data["arms"] if a["name"] == "candidate")
        for r in reversed(cp.history("experiment")[0])
    ]
    assert weights == [5.0, 25.0, 50.0, 100.0]  # resumed at 50, re-applied before the soak


def test_a_recorded_rollback_not_yet_applied_is_finished_on_restart(cp: ControlPlane) -> None:
    clock = FakeClock()
    c = controller(cp, World(cp, ["pass"]), clock)
    state = c.start()
    cp.append(
        ROLLOUT,
        {"state": replace(state, status="rolled_back").to_json()},
        by="test",
        reason="x",
        action="rollback",
    )
    assert controller(cp, World(cp, ["pass"]), clock).run() == 3
    assert cp.experiment().data["status"] == "ended"


def test_another_running_rollout_is_refused(cp: ControlPlane) -> None:
    clock = FakeClock()
    controller(cp, World(cp, ["pass"]), clock).start()
    other = Controller(
        cp, replace(CONFIG, candidate="v0.1/popularity"), World(cp, ["pass"]), clock, clock.sleep
    )
    with pytest.raises(RolloutError, match="is running"):
        other.run()


def test_dry_run_writes_nothing(cp: ControlPlane) -> None:
    clock = FakeClock()
    printed: list[dict] = []
    before = (cp.head_seq("experiment"), cp.head_seq(ROLLOUT), cp.head_seq("pointer"))
    c = controller(cp, World(cp, ["pass"]), clock, dry_run=True, out=printed.append)
    assert c.run() == 0
    assert (cp.head_seq("experiment"), cp.head_seq(ROLLOUT), cp.head_seq("pointer")) == before
    assert [p["action"] for p in printed] == ["start", "advance", "advance", "promote"]


def test_bad_candidates_are_refused(cp: ControlPlane) -> None:
    clock = FakeClock()
    for candidate, message in (("als", "vX.Y/kind"), ("v0.1/als", "already production")):
        c = Controller(
            cp, replace(CONFIG, candidate=candidate), World(cp, ["pass"]), clock, clock.sleep
        )
        with pytest.raises(RolloutError, match=message):
            c.run()


def test_cli_exit_codes(tmp_path, capsys: pytest.CaptureFixture) -> None:
    registry = (tmp_path / "registry").as_uri()
    base = ["--registry", registry, "--candidate", "v0.2/als", "--kpi-store", registry]
    assert (
        rollout_main([*base, "--metrics", "http://127.0.0.1:9/metrics", "--steps", "5,75,100"]) == 2
    )
    assert "equal-size control" in capsys.readouterr().err
    assert rollout_main([*base, "--metrics", "http://127.0.0.1:9/metrics", "--soak", "soon"]) == 2
    assert rollout_main([*base, "--metrics", "http://127.0.0.1:9/metrics"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_a_stop_during_a_soak_leaves_a_resumable_rollout(cp: ControlPlane) -> None:
    clock = FakeClock()
    stopped = Controller(cp, CONFIG, World(cp, ["pass"]), clock, lambda _s: True)
    assert stopped.run() == 1  # SIGTERM while soaking: nothing decided, nothing undone
    assert cp.head(ROLLOUT).action == "start"
    assert controller(cp, World(cp, ["pass"]), clock).run() == 0
    assert [r.action for r in reversed(cp.history(ROLLOUT)[0])].count("start") == 1


def test_a_running_experiment_of_someone_else_is_not_replaced(cp: ControlPlane) -> None:
    arms = [
        {"name": "a", "model": "als", "weight": 1},
        {"name": "b", "model": "itemcf", "weight": 1},
    ]
    cp.set_experiment({"name": "ab-test", "salt": "s", "arms": arms}, by="test", reason="A/B")
    clock = FakeClock()
    with pytest.raises(RolloutError, match="ab-test is running"):
        controller(cp, World(cp, ["pass"]), clock).run()
    assert cp.experiment().data["name"] == "ab-test" and cp.head(ROLLOUT) is None


def test_observer_reads_the_kpi_report_and_survives_a_dead_replica() -> None:
    from model_registry.storage import open_store
    from recommender.cli import make_observer

    store = open_store(f"memory://kpi-{uuid.uuid4().hex}")
    observe = make_observer(store, ["http://127.0.0.1:9/metrics"])
    first = observe(STATE)
    assert first.kpi is None and first.serving is None and first.serving_error
    store.put("kpi/exp/latest.json", json.dumps(kpi("exp", "pass")).encode())
    assert observe(STATE).kpi["comparison"]["verdict"] == "pass"
    d = decide(STATE, observe(STATE), SOAK, CONFIG)
    assert d.action == "hold" and "serving metrics unreachable" in d.gates["errors"]["reason"]
