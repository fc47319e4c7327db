"""Test helpers for fleets: registries with cloned releases, replica processes, a faulty S3 proxy.

Releases are cloned from one trained release (same arrays, another version number): the fleet
tests are about which version each replica serves, not about what the models answer.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.helpers import free_port, python, start, stop, wait_for_http

TOKEN = "fleet-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def clone_release(root: Path, source: str, target: str) -> None:
    """Copy release `source` to `target` under a registry folder (manifest names the target)."""
    shutil.copytree(root / source, root / target)
    manifest = json.loads((root / target / "manifest.json").read_text())
    manifest["version"] = target
    (root / target / "manifest.json").write_text(json.dumps(manifest))


def upload_folder(folder: Path, bucket: str, prefix: str, endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


class Replica:
    """One `python -m recommender` process on a free loopback port."""

    def __init__(self, registry: str, log: Path, env: dict[str, str]) -> None:
        self.registry, self.log, self.env = registry, log, env
        self.port = free_port()
        self.proc = None

    def start(self, wait: str = "/healthz") -> Replica:
        self.proc = start(
            [python(), "-m", "recommender", "--registry", self.registry, "--port", str(self.port)],
            env={"REC_ADMIN_TOKEN": TOKEN, "REC_LOG_LEVEL": "INFO", **self.env},
            log=self.log,
        )
        wait_for_http(f"http://127.0.0.1:{self.port}{wait}", timeout=90, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def call(self, method: str, path: str, body: object = None, headers: dict | None = None,
             timeout: float = 30) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith(b"{") else {"raw": raw}
        finally:
            conn.close()

    def version(self) -> str | None:
        return self.call("GET", "/healthz")[1].get("version")

    def metric(self, name: str) -> float | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


def wait_until(check, timeout: float, step: float = 0.05) -> float:
    """Seconds until `check()` is true; AssertionError after `timeout`."""
    started = time.monotonic()
    while True:
        if check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(step)


class FaultyProxy:
    """An HTTP proxy in front of moto's S3 server that can refuse chosen requests.

    `down = True` refuses every request (a registry that cannot be reached);
    `fail = (METHOD, regex)` answers 500 to matching requests (a store that fails a write).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self.fail: tuple[str, re.Pattern] | None = None
        self.failed = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.down or (
                    proxy.fail
                    and self.command == proxy.fail[0]
                    and proxy.fail[1].search(self.path)
                ):
                    proxy.failed += 1
                    payload = b"<Error><Code>InternalError</Code></Error>"
                    self.send_response(500)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{proxy.target_port}"
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


__all__ = ["ADMIN", "TOKEN", "FaultyProxy", "Replica", "clone_release", "upload_folder",
           "wait_for_http", "wait_until"]
