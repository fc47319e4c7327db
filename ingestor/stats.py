"""Experiment statistics: sample-ratio mismatch, difference of proportions, an always-valid
confidence sequence and the verdict a rollout step acts on.

Users are the unit: every count here is of users (a user who asked ten times is one trial).

- SRM: Pearson chi-square of users per arm against the configured weights; flagged at
  p < 0.001 (GrowthBook, Eppo) AND when some arm's share is off by more than `min_deviation`
  (absolute), because at large n a negligible imbalance is still "significant".
- Difference: candidate hit rate minus control hit rate, Wald standard error
  `se = sqrt(p_t(1-p_t)/n_t + p_c(1-p_c)/n_c)`, fixed-horizon interval `delta ± z·se`.
- Confidence sequence (GrowthBook's asymptotic CS, Waudby-Smith et al.): with N = n_t + n_c,
  `delta ± se·sqrt(N)·sqrt(2(Nρ²+1)/(N²ρ²)·log(sqrt(Nρ²+1)/α))`,
  `ρ = sqrt((-2 log α + log(-2 log α + 1)) / N*)`. It holds at every look simultaneously with
  probability >= 1-α (asymptotically), so a controller may read it after every step without
  inflating false alarms; at N = N* it is ~1.55x the fixed interval (tested).
- Verdict (non-inferiority by `margin`, harm by the sequential bound): below the minimum sample
  or under SRM -> inconclusive; upper bound < 0 -> fail (significant harm); lower bound > -margin
  -> pass; else inconclusive. Every verdict carries its reasons and the numbers behind them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scipy.stats import chi2, norm

Verdict = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Srm:
    chi2: float
    dof: int
    p_value: float
    flagged: bool
    observed: dict[str, int]
    expected: dict[str, float]
    max_deviation: float  # largest |observed share - expected share|
    alpha: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def srm(
    counts: Mapping[str, int],
    weights: Mapping[str, float],
    alpha: float = 0.001,
    min_deviation: float = 0.001,
) -> Srm:
    """Chi-square goodness of fit of users per arm to the weights (arms with weight > 0)."""
    arms = [a for a in weights if weights[a] > 0]
    if len(arms) < 2:
        raise ValueError("SRM needs at least two arms with a weight above 0")
    total_w = sum(weights[a] for a in arms)
    n = sum(int(counts.get(a, 0)) for a in arms)
    observed = {a: int(counts.get(a, 0)) for a in arms}
    expected = {a: n * weights[a] / total_w for a in arms}
    if n == 0:
        return Srm(0.0, len(arms) - 1, 1.0, False, observed, expected, 0.0, alpha)
    stat = sum((observed[a] - expected[a]) ** 2 / expected[a] for a in arms)
    p_value = float(chi2.sf(stat, len(arms) - 1))
    deviation = max(abs(observed[a] / n - weights[a] / total_w) for a in arms)
    flagged = p_value < alpha and deviation > min_deviation
    return Srm(float(stat), len(arms) - 1, p_value, flagged, observed, expected, deviation, alpha)


def proportion_ci(hits: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of one arm's rate (sane at 0 or n hits, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    z = float(norm.ppf(1 - alpha / 2))
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def cs_rho(alpha: float, n_star: float) -> float:
    """GrowthBook's tuning: the CS is tightest around N = n_star total units."""
    a = -2 * math.log(alpha)
    return math.sqrt((a + math.log(a + 1)) / n_star)


def cs_halfwidth(se: float, n: int, alpha: float, n_star: float) -> float:
    """Half-width of the asymptotic confidence sequence for an estimate with standard error
    `se` from `n` units in all (se·sqrt(n) is the per-unit standard deviation)."""
    if n <= 0:
        return math.inf
    rho2 = cs_rho(alpha, n_star) ** 2
    nr = n * rho2
    return (
        se
        * math.sqrt(n)
        * math.sqrt(2 * (nr + 1) / (n * n * rho2) * math.log(math.sqrt(nr + 1) / alpha))
    )


@dataclass(frozen=True)
class Difference:
    delta: float  # candidate rate - control rate
    se: float
    ci_low: float  # fixed-horizon interval (valid for one look only)
    ci_high: float
    cs_low: float  # always-valid confidence sequence (valid at every look)
    cs_high: float
    alpha: float
    n_star: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def difference(
    hits_t: int, n_t: int, hits_c: int, n_c: int, alpha: float = 0.05, n_star: float = 5000
) -> Difference:
    if n_t <= 0 or n_c <= 0:
        raise ValueError("both arms need at least one user")
    p_t, p_c = hits_t / n_t, hits_c / n_c
    se = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    delta = p_t - p_c
    z = float(norm.ppf(1 - alpha / 2))
    half = cs_halfwidth(se, n_t + n_c, alpha, n_star)
    return Difference(
        delta, se, delta - z * se, delta + z * se, delta - half, delta + half, alpha, n_star
    )


@dataclass(frozen=True)
class GateConfig:
    """The thresholds a verdict is judged by; recorded beside every verdict."""

    alpha: float = 0.05  # two-sided, of the confidence sequence
    margin: float = 0.02  # non-inferiority margin, absolute hit-rate points (0.02 = 2 points)
    n_star: float = 5000  # confidence-sequence tuning: total users where it is tightest
    min_users: int = 200  # per arm, before any verdict
    min_hits: int = 30  # both arms together, before any verdict
    srm_alpha: float = 0.001
    srm_min_deviation: float = 0.001

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    difference: Difference | None = None
    srm: Srm | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "difference": self.difference.to_json() if self.difference else None,
            "srm": self.srm.to_json() if self.srm else None,
        }


def verdict(
    control: tuple[int, int],
    candidate: tuple[int, int],
    config: GateConfig,
    srm_result: Srm | None = None,
) -> Decision:
    """`control` and `candidate` are (hits, users). Reasons name the rule and its numbers."""
    (h_c, n_c), (h_t, n_t) = control, candidate
    reasons: list[str] = []
    if srm_result is not None and srm_result.flagged:
        reasons.append(
            f"sample ratio mismatch: p={srm_result.p_value:.2e} < {srm_result.alpha} "
            f"(users {srm_result.observed}, expected {_rounded(srm_result.expected)})"
        )
    if min(n_c, n_t) < config.min_users:
        reasons.append(f"minimum sample: users per arm {n_c}/{n_t} < {config.min_users}")
    if h_c + h_t < config.min_hits:
        reasons.append(f"minimum sample: hits {h_c + h_t} < {config.min_hits}")
    diff = difference(h_t, n_t, h_c, n_c, config.alpha, config.n_star) if n_c and n_t else None
    if reasons:
        return Decision("inconclusive", reasons, diff, srm_result)
    assert diff is not None
    bounds = (
        f"delta {diff.delta:+.4f}, sequential {1 - config.alpha:.0%} [{diff.cs_low:+.4f}, "
        f"{diff.cs_high:+.4f}]"
    )
    if diff.cs_high < 0:
        return Decision("fail", [f"candidate worse: {bounds} lies below 0"], diff, srm_result)
    if diff.cs_low > -config.margin:
        return Decision(
            "pass", [f"non-inferior: {bounds} lower bound > -{config.margin}"], diff, srm_result
        )
    return Decision(
        "inconclusive",
        [f"not yet non-inferior: {bounds} includes -{config.margin} and 0"],
        diff,
        srm_result,
    )


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in values.items()}
