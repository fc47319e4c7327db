"""Hostile clients against a real `python -m recommender` over loopback (issue #12).

Raw sockets throughout: a client library would refuse to send most of this (endless headers,
chunked bodies without an end, requests that stop halfway). The server's memory is read from
/proc/<pid>/status and its open sockets from /proc/<pid>/fd.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import build_release, free_port, python, start, stop, wait_for_http

# REC_HEADER_TIMEOUT_SECONDS in these servers (default 10): long enough to open 1000 sockets
# on a busy 2-core runner before the first ones are dropped.
HEADER_TIMEOUT = 5.0
BODY_TIMEOUT = 2.0
SWEEP = 0.5  # recommender.limits.SWEEP_SECONDS: deadlines fire up to this late
MB = 1024 * 1024


@contextmanager
def serve(tmp: Path, registry: str, env: dict[str, str] | None = None) -> Iterator[dict]:
    port = free_port()
    base = {
        "REC_LOG_LEVEL": "WARNING",
        "REC_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "REC_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "REC_KEEPALIVE_SECONDS": "1",
    }
    proc = start(
        [python(), "-m", "recommender", "--registry", registry, "--port", str(port)],
        env={**base, **(env or {})},
        log=tmp / f"server-{port}.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout=60, proc=proc)
        yield {"port": port, "pid": proc.pid, "log": tmp / f"server-{port}.log"}
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("hostile")
    registry = (tmp / "registry").as_uri()
    build_release(registry, n_users=200, n_items=300)
    with serve(tmp, registry, {"REC_MAX_CONNECTIONS": "1500"}) as info:
        info["registry"] = registry
        info["tmp"] = tmp
        yield info


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body (what every answer here carries)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response; got {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def json_error(body: bytes) -> str:
    payload = json.loads(body)
    assert set(payload) == {"error", "detail"} and payload["detail"], payload
    return payload["error"]


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def open_sockets(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def send_until_refused(sock: socket.socket, head: bytes, chunk: bytes, total: int) -> int:
    """Send `head`, then `chunk` (already framed) until `total` bytes or the server hangs up."""
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # EPIPE / ECONNRESET: the server closed the connection
        pass
    return sent


def chunked(payload: bytes) -> bytes:
    return b"%x\r\n" % len(payload) + payload + b"\r\n"


POST_CHUNKED = (
    b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


# ---- body size --------------------------------------------------------------------------------
def test_chunked_body_over_the_limit_is_413_before_parsing(server: dict) -> None:
    with connect(server["port"]) as sock:
        # 96 KiB of an endless JSON array, no terminating chunk: only a streamed count sees it
        send_until_refused(sock, POST_CHUNKED, chunked(b"[" + b"1," * 2047), 96 * 1024)
        status, headers, body = read_response(sock)
    assert status == 413 and json_error(body) == "body_too_large"
    assert headers["connection"] == "close"


def test_content_length_over_the_limit_is_413_before_any_body(server: dict) -> None:
    with connect(server["port"]) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 262144000\r\n\r\n"
        )
        status, _, body = read_response(sock)
    assert status == 413 and json_error(body) == "body_too_large"


def test_a_body_under_the_limit_still_works_chunked(server: dict) -> None:
    payload = json.dumps({"movie_ids": [1, 2, 3], "k": 5}).encode()
    with connect(server["port"]) as sock:
        sock.sendall(POST_CHUNKED + chunked(payload[:10]) + chunked(payload[10:]) + b"0\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 200 and len(json.loads(body)["items"]) == 5


def test_four_parallel_250mb_chunked_bodies_keep_memory_bounded(server: dict) -> None:
    pid, port = server["pid"], server["port"]
    before = memory_kib(pid)
    sent: list[int] = []
    block = chunked(b"7" * (256 * 1024 - 16))

    def hostile() -> None:
        with connect(port, timeout=30) as sock:
            sent.append(send_until_refused(sock, POST_CHUNKED, block, 250 * MB))

    threads = [threading.Thread(target=hostile) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    after = memory_kib(pid)
    # The server hung up after ~64 KiB each; what the client got out is loopback buffering.
    assert len(sent) == 4 and max(sent) < 32 * MB, sent
    # Generous: 4 connections' worth of reads, nowhere near the 1.3 GB the issue measured.
    assert after["VmHWM"] - before["VmHWM"] < 64 * 1024, (before, after)
    assert get(port, "/healthz")[0] == 200


# ---- headers ----------------------------------------------------------------------------------
def test_a_20mb_header_is_431(server: dict) -> None:
    pid = server["pid"]
    before = memory_kib(pid)
    with connect(server["port"]) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        send_until_refused(sock, head, b"a" * 65536, 20 * MB)
        status, _, body = read_response(sock)
    assert status == 431 and json_error(body) == "headers_too_large"
    assert memory_kib(pid)["VmHWM"] - before["VmHWM"] < 32 * 1024


def test_100k_headers_are_431(server: dict) -> None:
    with connect(server["port"]) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        lines = b"".join(b"X-%d: v\r\n" % i for i in range(1000))
        send_until_refused(sock, head, lines, 100 * len(lines))  # 100k header lines
        status, _, body = read_response(sock)
    assert status == 431 and json_error(body) == "headers_too_large"  # the bytes run out first


def test_more_than_100_small_headers_are_431(server: dict) -> None:
    with connect(server["port"]) as sock:
        lines = b"".join(b"X-%d: v\r\n" % i for i in range(101))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
        status, _, body = read_response(sock)
    assert status == 431 and json_error(body) == "too_many_headers"


def test_ordinary_headers_pass(server: dict) -> None:
    with connect(server["port"]) as sock:
        extra = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(60))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        status, _, _ = read_response(sock)
    assert status == 200


# ---- slow clients -----------------------------------------------------------------------------
def test_1000_slow_connections_are_dropped_and_memory_stays_flat(server: dict) -> None:
    pid, port = server["pid"], server["port"]
    baseline = open_sockets(pid)
    before = memory_kib(pid)
    socks = []
    started = time.monotonic()
    try:
        for i in range(1000):
            sock = connect(port, timeout=15)
            if i % 2:  # half send part of their headers and stall, half send nothing at all
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(sock)
        opened = time.monotonic()
        assert opened - started < HEADER_TIMEOUT, "opening took longer than the timeout"
        assert get(port, "/healthz")[0] == 200  # meanwhile, an ordinary client is served
        peak, remaining = 0, 1000
        deadline = opened + HEADER_TIMEOUT + SWEEP + 10
        while time.monotonic() < deadline:
            remaining = open_sockets(pid) - baseline
            peak = max(peak, remaining)
            if remaining <= 5 and peak >= 900:
                break
            time.sleep(0.1)
        dropped_after = time.monotonic() - opened
        assert peak >= 900, peak  # they were all accepted and held at first
        assert remaining <= 5, (peak, remaining)  # and all dropped within the header timeout
        assert dropped_after < HEADER_TIMEOUT + SWEEP + 10
        status, _, body = read_response(socks[1])  # a stalled one was told why
        assert status == 408 and json_error(body) == "header_timeout"
        assert socks[0].recv(100) == b""  # a silent one was closed without an answer
    finally:
        for sock in socks:
            sock.close()
    assert memory_kib(pid)["VmHWM"] - before["VmHWM"] < 64 * 1024


def test_a_body_that_never_finishes_is_408(server: dict) -> None:
    with connect(server["port"]) as sock:
        sock.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"movie_ids\": ["
        )
        started = time.monotonic()
        status, _, body = read_response(sock)
    assert status == 408 and json_error(body) == "body_timeout"
    assert BODY_TIMEOUT - 0.1 <= time.monotonic() - started < BODY_TIMEOUT + SWEEP + 3


def test_idle_keep_alive_connections_are_closed(server: dict) -> None:
    with connect(server["port"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert sock.recv(100) == b""  # REC_KEEPALIVE_SECONDS=1 here
    assert time.monotonic() - started < 5


def test_connection_cap_refuses_at_accept(server: dict) -> None:
    with serve(server["tmp"], server["registry"], {"REC_MAX_CONNECTIONS": "20"}) as small:
        socks = [connect(small["port"]) for _ in range(20)]
        try:
            time.sleep(0.3)  # let the server accept them all
            with connect(small["port"]) as extra:
                status, _, body = read_response(extra)
            assert status == 503 and json_error(body) == "too_many_connections"
        finally:
            for sock in socks:
                sock.close()
        time.sleep(0.3)
        assert get(small["port"], "/healthz")[0] == 200  # room again once they left


# ---- protocol errors and metrics --------------------------------------------------------------
def test_malformed_requests_get_json_400(server: dict) -> None:
    with connect(server["port"]) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 400 and json_error(body) == "bad_request"
    assert headers["content-type"] == "application/json"


def test_405_names_the_allowed_methods(server: dict) -> None:
    with connect(server["port"]) as sock:
        sock.sendall(b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 405 and "GET" in headers["allow"]
    assert json_error(body) == "method_not_allowed"


def test_refusals_are_counted_in_metrics(server: dict) -> None:
    with connect(server["port"]) as sock:
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        read_response(sock)
    status, body = get(server["port"], "/metrics")
    text = body.decode()
    assert status == 200
    key = 'marquee_http_rejected_total{reason="body_too_large"}'
    line = next(x for x in text.splitlines() if x.startswith(key))
    assert float(line.split()[-1]) >= 1
    assert "marquee_http_connections " in text


# ---- the command line and read-only use -------------------------------------------------------
def test_recommender_cli_unsupported_registry_is_one_line(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        [python(), "-m", "recommender", "--registry", "ftp://x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr == "error: 'ftp://x': unsupported store (use file://, s3:// or memory://)\n"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REC_MAX_HEADERS": "lots"}, "max_headers: Input should be a valid integer"),
        ({"REC_HEADER_TIMEOUT_SECONDS": "-1"}, "header_timeout_seconds: Input should be greater"),
        ({"REC_MAX_BODY_BYTES": "1"}, "max_body_bytes: Input should be greater"),
        ({"REC_PORT": "http"}, "port: Input should be a valid integer"),
    ],
)
def test_recommender_bad_settings_are_one_line(
    env: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from recommender.__main__ import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["--registry", (tmp_path / "r").as_uri()]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: invalid settings: {message}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_reading_a_missing_registry_creates_no_folders(tmp_path: Path) -> None:
    import subprocess

    from model_registry.registry import Registry

    missing = tmp_path / "no" / "registry"
    assert Registry.open(missing.as_uri()).versions() == []
    for command in (["versions"], ["status"]):
        out = subprocess.run(
            [python(), "-m", "model_registry", "--registry", missing.as_uri(), *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
    assert not (tmp_path / "no").exists()
    # (A serving replica is not read-only: it reports itself under control/replicas/.)
