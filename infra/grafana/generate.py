"""Write the Grafana dashboards (infra/grafana/dashboards/*.json) from the panel lists below.

    python infra/grafana/generate.py           # rewrite the JSON files
    python infra/grafana/generate.py --check   # exit 1 if a file is not what this script writes

Panels are data here so the live test (tests/integration/test_prometheus_live.py) can evaluate
every query against a real Prometheus scraping real processes. `$__rate_interval` is Grafana's;
the live test substitutes a window for it. Standard library only.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"
RECOMMEND = 'endpoint=~"/recommend.*"'


@dataclass(frozen=True)
class Panel:
    title: str
    queries: dict[str, str]  # legend -> PromQL
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", "table"
    description: str = ""
    width: int = 12


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: list[Panel] = field(default_factory=list)


def quantiles(metric: str, selector: str, by: str) -> dict[str, str]:
    return {
        f"p{int(q * 100)} {{{{{by}}}}}": (
            f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))"
        )
        for q in (0.5, 0.95, 0.99)
    }


SERVING = Dashboard(
    "marquee-serving",
    "Marquee / Serving",
    "The recommender replicas: traffic, errors, latency, fallback, what each replica serves.",
    [
        Panel(
            "Requests per second by endpoint and status",
            {"{{endpoint}} {{status}}": f"sum by (endpoint, status) "
             f"(rate(marquee_requests_total[{RATE}]))"},
            "reqps",
        ),
        Panel(
            "/recommend 5xx share (SLO: 99.9% over 30 d; budget 0.1%)",
            {
                "5 m": "marquee:recommend_error_ratio:rate5m",
                "1 h": "marquee:recommend_error_ratio:rate1h",
                "6 h": "marquee:recommend_error_ratio:rate6h",
            },
            "percentunit",
        ),
        Panel(
            "/recommend latency by model",
            quantiles("marquee_request_duration_seconds", RECOMMEND, "model"),
            "s",
        ),
        Panel(
            "/recommend share slower than 250 ms (SLO: 99% within; budget 1%)",
            {
                "5 m": "marquee:recommend_slow_ratio:rate5m",
                "1 h": "marquee:recommend_slow_ratio:rate1h",
                "6 h": "marquee:recommend_slow_ratio:rate6h",
            },
            "percentunit",
        ),
        Panel(
            "/recommend p95 latency by arm",
            {"{{arm}}": "histogram_quantile(0.95, sum by (le, arm) (rate("
             f"marquee_request_duration_seconds_bucket{{{RECOMMEND}}}[{RATE}])))"},
            "s",
        ),
        Panel(
            "/recommend p95 latency by release",
            {"{{version}}": "histogram_quantile(0.95, sum by (le, version) (rate("
             f"marquee_request_duration_seconds_bucket{{{RECOMMEND}}}[{RATE}])))"},
            "s",
        ),
        Panel(
            "/recommend requests by model, release and arm",
            {"{{model}} {{version}} {{arm}}": "sum by (model, version, arm) (rate("
             f"marquee_requests_total{{{RECOMMEND}}}[{RATE}]))"},
            "reqps",
        ),
        Panel(
            "Popularity fallback share",
            {
                "10 m": "marquee:recommend_fallback_share:rate10m",
                "1 d": "marquee:recommend_fallback_share:rate1d",
            },
            "percentunit",
            description="Answers filled by popularity (unknown user, model could not score).",
        ),
        Panel(
            "Active release per replica",
            {"{{instance}} {{version}}": "max by (instance, version) (marquee_model_info)"},
            kind="table",
        ),
        Panel(
            "Control plane: pointer and experiment record per replica",
            {
                "pointer {{instance}}": "marquee_control_pointer_seq",
                "experiment {{instance}}": "marquee_control_experiment_seq",
                "unreadable {{instance}}": "marquee_control_unreadable_records",
            },
        ),
        Panel(
            "In sync with the control plane",
            {"{{instance}}": "marquee_in_sync"},
            kind="stat",
        ),
        Panel(
            "Seconds since the last successful control-plane poll",
            {"{{instance}}": "marquee_control_sync_seconds"},
            "s",
        ),
        Panel(
            "Release swaps by result",
            {"{{instance}} {{result}}": "sum by (instance, result) "
             "(increase(marquee_swaps_total[5m]))"},
        ),
        Panel(
            "Refused admin and control actions by reason",
            {"{{reason}}": f"sum by (reason) (rate(marquee_control_refused_total[{RATE}]))"},
            "ops",
        ),
        Panel(
            "Loaded releases and their memory",
            {
                "loaded {{instance}}": "marquee_loaded_releases",
                "bytes {{instance}} {{version}}": "marquee_release_memory_bytes",
            },
            "short",
        ),
        Panel(
            "Answers to reco_responses: published and dropped",
            {
                "published": f"sum(rate(marquee_responses_published_total[{RATE}]))",
                "dropped {{reason}}": "sum by (reason) "
                f"(rate(marquee_responses_dropped_total[{RATE}]))",
            },
            "ops",
        ),
        Panel(
            "HTTP connections and transport refusals",
            {
                "open {{instance}}": "marquee_http_connections",
                "refused {{reason}}": "sum by (reason) "
                f"(rate(marquee_http_rejected_total[{RATE}]))",
            },
        ),
        Panel(
            "Probe: requests by result and failures by reason",
            {
                "{{result}}": f"sum by (result) (rate(marquee_probe_requests_total[{RATE}]))",
                "failed: {{reason}}": "sum by (reason) "
                f"(rate(marquee_probe_failures_total[{RATE}]))",
            },
            "ops",
        ),
        Panel(
            "Probe latency by kind",
            quantiles("marquee_probe_latency_seconds", "", "kind"),
            "s",
        ),
    ],
)

INGEST = Dashboard(
    "marquee-ingest",
    "Marquee / Ingest",
    "Kafka -> validation -> Parquet snapshots -> commit.",
    [
        Panel(
            "Consumed and valid events per topic",
            {
                "consumed {{topic}}": f"sum by (topic) (rate(ingest_consumed_total[{RATE}]))",
                "valid {{topic}}": f"sum by (topic) (rate(ingest_valid_total[{RATE}]))",
            },
            "ops",
        ),
        Panel(
            "Dead letters by topic and reason",
            {"{{topic}} {{reason}}": "sum by (topic, reason) "
             f"(rate(ingest_invalid_total[{RATE}]))"},
            "ops",
        ),
        Panel(
            "Lag per partition (messages behind the high watermark)",
            {"{{topic}}/{{partition}}": "sum by (topic, partition) (ingest_lag)"},
        ),
        Panel(
            "Flush latency (one batch, retries included)",
            {
                f"p{int(q * 100)}": "histogram_quantile("
                f"{q}, sum by (le) (rate(ingest_flush_seconds_bucket[{RATE}])))"
                for q in (0.5, 0.95, 0.99)
            },
            "s",
        ),
        Panel(
            "Bytes written",
            {"bytes": f"sum(rate(ingest_bytes_written_total[{RATE}]))"},
            "Bps",
        ),
        Panel(
            "Files written by kind",
            {"{{kind}}": f"sum by (kind) (rate(ingest_files_written_total[{RATE}]))"},
            "ops",
        ),
        Panel(
            "Store errors and failing state",
            {
                "errors": f"sum(rate(ingest_store_errors_total[{RATE}]))",
                "failing {{instance}}": "ingest_store_failing",
            },
        ),
        Panel(
            "Commits refused after a rebalance",
            {"{{instance}}": "increase(ingest_commits_refused_total[15m])"},
        ),
    ],
)

EXPERIMENT = Dashboard(
    "marquee-experiment",
    "Marquee / Experiment",
    "A/B arms as served (replicas) and as measured (KPI job), and the rollout controller.",
    [
        Panel(
            "Traffic share per arm (served)",
            {"{{arm}}": f"sum by (arm) (rate(marquee_requests_total{{{RECOMMEND}}}[{RATE}]))"
             f" / ignoring (arm) group_left sum(rate(marquee_requests_total{{{RECOMMEND}}}"
             f"[{RATE}]))"},
            "percentunit",
        ),
        Panel(
            "Configured arm weights per replica",
            {"{{instance}} {{arm}}": "marquee_experiment_arm_weight"},
        ),
        Panel(
            "KPI: hit rate per arm with its Wilson interval (KPI job)",
            {
                "{{arm}}": "marquee_kpi_hit_rate",
                "{{arm}} low": "marquee_kpi_hit_rate_ci_low",
                "{{arm}} high": "marquee_kpi_hit_rate_ci_high",
            },
            "percentunit",
        ),
        Panel(
            "KPI: candidate - control with its confidence sequence and the margin",
            {
                "diff {{experiment}}": "marquee_kpi_diff",
                "low": "marquee_kpi_diff_cs_low",
                "high": "marquee_kpi_diff_cs_high",
                "-margin": "-marquee_kpi_margin",
            },
            "percentunit",
        ),
        Panel(
            "KPI: users and lists per arm",
            {
                "users {{arm}}": "marquee_kpi_users",
                "lists {{arm}}": "marquee_kpi_requests",
            },
        ),
        Panel(
            "KPI: hits per list and coverage per arm",
            {
                "hits/list {{arm}}": "marquee_kpi_hits_per_exposure",
                "coverage {{arm}}": "marquee_kpi_coverage",
            },
        ),
        Panel(
            "Sample-ratio p-value (alert under 0.001)",
            {"{{experiment}}": "marquee_kpi_srm_p_value"},
        ),
        Panel(
            "KPI verdict and runs",
            {
                "{{verdict}}": "max by (experiment, verdict) (marquee_kpi_verdict) == 1",
                "runs {{result}}": "sum by (result) (increase(marquee_kpi_runs_total[15m]))",
            },
        ),
        Panel(
            "Rollout: candidate traffic step and holds",
            {"step %": "marquee_rollout_step", "holds": "marquee_rollout_holds"},
        ),
        Panel(
            "Rollout decisions (verdict / action)",
            {"{{verdict}} / {{action}}": "sum by (verdict, action) "
             "(increase(marquee_rollout_decision_total[1h]))"},
        ),
        Panel(
            "Rollout gates: value read and threshold held to",
            {
                "{{gate}} {{series}}": "marquee_rollout_gate_value",
                "{{gate}} threshold": "marquee_rollout_gate_threshold",
            },
        ),
        Panel(
            "Rollout gate verdicts",
            {"{{gate}}: {{verdict}}": "marquee_rollout_gate_verdict == 1"},
            kind="table",
        ),
    ],
)

RELEASES = Dashboard(
    "marquee-releases",
    "Marquee / Releases",
    "What is served, since when, its offline metrics and gate decision, its drift report, and "
    "how swaps went (the full gate numbers: python -m model_registry show vX.Y).",
    [
        Panel(
            "Offline NDCG@10 per loaded release and kind",
            {"{{version}} {{kind}}": 'max by (version, kind) '
             '(marquee_release_offline_metric{metric="ndcg@10"})'},
            kind="table",
        ),
        Panel(
            "Popularity bias per loaded release: exposure Gini and long-tail share",
            {"{{version}} {{kind}} {{metric}}": 'max by (version, kind, metric) '
             '(marquee_release_offline_metric{metric=~"gini@10|long_tail@10"})'},
            kind="table",
        ),
        Panel(
            "Gate decision per loaded release",
            {"{{version}}: {{decision}}": "max by (version, decision) "
             "(marquee_release_gate_decision)"},
            kind="table",
        ),
        Panel(
            "Active release per replica (with provenance)",
            {"{{version}}": "max by (instance, version, git_sha, data_snapshot_id, image_digest)"
             " (marquee_model_info)"},
            kind="table",
            width=24,
        ),
        Panel(
            "Age of the active release per replica (alert: over 5 days)",
            {"{{instance}}": "marquee_release_age_seconds"},
            "s",
        ),
        Panel(
            "Drift of the active release's window: statistic / threshold per test (>1 drifted)",
            {"{{test}}": "max by (test) (marquee_release_drift_score)"},
        ),
        Panel(
            "Drift flagged (1), not flagged (0), no report (-1)",
            {"{{instance}}": "marquee_release_drift_flagged"},
            kind="stat",
        ),
        Panel(
            "Releases in memory by version",
            {"{{instance}} {{version}}": "marquee_release_memory_bytes"},
            "bytes",
        ),
        Panel(
            "Swaps by result",
            {"{{result}}": "sum by (result) (increase(marquee_swaps_total[1h]))"},
        ),
        Panel(
            "Pointer record followed per replica",
            {"{{instance}}": "marquee_control_pointer_seq"},
        ),
    ],
)

DASHBOARDS = [SERVING, INGEST, EXPERIMENT, RELEASES]


def render(board: Dashboard) -> dict:
    panels, x, y = [], 0, 0
    for number, panel in enumerate(board.panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        targets = [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
             "datasource": DATASOURCE, "instant": panel.kind == "table"}
            for i, (legend, expr) in enumerate(panel.queries.items())
        ]
        panels.append(
            {
                "id": number,
                "type": panel.kind,
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"x": x, "y": y, "w": panel.width, "h": 8},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {},
                "targets": targets,
            }
        )
        x += panel.width
    return {
        "uid": board.uid,
        "title": board.title,
        "description": board.description,
        "tags": ["marquee"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def files() -> dict[Path, str]:
    return {
        OUT / f"{board.uid}.json": json.dumps(render(board), indent=2, sort_keys=True) + "\n"
        for board in DASHBOARDS
    }


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    for path, text in files().items():
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(path.name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python infra/grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
