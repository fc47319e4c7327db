"""Multi-release serving: A/B arms, admin auth, hot swap, audit, fold-in, metrics, logs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_registry.control import ControlPlane
from recommender.app import create_app
from recommender.settings import ServiceSettings

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXPERIMENT = {
    "name": "als-vs-ncf",
    "salt": "exp1",
    "arms": [
        {"name": "control", "model": "als", "weight": 50},
        {"name": "treatment", "model": "v0.1/ncf", "weight": 50},
    ],
}


def _client(registry: str, **settings) -> TestClient:
    app = create_app(ServiceSettings(registry=registry, admin_token=TOKEN, **settings))
    return TestClient(app)


@pytest.fixture
def registry(two_releases: dict, tmp_path: Path) -> str:
    """A private copy: these tests write the control plane (pointer, experiment, refusals)."""
    shutil.copytree(two_releases["root"], tmp_path / "reg")
    return (tmp_path / "reg").as_uri()


def test_serves_newest_then_production(registry: str) -> None:
    with _client(registry) as c:
        assert c.get("/healthz").json()["version"] == "v0.2"
        assert c.get("/version").json()["version"] == "v0.2"
        assert c.post("/switch", json={"version": "v0.1"}, headers=AUTH).status_code == 200
    with _client(registry) as c:  # a restart serves what the pointer names
        assert c.get("/healthz").json()["version"] == "v0.1"


def test_arms_are_sticky_and_counted(registry: str) -> None:
    with _client(registry, experiment=json.dumps(EXPERIMENT)) as c:
        seen = {}
        for user in range(1, 41):
            body = c.get(f"/recommend/{user}").json()
            seen[user] = body["arm"]
            want = ("als", "v0.2") if body["arm"] == "control" else ("ncf", "v0.1")
            assert (body["model"], body["version"]) == want
        assert set(seen.values()) == {"control", "treatment"}
        assert [c.get(f"/recommend/{u}").json()["arm"] for u in seen] == list(seen.values())
        exp = c.get("/experiment").json()
        assert exp["configured"] and sum(exp["counts"].values()) == 80
        assert c.get("/recommend/3?model=itemcf").json()["arm"] is None  # explicit model: no arm
    with _client(registry, experiment=json.dumps(EXPERIMENT)) as c:  # another instance agrees
        assert {u: c.get(f"/recommend/{u}").json()["arm"] for u in seen} == seen


def test_experiment_from_yaml_file(registry: str, tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    with _client(registry, experiment_file=str(path)) as c:
        assert c.get("/experiment").json()["name"] == "als-vs-ncf"


def test_bad_experiment_config_stops_the_start(registry: str) -> None:
    with pytest.raises(ValueError, match="invalid experiment"):
        create_app(ServiceSettings(registry=registry, experiment='{"salt": "x", "arms": []}'))


def test_weight_change_requires_token_is_validated_and_audited(registry: str) -> None:
    with _client(registry, experiment=json.dumps(EXPERIMENT)) as c:
        body = {"weights": {"control": 0, "treatment": 100}, "reason": "ramp"}
        assert c.put("/experiment/weights", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert c.put("/experiment/weights", json=body, headers=wrong).status_code == 401
        for bad in (
            {"weights": {"control": 1}},
            {"weights": {"control": -1, "treatment": 1}},
            {"weights": {"control": 0, "treatment": 0}},
            {"weights": {}},
            {"weights": {"control": "x", "treatment": 1}},
        ):
            r = c.put("/experiment/weights", json=bad, headers=AUTH)
            assert r.status_code == 422 and r.json()["error"] == "invalid_request", bad
        r = c.put("/experiment/weights", json=body, headers={**AUTH, "X-Actor": "alice"})
        assert r.status_code == 200
        assert {c.get(f"/recommend/{u}").json()["arm"] for u in range(1, 30)} == {"treatment"}
        exp = c.get("/experiment").json()
        assert "salt" not in exp and "salt" not in str(exp["history"])  # public: no salt
        newest = exp["history"][0]
        assert [a["weight"] for a in newest["data"]["arms"]] == [0, 100]
        assert [a["weight"] for a in newest["previous"]["arms"]] == [50, 50]
        assert newest["by"] == "alice" and newest["reason"] == "ramp"
        assert c.get("/experiment", headers=AUTH).json()["salt"] == "exp1"
    with _client(registry, experiment=json.dumps(EXPERIMENT)) as c:  # a restart keeps them
        assert {c.get(f"/recommend/{u}").json()["arm"] for u in range(1, 30)} == {"treatment"}


def test_explicit_versioned_model(registry: str) -> None:
    with _client(registry) as c:
        r = c.get("/recommend/2?model=v0.1/als")
        assert r.status_code == 404 and r.json()["error"] == "release_not_loaded"
        assert c.post("/releases/v0.1", headers=AUTH).status_code == 200
        body = c.get("/recommend/2?model=v0.1/als").json()
        assert (body["model"], body["version"]) == ("als", "v0.1")
        for bad in ("v0.1/../als", "../v0.1/als", "v0.1/svd", "V0.1/als"):
            assert c.get("/recommend/2", params={"model": bad}).status_code == 404


def test_switch_refusals_keep_the_old_release(registry: str, two_releases: dict) -> None:
    root = Path(registry.removeprefix("file://"))
    victim = next((root / "v0.1" / "itemcf").glob("*.npy"))
    victim.write_bytes(b"corrupted")
    (root / "v0.3" / "als").mkdir(parents=True)  # a publish that died before its manifest
    (root / "v0.3" / ".claim").write_text("{}")
    with _client(registry) as c:
        cases = [
            ({}, {"version": "v0.1"}, 401),
            (AUTH, {"version": "../../etc/passwd"}, 422),
            (AUTH, {"version": "v1"}, 422),
            (AUTH, {"version": "v9.9"}, 404),
            (AUTH, {"version": "v0.3"}, 404),
            (AUTH, {"version": "v0.1"}, 409),
            (AUTH, {"versionx": "v0.1"}, 422),
        ]
        for headers, body, status in cases:
            r = c.post("/switch", json=body, headers=headers)
            assert r.status_code == status, (body, r.text)
            assert set(r.json()) == {"error", "detail"} and "Traceback" not in r.text
            assert c.get("/healthz").json()["version"] == "v0.2"
        assert c.post("/switch", content=b"{not json", headers=AUTH).status_code == 422
        assert c.get("/switch?model=v0.1", headers=AUTH).status_code == 409  # legacy: same checks
        assert c.get("/switch/history").json()["history"] == []
        refused = ControlPlane.open(registry).history("refused", limit=50)[0]
        assert refused and {r.data["code"] for r in refused} <= {
            "unauthorized", "release_not_found", "release_refused", "release_invalid"}
        metrics = c.get("/metrics").text
        assert 'marquee_swaps_total{result="refused"}' in metrics


def test_switch_is_audited_and_updates_metrics(registry: str) -> None:
    with _client(registry) as c:
        r = c.post(
            "/switch",
            json={"version": "v0.1", "reason": "rollback"},
            headers={**AUTH, "X-Actor": "bob"},
        )
        # the first record of the pointer: nothing was promoted before (v0.2 served as newest)
        assert r.status_code == 200 and r.json()["from"] is None and r.json()["to"] == "v0.1"
        assert c.get("/switch?model=v0.2", headers=AUTH).json()["to"] == "v0.2"
        history = c.get("/switch/history").json()["history"]
        assert [(h["from"], h["to"]) for h in history] == [("v0.1", "v0.2"), (None, "v0.1")]
        assert history[1]["by"] == "bob" and history[1]["reason"] == "rollback"
        assert ControlPlane.open(registry).pointer().data["version"] == "v0.2"
        metrics = c.get("/metrics").text
        info = [line for line in metrics.splitlines() if line.startswith("marquee_model_info{")]
        assert len(info) == 1 and 'version="v0.2"' in info[0]
        assert 'marquee_swaps_total{result="ok"} 3.0' in metrics  # start + two switches
        assert "marquee_loaded_releases 2.0" in metrics
        assert 'marquee_release_memory_bytes{version="v0.1"}' in metrics


def test_max_loaded_bound_and_memory_report(registry: str) -> None:
    with _client(registry, max_loaded=1) as c:
        r = c.post("/releases/v0.1", headers=AUTH)  # no room beside the active release
        assert r.status_code == 409 and "max_loaded" in r.json()["detail"]
        loaded = c.get("/releases").json()
        assert loaded["max_loaded"] == 1
        assert [r["version"] for r in loaded["loaded"]] == ["v0.2"]
        assert all(r["memory_bytes"] > 0 for r in loaded["loaded"])
        assert c.post("/switch", json={"version": "v0.1"}, headers=AUTH).status_code == 200
        assert [r["version"] for r in c.get("/releases").json()["loaded"]] == ["v0.1"]
        assert c.get("/healthz").json()["version"] == "v0.1"  # the active one is never evicted
    with _client(registry, max_loaded=2, candidates="v0.2") as c:  # the pointer names v0.1
        assert {r["version"] for r in c.get("/releases").json()["loaded"]} == {"v0.1", "v0.2"}


def test_admin_disabled_without_token(two_releases: dict) -> None:
    with TestClient(create_app(ServiceSettings(registry=two_releases["registry"]))) as c:
        r = c.post("/switch", json={"version": "v0.1"}, headers=AUTH)
        assert r.status_code == 401 and "REC_ADMIN_TOKEN" in r.json()["detail"]


def test_anonymous_fold_in(registry: str) -> None:
    even = [2, 4, 6, 8, 10, 12]  # synthetic taste group 0: even movie ids
    with _client(registry, version="v0.1") as c:  # v0.1 was trained on the taste groups
        for kind in ("als", "itemcf"):
            body = c.post("/recommend", json={"movie_ids": even, "k": 5, "model": kind}).json()
            assert body["fallback"] is None and body["user_id"] is None
            assert not set(body["items"]) & set(even)
            assert sum(i % 2 == 0 for i in body["items"]) >= 4, (kind, body["items"])
        ncf = c.post("/recommend", json={"movie_ids": even, "model": "ncf"}).json()
        assert ncf["fallback"] == "popularity" and not set(ncf["items"]) & set(even)
        body = c.post("/recommend", json={"movie_ids": [2, 999999], "ratings": [5, 1]}).json()
        assert body["ignored_movie_ids"] == [999999] and body["model"] == "als"
        unknown = c.post("/recommend", json={"movie_ids": [999999]}).json()
        assert unknown["fallback"] == "popularity" and len(unknown["items"]) == 10


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"movie_ids": []}, 422),
        ({"movie_ids": [1, 2], "ratings": [5]}, 422),
        ({"movie_ids": [1], "ratings": [9]}, 422),
        ({"movie_ids": [0]}, 422),
        ({"movie_ids": ["a"]}, 422),
        ({"movie_ids": [1], "k": 0}, 422),
        ({"movie_ids": [1], "model": "svd"}, 404),
        ({"movie_ids": [1], "extra": 1}, 422),
        ({"movie_ids": list(range(1, 502))}, 422),
        ([1, 2], 422),
        ("text", 422),
    ],
)
def test_bad_history_bodies(registry: str, body: object, status: int) -> None:
    with _client(registry) as c:
        r = c.post("/recommend", json=body)
        assert r.status_code == status, r.text
        assert set(r.json()) == {"error", "detail"}


def test_oversized_and_malformed_bodies(registry: str) -> None:
    with _client(registry, max_body_bytes=4096) as c:
        r = c.post(
            "/recommend",
            content=b'{"movie_ids": [' + b"1," * 5000 + b"1]}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and r.json()["error"] == "body_too_large"
        r = c.post("/recommend", content=b"\xff\xfe{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        assert (
            c.post("/recommend", content=b"", headers={"content-length": "x1"}).status_code == 413
        )


def test_metrics_label_every_answer(registry: str) -> None:
    with _client(registry, experiment=json.dumps(EXPERIMENT)) as c:
        c.get("/recommend/1")
        c.get("/recommend/999999?model=itemcf")
        c.get("/recommend/abc")
        text = c.get("/metrics").text
        assert (
            'marquee_requests_total{arm="",endpoint="/recommend/{user_id}",fallback="popularity",'
            'model="itemcf",status="200",version="v0.2"} 1.0'
        ) in text
        assert 'status="422"' in text and "marquee_request_duration_seconds_bucket" in text
        assert 'marquee_experiment_arm_weight{arm="control"} 50.0' in text


def test_request_id_everywhere_and_json_access_log(registry: str, caplog) -> None:
    with _client(registry) as c, caplog.at_level(logging.INFO, logger="recommender.access"):
        r = c.get("/healthz", headers={"X-Request-ID": "abc-1"})
        assert r.headers["x-request-id"] == "abc-1"
        c.get("/recommend/5?model=als", headers={"X-Request-ID": "abc-2"})
    records = [r for r in caplog.records if r.name == "recommender.access"]
    fields = [r.fields for r in records]
    assert {
        "request_id": "abc-2",
        "status": 200,
        "model": "als",
        "version": "v0.2",
    }.items() <= next(f for f in fields if f["request_id"] == "abc-2").items()
    from model_registry.logs import JsonFormatter

    line = JsonFormatter().format(records[-1])
    assert json.loads(line)["request_id"] in ("abc-1", "abc-2")
