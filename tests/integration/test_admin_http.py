"""Admin and read routes against hostile callers, over real HTTP to a real replica."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_registry.control import ControlPlane
from tests.fleet import ADMIN, TOKEN, Replica

EXPERIMENT = {
    "name": "admin",
    "salt": "very-secret-salt",
    "arms": [
        {"name": "control", "model": "als", "weight": 50},
        {"name": "treatment", "model": "itemcf", "weight": 50},
    ],
}


@pytest.fixture
def registry(two_releases: dict, tmp_path: Path) -> str:
    shutil.copytree(two_releases["root"], tmp_path / "reg")
    return (tmp_path / "reg").as_uri()


@pytest.fixture
def replica(registry: str, tmp_path: Path) -> Iterator[Replica]:
    rep = Replica(registry, tmp_path / "r.log", {"REC_EXPERIMENT": json.dumps(EXPERIMENT)})
    rep.start(wait="/readyz")
    yield rep
    rep.stop()


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)  # Connection: close, so the server ends the answer
        return b"".join(chunks)


def test_authentication_comes_before_the_body(replica: Replica) -> None:
    # An anonymous caller with a malformed body learns nothing about the schema: 401, not 422.
    for body in ({"versionx": 1}, "not an object", {"version": "v0.1"}):
        status, answer = replica.call("POST", "/switch", body, {"Content-Type": "application/json"})
        assert status == 401 and set(answer) == {"error", "detail"}, answer
        assert "version" not in answer["detail"]
    status, _ = replica.call("PUT", "/experiment/weights", {"weights": []})
    assert status == 401
    status, _ = replica.call("POST", "/switch", {"version": "v0.1"},
                             {"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert status == 401
    assert replica.metric("marquee_control_refused_total") >= 4


def test_actor_must_be_a_plain_name_and_history_shows_no_address(replica: Replica) -> None:
    for bad in ("alice@evil.example", "a" * 65, "two words"):
        status, body = replica.call("POST", "/switch", {"version": "v0.1"},
                                    {**ADMIN, "X-Actor": bad})
        assert status == 422 and "X-Actor" in body["detail"], body
    status, body = replica.call("POST", "/switch", {"version": "v0.1"}, ADMIN)
    assert status == 200 and body["by"] == "admin"
    _, history = replica.call("GET", "/switch/history")
    assert "127.0.0.1" not in json.dumps(history)


def test_salt_only_for_admins_and_bounded_history_reads(replica: Replica, registry: str) -> None:
    status, exp = replica.call("GET", "/experiment")
    assert status == 200 and "very-secret-salt" not in json.dumps(exp)
    assert replica.call("GET", "/experiment", headers=ADMIN)[1]["salt"] == "very-secret-salt"
    assert "very-secret-salt" not in json.dumps(replica.call("GET", "/operator/state")[1])
    for query in ("limit=1000", "limit=0", "limit=%D9%A3", "before=-1", "limit=abc"):
        status, body = replica.call("GET", f"/switch/history?{query}")
        assert status == 422 and set(body) == {"error", "detail"}, (query, body)
    # A corrupt record makes no read fail: it is skipped (and logged once).
    root = Path(registry.removeprefix("file://"))
    for stream in ("pointer", "experiment"):
        folder = root / "control" / stream
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "000000000099.json").write_text("{corrupt")
    assert replica.call("GET", "/switch/history")[0] == 200
    assert replica.call("GET", "/experiment")[0] == 200
    assert replica.call("GET", "/readyz")[0] == 200


@pytest.mark.parametrize("token", ["", "short-token"])
def test_empty_or_short_token_disables_admin(registry: str, tmp_path: Path, token: str) -> None:
    rep = Replica(registry, tmp_path / "r.log", {"REC_ADMIN_TOKEN": token})
    rep.env["REC_ADMIN_TOKEN"] = token
    rep.proc = None
    # Replica.start sets REC_ADMIN_TOKEN to the fleet token; start by hand with ours on top.
    from tests.helpers import python, start, wait_for_http

    rep.proc = start(
        [python(), "-m", "recommender", "--registry", registry, "--port", str(rep.port)],
        env={"REC_ADMIN_TOKEN": token}, log=rep.log,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{rep.port}/readyz", timeout=90, proc=rep.proc)
        for header in ("Bearer ", f"Bearer {token}", "Bearer"):
            status, body = rep.call("POST", "/switch", {"version": "v0.1"},
                                    {"Authorization": header})
            assert status == 401 and "disabled" in body["detail"], body
        assert "admin endpoints disabled" in rep.log.read_text()
    finally:
        rep.stop()


def test_no_redirect_reflects_the_host_and_405_says_allow(replica: Replica) -> None:
    answer = _raw(replica.port, b"GET /healthz/ HTTP/1.1\r\nHost: evil.example\r\n"
                                b"Connection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 404") and b"location" not in head and b"evil" not in answer
    assert b'"error":"not_found"' in answer
    answer = _raw(replica.port, b"DELETE /recommend/1 HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 405") and b"\r\nallow: get" in head
    assert b'"error":"method_not_allowed"' in answer


def test_legacy_switch_answers_the_older_contract(replica: Replica, registry: str) -> None:
    status, body = replica.call("GET", "/switch?model=v0.1", headers=ADMIN)
    assert status == 200, body
    assert body["status"] == "ok" and body["model_version"] == "v0.1"
    assert "previous_version" in body and body["to"] == "v0.1"
    assert ControlPlane.open(registry).pointer().data["version"] == "v0.1"
