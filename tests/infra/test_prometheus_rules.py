"""promtool checks the Prometheus config and rules and runs the rule unit tests; every alert has
a unit test where it fires and one where it must stay quiet, and a runbook entry."""

from __future__ import annotations

import yaml

from tests.helpers import REPO
from tests.infra.tools import INFRA, run, tool

PROM = INFRA / "prometheus"
WHY = "Debian package prometheus: `make tools` installs it as root"


def _rules() -> dict[str, dict]:
    out = {}
    for path in sorted((PROM / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule.get("alert") or rule["record"]] = rule
    return out


def _alerts() -> dict[str, dict]:
    return {name: rule for name, rule in _rules().items() if "alert" in rule}


def test_config_and_rules_are_valid() -> None:
    promtool = tool("promtool", WHY)
    result = run([promtool, "check", "config", str(PROM / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    promtool = tool("promtool", WHY)
    files = sorted((PROM / "tests").glob("*.test.yml"))
    assert files
    result = run([promtool, "test", "rules", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_tests() -> tuple[set[str], set[str]]:
    fires, quiet = set(), set()
    for path in (PROM / "tests").glob("*.test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    return fires, quiet


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    """'Quiet' means either a case expecting no alert or, in a firing case, other series that
    are not among the expected alerts (promtool fails on any unexpected alert)."""
    fires, quiet = _alert_tests()
    alerts = set(_alerts())
    assert alerts - fires == set(), "alerts no unit test fires"
    missing_quiet = {a for a in alerts - quiet if not _has_quiet_series(a)}
    assert missing_quiet == set(), "alerts without a case that must not fire"


def _has_quiet_series(alert: str) -> bool:
    """A firing case whose input has a series of a metric the alert's expression names (or
    that its recording rules name) whose labels are not among the expected alerts'."""
    expr = _expanded_expr(alert)
    for path in (PROM / "tests").glob("*.test.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["alertname"] != alert or not check.get("exp_alerts"):
                    continue
                expected = [e["exp_labels"] for e in check["exp_alerts"]]
                for series in case["input_series"]:
                    if series["series"].split("{")[0] not in expr:
                        continue
                    labels = _labels(series["series"])
                    clash = any(
                        all(labels.get(k) == v for k, v in exp.items() if k in labels)
                        for exp in expected
                    )
                    if not clash:
                        return True
    return False


def _expanded_expr(alert: str) -> str:
    rules = _rules()
    expr = rules[alert]["expr"]
    for name, rule in rules.items():
        if "record" in rule and name in expr:
            expr += " " + rule["expr"]
    return expr


def _labels(series: str) -> dict[str, str]:
    inner = series[series.index("{") + 1 : series.rindex("}")]
    pairs = [p.split("=", 1) for p in inner.split('",') if "=" in p]
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def test_every_alert_has_a_runbook_entry() -> None:
    doc = (REPO / "docs" / "operations.md").read_text().lower()
    for name, rule in _alerts().items():
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert f"### {name.lower()}" in doc, f"docs/operations.md has no '### {name}' section"
        assert rule["labels"]["severity"] in {"page", "ticket"}
