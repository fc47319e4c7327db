"""The API through FastAPI's TestClient: contract, seen-item filtering, fallback, bad input."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from model_registry.registry import Registry
from recommender.app import create_app
from recommender.release import load_release
from recommender.settings import ServiceSettings
from trainer.models import KINDS, top_n


@pytest.fixture(scope="module")
def client(synthetic_release: dict):
    app = create_app(ServiceSettings(registry=synthetic_release["registry"]))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def release(synthetic_release: dict):
    return load_release(Registry.open(synthetic_release["registry"]), "v0.1")


def test_answer_contract(client: TestClient) -> None:
    r = client.get("/recommend/2?k=5&model=als", headers={"X-Request-ID": "req-123"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {
        "user_id",
        "model",
        "version",
        "arm",
        "fallback",
        "items",
        "recommendations",
        "provenance",
    }
    assert body["user_id"] == 2 and body["model"] == "als" and body["version"] == "v0.1"
    assert body["arm"] is None and body["fallback"] is None and len(body["items"]) == 5
    assert [rec["movie_id"] for rec in body["recommendations"]] == body["items"]
    assert body["recommendations"][0]["title"].startswith("Movie ")
    prov = body["provenance"]
    assert prov["request_id"] == "req-123" == r.headers["x-request-id"]
    assert prov["model_name"] == "als" and prov["model_version"] == "v0.1"
    assert prov["data_snapshot_id"].startswith("movielens-ml-100k-")
    assert {"git_sha", "container_image_digest", "latency_ms", "timestamp"} <= set(prov)


@pytest.mark.parametrize("kind", KINDS)
def test_served_ranking_is_the_scorers_top_n_and_never_seen(
    client: TestClient, release, kind: str
) -> None:
    for user_id in release.vocab.user_ids[:20]:
        body = client.get(f"/recommend/{user_id}?k=10&model={kind}").json()
        user_idx = release.vocab.user_index(int(user_id))
        seen_ids = set(release.vocab.item_ids[release.seen(user_idx)].tolist())
        assert not seen_ids & set(body["items"])
        expected, _ = top_n(
            release.scorers[kind].score(user_idx), 10, exclude=release.seen(user_idx)
        )
        assert body["items"] == release.vocab.item_ids[expected].tolist()


def test_unknown_user_gets_popularity_fallback(client: TestClient, release) -> None:
    body = client.get("/recommend/999999?k=4&model=ncf").json()
    assert body["fallback"] == "popularity" and body["model"] == "ncf"
    expected, _ = top_n(release.popularity.global_scores(), 4)
    assert body["items"] == release.vocab.item_ids[expected].tolist()


def test_default_model_is_configurable(synthetic_release: dict) -> None:
    app = create_app(
        ServiceSettings(registry=synthetic_release["registry"], default_model="itemcf")
    )
    with TestClient(app) as c:
        assert c.get("/recommend/1").json()["model"] == "itemcf"


def test_k_larger_than_unseen_catalogue_returns_what_exists(client: TestClient, release) -> None:
    body = client.get("/recommend/1?k=100&model=itemcf").json()
    unseen = release.vocab.n_items - release.seen(release.vocab.user_index(1)).size
    assert len(body["items"]) == unseen == len(set(body["items"]))


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/recommend/1?k=0", 422, "invalid_request"),
        ("/recommend/1?k=101", 422, "invalid_request"),
        ("/recommend/1?k=-5", 422, "invalid_request"),
        ("/recommend/1?k=99999999999999999999999", 422, "invalid_request"),
        ("/recommend/1?k=ten", 422, "invalid_request"),
        ("/recommend/abc", 422, "invalid_request"),
        ("/recommend/1.5", 422, "invalid_request"),
        ("/recommend/-3", 422, "invalid_request"),
        ("/recommend/0", 422, "invalid_request"),
        ("/recommend/99999999999999999999999999", 422, "invalid_request"),
        ("/recommend/1?model=svd", 404, "unknown_model"),
        ("/recommend/1?model=../../etc/passwd", 404, "unknown_model"),
        ("/recommend/1?model=" + "x" * 5000, 422, "invalid_request"),
        ("/recommend/", 404, "not_found"),  # no slash redirect (it reflected the Host)
        ("/recommend/٤٢", 422, "invalid_request"),  # Arabic-Indic digits
        ("/recommend/４２", 422, "invalid_request"),  # fullwidth digits
        ("/recommend/42%0A", 422, "invalid_request"),
        ("/recommend/42?k=%D9%A3", 422, "invalid_request"),
        ("/nope", 404, "not_found"),
    ],
)
def test_bad_input_is_a_specific_4xx(client: TestClient, path: str, status: int, code: str) -> None:
    r = client.get(path)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and isinstance(body["detail"], str)
    assert "Traceback" not in r.text and "/work/" not in r.text


def test_wrong_method_is_405_json(client: TestClient) -> None:
    r = client.post("/recommend/1")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_hostile_request_id_is_replaced(client: TestClient) -> None:
    r = client.get("/recommend/1", headers={"X-Request-ID": "<script>" + "a" * 300})
    rid = r.json()["provenance"]["request_id"]
    assert rid == r.headers["x-request-id"] and len(rid) == 32 and "<" not in rid


@settings(max_examples=60, deadline=None)
@given(user=st.text(max_size=30), k=st.text(max_size=12), model=st.text(max_size=12))
def test_fuzzed_input_never_5xx(client: TestClient, user: str, k: str, model: str) -> None:
    from urllib.parse import quote

    r = client.get(f"/recommend/{quote(user, safe='')}", params={"k": k, "model": model})
    assert r.status_code < 500, r.text


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json()["version"] == "v0.1"
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == sorted(KINDS)


def test_empty_registry_is_not_ready(tmp_path: Path) -> None:
    app = create_app(ServiceSettings(registry=(tmp_path / "empty").as_uri()))
    with TestClient(app) as c:
        assert c.get("/healthz").json() == {"status": "ok", "version": None}
        for path in ("/readyz", "/recommend/1"):
            r = c.get(path)
            assert r.status_code == 503 and r.json()["error"] == "not_ready"


def test_corrupt_release_is_refused_at_start(synthetic_release: dict, tmp_path: Path) -> None:
    import shutil

    src = Path(synthetic_release["registry"].removeprefix("file://"))
    copy = tmp_path / "reg"
    shutil.copytree(src, copy)
    victim = next((copy / "v0.1" / "als").glob("*.npy"))
    victim.write_bytes(victim.read_bytes()[:-8] + b"\x00" * 8)
    app = create_app(ServiceSettings(registry=copy.as_uri()))
    with TestClient(app) as c:
        r = c.get("/readyz")
        assert r.status_code == 503


def test_release_loads_from_s3(synthetic_release: dict, s3_bucket: str) -> None:
    from model_registry.storage import LocalStore, open_store

    local = LocalStore(Path(synthetic_release["registry"].removeprefix("file://")))
    s3 = open_store(f"s3://{s3_bucket}/reg")
    for key in local.list():
        s3.put(key, local.get(key))
    with tempfile.TemporaryDirectory() as tmp:
        rel = load_release(Registry(s3), "v0.1", Path(tmp))
        assert set(rel.scorers) == set(KINDS) and np.isfinite(rel.scorers["als"].score(0)).all()
