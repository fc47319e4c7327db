"""Property-based API testing from the service's own OpenAPI schema: no input gives a 5xx."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from recommender.app import create_app
from recommender.settings import ServiceSettings

EXPERIMENT = {
    "salt": "st",
    "arms": [
        {"name": "a", "model": "als", "weight": 1},
        {"name": "b", "model": "itemcf", "weight": 1},
    ],
}


@pytest.fixture(scope="module")
def api_schema(two_releases: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    root = tmp_path_factory.mktemp("st") / "reg"
    shutil.copytree(two_releases["root"], root)
    app = create_app(
        ServiceSettings(registry=root.as_uri(), admin_token="t", experiment=json.dumps(EXPERIMENT))
    )
    with TestClient(app):  # runs the lifespan: a release is loaded before the first case
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


# schemathesis' pytest plugin does not run on pytest 9 ('_nodeid'), so each operation's
# Hypothesis strategy is driven directly: the same generation, the same checks.
def test_no_input_gives_a_server_error(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call()
            calls[case.path] = calls.get(case.path, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code < 500, (case.path, response.text)
            if response.status_code >= 400 and case.path != "/metrics":
                assert set(response.json()) == {"error", "detail"}, response.text

        check()
    assert len(calls) == len({op.path for op in operations}) and sum(calls.values()) > 200, calls
