"""Test helpers: synthetic MovieLens folders, free loopback ports, processes stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GENRE_FLAGS = "|".join(["0"] * 19)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def synthetic_ratings(
    n_users: int = 60, n_items: int = 40, per_user: int = 12, seed: int = 0
) -> list[tuple[int, int, int, int]]:
    """Two taste groups (even / odd movie ids), each user rating mostly within their group."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        group = user % 2
        own = [i for i in range(1, n_items + 1) if i % 2 == group]
        other = [i for i in range(1, n_items + 1) if i % 2 != group]
        picks = list(rng.choice(own, size=per_user - 2, replace=False))
        picks += list(rng.choice(other, size=2, replace=False))
        picks = [picks[i] for i in rng.permutation(len(picks))]  # off-taste picks anywhere in time
        for step, item in enumerate(picks):
            rows.append(
                (user, int(item), int(rng.integers(1, 6)), 880_000_000 + user * 1000 + step)
            )
    return rows


def write_ml100k(folder: Path, rows: list[tuple[int, int, int, int]], n_items: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    (folder / "u.item").write_text(
        "".join(
            f"{i}|Movie {i} (1990)|01-Jan-1990||http://example.invalid/{i}|{GENRE_FLAGS}\n"
            for i in range(1, n_items + 1)
        )
    )
    return folder


def wait_for_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def start(
    args: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen:
    out = log.open("wb") if log else subprocess.DEVNULL
    return subprocess.Popen(
        args,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen) -> None:
    """Stop a process we started, by its PID (and its own process group only)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def start_moto(port: int, log: Path) -> subprocess.Popen:
    """moto's S3 server on 127.0.0.1:port, answering once this returns. State lives in memory:
    a restarted server starts empty."""
    import shutil

    binary = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = start([binary, "-H", "127.0.0.1", "-p", str(port)], log=log)
    wait_for_http(f"http://127.0.0.1:{port}/moto-api/", timeout=30, proc=proc)
    return proc


def python() -> str:
    return sys.executable
