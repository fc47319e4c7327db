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


ALL_KINDS = ("popularity", "itemcf", "als", "ncf")


def build_release(
    registry_uri: str,
    n_users: int = 60,
    n_items: int = 40,
    seed: int = 0,
    kinds: tuple[str, ...] = ALL_KINDS,
    per_user: int = 5,
    manifest: dict | None = None,
    als_factors: int = 16,
) -> str:
    """Publish a release of random scorers over ids 1..n_users x 1..n_items, without training
    (DESIGN §7), through the release format; returns its version.

    Serving cost and validation depend on shapes and values, not on what the numbers mean, so
    this is what service tests and the serving benchmark use; training is tested elsewhere.
    """
    import itertools
    import tempfile

    import scipy.sparse as sp

    from model_registry.registry import Registry
    from trainer.models import release_format
    from trainer.models.als import ALSScorer
    from trainer.models.data import Vocab
    from trainer.models.itemcf import ItemCFScorer
    from trainer.models.ncf import NCFParams, NCFScorer
    from trainer.models.popularity import PopularityScorer

    rng = np.random.default_rng(seed)
    per_user = min(per_user, n_items)
    seen = np.stack([np.sort(rng.choice(n_items, per_user, replace=False)) for _ in range(n_users)])
    indptr = np.arange(0, (n_users + 1) * per_user, per_user, dtype=np.int64)
    indices = seen.ravel().astype(np.int32)
    history = sp.csr_matrix(
        (np.ones(indices.size, dtype=np.float32), indices, indptr), shape=(n_users, n_items)
    )
    scorers = {}
    if "popularity" in kinds:
        scorers["popularity"] = PopularityScorer(rng.random(n_items).astype(np.float32), n_users)
    if "itemcf" in kinds:
        density = min(0.2, 20 / n_items)  # ~20 neighbours per item at most
        sim = sp.random(n_items, n_items, density=density, random_state=seed, dtype=np.float32)
        scorers["itemcf"] = ItemCFScorer(sim.tocsr(), history)
    if "als" in kinds:
        shape = (als_factors,)
        factors = (rng.normal(0, 0.1, (n_users, *shape)), rng.normal(0, 0.1, (n_items, *shape)))
        scorers["als"] = ALSScorer(*factors)
    if "ncf" in kinds:
        p = NCFParams().resolve(n_users * per_user)
        shapes = {
            "gmf_user": (n_users, p.dim),
            "gmf_item": (n_items, p.dim),
            "mlp_user": (n_users, p.dim),
            "mlp_item": (n_items, p.dim),
            "out_w": (1, p.dim + p.hidden[-1]),
            "out_b": (1,),
        }
        for i, (a, b) in enumerate(itertools.pairwise((2 * p.dim, *p.hidden))):
            shapes[f"mlp_w{i}"], shapes[f"mlp_b{i}"] = (b, a), (b,)
        weights = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in shapes.items()}
        scorers["ncf"] = NCFScorer(weights)
    vocab = Vocab(np.arange(1, n_users + 1), np.arange(1, n_items + 1))
    catalogue = {str(i): {"title": f"Movie {i}", "genres": "Drama"} for i in range(1, n_items + 1)}
    with tempfile.TemporaryDirectory(prefix="marquee-build-") as tmp:
        stage = Path(tmp)
        kinds_meta = release_format.stage_release(stage, vocab, indptr, indices, catalogue, scorers)
        base = {
            "created_at": "2026-01-01T00:00:00+00:00",
            "git_sha": "synthetic",
            "data_snapshot_id": f"synthetic-{seed}",
            "image_digest": None,
            "kinds": kinds_meta,
            "gate": None,
        }
        return Registry.open(registry_uri).publish(stage, {**base, **(manifest or {})})


# Debian's chromium, driven by Playwright (its own browser download is not used): the page's
# test and scripts/ui_screenshots.py launch it the same way.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
