"""The Grafana dashboards are what infra/grafana/generate.py writes, and well formed; the
provisioning names the datasource uid the panels use."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.helpers import REPO
from tests.infra.promql import refs

GRAFANA = REPO / "infra" / "grafana"


def test_dashboards_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_dashboards_are_well_formed() -> None:
    boards = [json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))]
    assert {b["title"] for b in boards} == {
        "Marquee / Serving", "Marquee / Ingest", "Marquee / Experiment", "Marquee / Releases",
    }  # fmt: skip
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for board in boards:
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        cells = set()
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid and panel["targets"]
            g = panel["gridPos"]
            xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
            area = {(x, y) for x in xs for y in ys}
            assert not cells & area, f"{board['title']}: {panel['title']} overlaps"
            cells |= area
            assert g["x"] + g["w"] <= 24
            for target in panel["targets"]:
                assert refs(target["expr"]).metrics, target["expr"]  # reads some metric


def test_provisioning_points_at_the_dashboards_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/marquee.yml").read_text())
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    path = provider["providers"][0]["options"]["path"]
    assert f"./infra/grafana/dashboards:{path}:ro" in mounts
