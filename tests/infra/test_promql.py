"""The PromQL reference finder the live dashboard test relies on."""

from __future__ import annotations

from tests.infra.promql import problems, refs


def test_selectors_matchers_and_grouping() -> None:
    found = refs(
        'histogram_quantile(0.95, sum by (le, arm) (rate(marquee_request_duration_seconds_bucket'
        '{endpoint=~"/recommend.*", status!~"5.."}[5m])))'
    )
    assert found.selectors == [
        ("marquee_request_duration_seconds_bucket", {"endpoint", "status"})
    ]
    assert found.grouping == {"le", "arm"}


def test_aggregators_keywords_offsets_and_subqueries_are_not_metrics() -> None:
    found = refs(
        "(time() - min by (version) (min_over_time(timestamp(marquee_model_info)[9d:1h])))"
        " > 8 * 86400 and on (version) group by (version) (marquee_model_info == 1)"
        " or vector(0) unless foo offset 1h"
    )
    assert found.metrics == {"marquee_model_info", "foo"}
    assert found.grouping == {"version"}


def test_bare_matchers_and_name_matcher() -> None:
    found = refs('{__name__="up", job="recommender"} == bool 0')
    assert found.selectors == [("up", {"job"})]


def test_group_left_and_ignoring() -> None:
    found = refs(
        "sum by (topic, reason) (rate(ingest_invalid_total[10m])) / ignoring (reason)"
        " group_left sum by (topic) (rate(ingest_consumed_total[10m]))"
    )
    assert found.metrics == {"ingest_invalid_total", "ingest_consumed_total"}
    assert found.grouping == {"topic", "reason"}


def test_problems_names_missing_metrics_and_labels() -> None:
    exported = {"marquee_requests_total": {"endpoint", "status", "job", "instance"}}
    queries = {
        "ok": 'sum by (status) (rate(marquee_requests_total{endpoint="/x"}[5m]))',
        "bad label": 'marquee_requests_total{arm="a"}',
        "bad grouping": "sum by (arm) (marquee_requests_total)",
        "bad metric": "rate(marquee_nothing_total[5m])",
    }
    assert problems(queries, exported) == [
        "bad label: marquee_requests_total has no label 'arm'",
        "bad grouping: no metric of the query has label 'arm'",
        "bad metric: no target exports marquee_nothing_total",
    ]
