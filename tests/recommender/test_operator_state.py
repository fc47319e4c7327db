"""GET /operator/state: per release and kind, the bias metrics, a bounded fairness summary per
grouping and the rating block; old manifests without them read as null, never as an error."""

from __future__ import annotations

import json
import math

import pytest
from fastapi.testclient import TestClient

from recommender.app import create_app
from recommender.routers.operator import MAX_GROUPINGS, _fairness, _fairness_summary, _rating
from recommender.settings import ServiceSettings
from tests.helpers import build_release

KINDS = ("popularity", "als")
OCCUPATIONS = 30  # more groups than the view should ever list


def bias_manifest() -> dict:
    """What the trainer writes (docs/evaluation.md), numbers made up."""
    occupation = {
        f"job{i:02d}": {"users": 60 if i < 20 else 10, "hr@10": 0.1, "ndcg@10": 0.01 + i / 1000}
        for i in range(OCCUPATIONS)
    }
    occupation["job25"]["ndcg@10"] = 0.9  # best overall, but too small a group to be compared
    kinds = {}
    for n, kind in enumerate(KINDS):
        kinds[kind] = {
            "params": {},
            "metrics": {
                "ndcg@10": 0.05 + n / 100,
                "hr@10": 0.1,
                "coverage@10": 0.25,
                "gini@10": 0.91234 - n / 10,
                "long_tail@10": 0.0312,
                "novelty@10": 3.4567,
            },
            "fairness": {
                "gender": {
                    "groups": {
                        "F": {"users": 273, "hr@10": 0.08, "ndcg@10": 0.052},
                        "M": {"users": 670, "hr@10": 0.09, "ndcg@10": 0.06},
                    },
                    "min_users": 50,
                    "hr@10_max_min": 1.125,
                    "ndcg@10_max_min": 1.1538,
                },
                "occupation": {
                    "groups": occupation,
                    "min_users": 50,
                    "hr@10_max_min": 1.0,
                    "ndcg@10_max_min": 2.9,
                },
                "activity": {  # every group too small: no ratio, no best/worst
                    "groups": {
                        f"q{i}": {"users": 10, "hr@10": 0.1, "ndcg@10": 0.05} for i in "1234"
                    },
                    "min_users": 50,
                    "hr@10_max_min": None,
                    "ndcg@10_max_min": None,
                },
            },
        }
    rating = {
        "params": {"factors": 8},
        "metrics": {
            "rmse": 1.01557,
            "mae": 0.80283,
            "n": 943,
            "baseline_rmse": 1.0443,
            "baseline_mae": 0.82592,
            "train_seconds": 3.0,
        },
    }
    return {"kinds": kinds, "rating": rating}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """v0.1 from before bias metrics (no metrics, fairness or rating), v0.2 with all of them."""
    registry = (tmp_path_factory.mktemp("operator") / "registry").as_uri()
    assert build_release(registry, kinds=KINDS) == "v0.1"
    assert build_release(registry, kinds=KINDS, seed=1, manifest=bias_manifest()) == "v0.2"
    app = create_app(ServiceSettings(registry=registry, candidates="v0.1"))
    with TestClient(app) as client:
        response = client.get("/operator/state")
    assert response.status_code == 200
    body = response.json()
    return {r["version"]: r for r in body["releases"]} | {"_raw": response.text}


def test_old_manifest_reads_as_null(state: dict) -> None:
    old = state["v0.1"]
    assert old["active"] is False
    assert old["metrics"] == {"popularity": None, "als": None}
    assert old["fairness"] == {"popularity": None, "als": None}
    assert old["rating"] is None


def test_bias_metrics_and_rating_of_every_kind(state: dict) -> None:
    new, want = state["v0.2"], bias_manifest()
    assert new["active"] is True
    for kind in KINDS:
        for key in ("coverage@10", "gini@10", "long_tail@10", "novelty@10", "ndcg@10", "hr@10"):
            assert new["metrics"][kind][key] == want["kinds"][kind]["metrics"][key]
    assert new["rating"] == {
        "rmse": 1.01557,
        "mae": 0.80283,
        "n": 943,
        "baseline_rmse": 1.0443,
        "baseline_mae": 0.82592,
    }


def test_fairness_summary_names_best_and_worst_group_only(state: dict) -> None:
    fairness = state["v0.2"]["fairness"]["als"]
    assert list(fairness) == ["gender", "occupation", "activity"]  # the trainer's groupings first
    assert fairness["gender"] == {
        "groups": 2,
        "ratioed": 2,
        "min_users": 50,
        "ndcg@10_max_min": 1.1538,
        "hr@10_max_min": 1.125,
        "best": {"name": "M", "users": 670, "ndcg@10": 0.06, "hr@10": 0.09},
        "worst": {"name": "F", "users": 273, "ndcg@10": 0.052, "hr@10": 0.08},
    }
    occupation = fairness["occupation"]
    assert (occupation["groups"], occupation["ratioed"]) == (OCCUPATIONS, 20)
    # job25 scores best but has 10 users: only groups the ratio is over are named
    assert occupation["best"]["name"] == "job19" and occupation["worst"]["name"] == "job00"
    assert occupation["ndcg@10_max_min"] == 2.9
    activity = fairness["activity"]
    assert activity["ratioed"] == 0 and activity["best"] is None and activity["worst"] is None
    assert activity["ndcg@10_max_min"] is None
    # bounded: no group list travels, whatever the number of groups
    assert "job07" not in state["_raw"]


def test_malformed_fairness_and_rating_blocks_are_null_not_errors() -> None:
    assert _fairness_summary(None) is None
    assert _fairness_summary("gender") is None
    odd = _fairness_summary(
        {
            "groups": {
                "a": {"users": 100, "ndcg@10": 0.2},
                "b": {"users": "many", "ndcg@10": 0.1},  # not a number: not compared
                "c": {"users": 100, "ndcg@10": math.nan},
                "d": {"users": True, "ndcg@10": 0.1},
                "e": [1, 2],
                "f": {"users": 80, "ndcg@10": 0.1, "hr@10": "x"},
            },
            "ndcg@10_max_min": math.inf,
            "hr@10_max_min": "2",
        }
    )
    assert odd is not None
    assert (odd["groups"], odd["ratioed"], odd["min_users"]) == (6, 2, None)
    assert odd["ndcg@10_max_min"] is None and odd["hr@10_max_min"] is None
    assert odd["best"] == {"name": "a", "users": 100, "ndcg@10": 0.2, "hr@10": None}
    assert odd["worst"]["name"] == "f"
    many = {f"g{i}": {"groups": {}} for i in range(3 * MAX_GROUPINGS)}
    assert len(_fairness({"fairness": many})) == MAX_GROUPINGS
    assert _fairness({"fairness": []}) is None and _fairness({}) is None
    assert _rating({}) is None and _rating({"rating": None}) is None
    assert _rating({"rating": {"metrics": "x"}}) is None
    assert _rating({"rating": {"metrics": {"rmse": 1.0}}}) == {
        "rmse": 1.0,
        "mae": None,
        "n": None,
        "baseline_rmse": None,
        "baseline_mae": None,
    }
    json.dumps(odd, allow_nan=False)  # the summary is valid JSON


def test_manifest_strings_are_cut() -> None:
    long = "x" * 500
    summary = _fairness_summary(
        {"groups": {long: {"users": 60, "ndcg@10": 0.2}, "y": {"users": 60, "ndcg@10": 0.1}}}
    )
    assert summary is not None and len(summary["best"]["name"]) == 60
