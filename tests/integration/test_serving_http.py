"""The service as operators run it: `python -m recommender` on a loopback port, real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from model_registry.registry import Registry
from recommender.release import load_release
from tests.helpers import free_port, python, start, stop, wait_for_http
from trainer.models import KINDS, top_n


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def served(synthetic_release: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "service.log"
    proc = start(
        [
            python(),
            "-m",
            "recommender",
            "--registry",
            synthetic_release["registry"],
            "--port",
            str(port),
        ],
        log=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", timeout=60, proc=proc)
        yield base
    finally:
        stop(proc)


def test_every_kind_serves_the_evaluated_ranking_over_http(
    served: str, synthetic_release: dict
) -> None:
    release = load_release(Registry.open(synthetic_release["registry"]), "v0.1")
    for kind in KINDS:
        for user_id in release.vocab.user_ids[::7]:
            status, body = get(f"{served}/recommend/{user_id}?k=10&model={kind}")
            assert status == 200 and body["model"] == kind and body["version"] == "v0.1"
            user_idx = release.vocab.user_index(int(user_id))
            want, _ = top_n(
                release.scorers[kind].score(user_idx), 10, exclude=release.seen(user_idx)
            )
            assert body["items"] == release.vocab.item_ids[want].tolist()


def test_errors_over_http_are_json_4xx(served: str) -> None:
    for path, status in (
        ("/recommend/x", 422),
        ("/recommend/1?k=1000", 422),
        ("/recommend/1?model=nope", 404),
        ("/v0.1/../../etc", 404),
    ):
        code, body = get(served + path)
        assert code == status and set(body) == {"error", "detail"}


def test_health_endpoints_over_http(served: str) -> None:
    assert get(f"{served}/healthz")[1]["version"] == "v0.1"
    assert get(f"{served}/readyz")[0] == 200
