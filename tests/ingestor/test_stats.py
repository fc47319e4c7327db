"""ingestor.stats tested as statistics: false-alarm rates over seeded repeats, power for a known
effect, the minimum sample, and invariants (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestor.stats import (
    GateConfig,
    cs_halfwidth,
    difference,
    proportion_ci,
    srm,
    verdict,
)

REPEATS = 200
LOOKS = 20


def test_srm_false_alarm_rate_at_p_0001_over_seeded_repeats() -> None:
    rng = np.random.default_rng(7)
    weights = {"control": 5, "candidate": 5, "other": 90}
    flagged = 0
    p_values = []
    for _ in range(2000):
        n = int(rng.integers(500, 20_000))
        counts = rng.multinomial(n, [0.05, 0.05, 0.90])
        result = srm(dict(zip(weights, map(int, counts), strict=True)), weights)
        flagged += result.flagged
        p_values.append(result.p_value)
    # Expected 2 of 2000 at alpha 0.001; 8 would be p < 0.001 under Binomial(2000, 0.001).
    assert flagged <= 7
    # p-values are uniform under the null: a tenth of them below 0.1 (binomial noise ~0.007).
    assert abs(np.mean(np.array(p_values) < 0.1) - 0.1) < 0.025


def test_srm_detects_a_forced_imbalance_and_ignores_a_negligible_one() -> None:
    rng = np.random.default_rng(8)
    detected = 0
    for _ in range(200):  # 50/50 configured, 46/54 served: a broken assignment
        counts = rng.multinomial(4000, [0.46, 0.54])
        detected += srm(
            {"control": counts[0], "candidate": counts[1]}, {"control": 1, "candidate": 1}
        ).flagged
    assert detected >= 190
    everything_in_one = srm({"control": 0, "candidate": 400}, {"control": 1, "candidate": 1})
    assert everything_in_one.flagged and everything_in_one.p_value < 1e-50
    # 100 million users, 0.05 % off: "significant" but below the practical floor of 0.1 %.
    tiny = srm({"a": 50_050_000, "b": 49_950_000}, {"a": 1, "b": 1})
    assert tiny.p_value < 0.001 and not tiny.flagged


def _aa_paths(rng: np.random.Generator, p_c: float, p_t: float, per_look: int) -> np.ndarray:
    """Cumulative (hits_t, n_t, hits_c, n_c) at each look: shape (LOOKS, 4)."""
    hits_t = np.cumsum(rng.binomial(per_look, p_t, LOOKS))
    hits_c = np.cumsum(rng.binomial(per_look, p_c, LOOKS))
    n = per_look * np.arange(1, LOOKS + 1)
    return np.stack([hits_t, n, hits_c, n], axis=1)


def test_sequential_interval_false_alarm_rate_under_continuous_peeking() -> None:
    """200 seeded A/A experiments, 20 looks each: the always-valid interval excludes 0 at some
    look in at most ~5 % of them, while the fixed interval read at every look does far worse
    (which is why the fixed one is not what the controller reads)."""
    rng = np.random.default_rng(11)
    cs_alarms = ci_alarms = harm_alarms = 0
    for _ in range(REPEATS):
        path = _aa_paths(rng, 0.15, 0.15, per_look=100)
        looks = [
            difference(int(ht), int(nt), int(hc), int(nc), 0.05, n_star=2000)
            for ht, nt, hc, nc in path
        ]
        cs_alarms += any(d.cs_low > 0 or d.cs_high < 0 for d in looks)
        ci_alarms += any(d.ci_low > 0 or d.ci_high < 0 for d in looks)
        harm_alarms += any(d.cs_high < 0 for d in looks)
    # 5 % of 200 = 10, binomial sd ~3: allow noise up to 16 (p ~0.03 of exceeding by chance).
    assert cs_alarms <= 16, cs_alarms
    assert harm_alarms <= 10, harm_alarms  # one-sided: ~2.5 %
    assert ci_alarms >= 2 * max(cs_alarms, 10), (ci_alarms, cs_alarms)  # peeking inflates it


def test_sequential_verdict_has_power_for_a_known_effect() -> None:
    rng = np.random.default_rng(12)
    config = GateConfig(margin=0.05, n_star=2000, min_users=200, min_hits=30)
    failed = passed = 0
    for _ in range(REPEATS):
        worse = _aa_paths(rng, 0.20, 0.12, per_look=100)  # 8 points worse
        same = _aa_paths(rng, 0.20, 0.20, per_look=150)
        failed += any(
            verdict((int(hc), int(nc)), (int(ht), int(nt)), config).verdict == "fail"
            for ht, nt, hc, nc in worse
        )
        final = same[-1]
        passed += (
            verdict((int(final[2]), int(final[3])), (int(final[0]), int(final[1])), config).verdict
            == "pass"
        )
    assert failed >= 0.95 * REPEATS, failed  # the worse candidate is caught
    # At 3000 users per arm (sequential half-width ~3.1 points) an equal candidate is shown
    # non-inferior with a 5-point margin nearly always (normal approximation: ~97 %).
    assert passed >= 0.9 * REPEATS, passed


def test_interval_width_matches_growthbook_at_n_star() -> None:
    se = 0.01
    assert cs_halfwidth(se, 5000, 0.05, 5000) / (1.959964 * se) == pytest.approx(1.55, abs=0.01)


def test_minimum_sample_before_any_verdict() -> None:
    config = GateConfig(min_users=200, min_hits=30)
    # A huge effect but too few users: no verdict yet.
    d = verdict((90, 150), (0, 150), config)
    assert d.verdict == "inconclusive" and "minimum sample" in d.reasons[0]
    d = verdict((10, 1000), (5, 1000), config)  # enough users, too few hits
    assert d.verdict == "inconclusive" and "hits 15 < 30" in d.reasons[0]
    assert verdict((300, 1000), (100, 1000), config).verdict == "fail"


def test_srm_holds_the_verdict_even_with_a_clear_effect() -> None:
    result = srm({"control": 2000, "candidate": 400}, {"control": 1, "candidate": 1})
    d = verdict((400, 2000), (100, 400), GateConfig(), result)
    assert d.verdict == "inconclusive" and "sample ratio mismatch" in d.reasons[0]


counts = st.integers(1, 5000)


@st.composite
def arms(draw: st.DrawFn) -> tuple[int, int]:
    n = draw(counts)
    return draw(st.integers(0, n)), n


@given(arms(), arms(), st.sampled_from([0.01, 0.05, 0.1]), st.integers(100, 100_000))
@settings(max_examples=200, deadline=None)
def test_interval_invariants(
    c: tuple[int, int], t: tuple[int, int], alpha: float, n_star: int
) -> None:
    d = difference(t[0], t[1], c[0], c[1], alpha, n_star)
    assert d.delta == pytest.approx(t[0] / t[1] - c[0] / c[1])
    # symmetric around the estimate; the sequence is never narrower than the fixed interval
    assert d.cs_high - d.delta == pytest.approx(d.delta - d.cs_low)
    assert d.cs_low <= d.ci_low + 1e-12 and d.cs_high >= d.ci_high - 1e-12
    # swapping the arms mirrors everything
    m = difference(c[0], c[1], t[0], t[1], alpha, n_star)
    assert m.delta == pytest.approx(-d.delta) and m.cs_low == pytest.approx(-d.cs_high)


@given(arms(), arms())
@settings(max_examples=200, deadline=None)
def test_verdict_invariants(c: tuple[int, int], t: tuple[int, int]) -> None:
    config = GateConfig(min_users=50, min_hits=5)
    d = verdict(c, t, config)
    assert d.verdict in ("pass", "fail", "inconclusive") and d.reasons
    if min(c[1], t[1]) < 50 or c[0] + t[0] < 5:
        assert d.verdict == "inconclusive"
    elif d.verdict == "fail":
        assert d.difference.cs_high < 0
    elif d.verdict == "pass":
        assert d.difference.cs_low > -config.margin


@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(0, 10_000), min_size=2), st.integers(1, 10)
)
@settings(max_examples=200, deadline=None)
def test_srm_invariants(observed: dict[str, int], scale: int) -> None:
    weights = {a: 1.0 for a in observed}
    result = srm(observed, weights)
    assert 0.0 <= result.p_value <= 1.0 and result.dof == len(observed) - 1
    assert sum(result.expected.values()) == pytest.approx(sum(observed.values()))
    # Weights are relative: scaling them changes nothing.
    assert srm(observed, {a: scale * 1.0 for a in observed}).p_value == pytest.approx(
        result.p_value
    )
    # Counts exactly proportional to the weights are never flagged.
    assert not srm({a: 100 for a in observed}, weights).flagged


@given(arms(), st.sampled_from([0.01, 0.05, 0.2]))
def test_wilson_interval_contains_the_rate(arm: tuple[int, int], alpha: float) -> None:
    hits, n = arm
    low, high = proportion_ci(hits, n, alpha)
    assert 0.0 <= low <= hits / n + 1e-12 and hits / n - 1e-12 <= high <= 1.0
    wider_low, wider_high = proportion_ci(hits, n, alpha / 2)
    assert wider_low <= low + 1e-12 and wider_high >= high - 1e-12
