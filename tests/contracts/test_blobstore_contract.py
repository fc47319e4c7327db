"""One contract for every BlobStore: memory, local disk, and S3 over HTTP (moto server)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from model_registry.errors import BlobNotFound, InvalidKey
from model_registry.storage import BlobStore, LocalStore, MemoryStore, S3Store, open_store


@pytest.fixture(params=["memory", "local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "memory":
        yield MemoryStore(uuid.uuid4().hex)
    elif request.param == "local":
        yield LocalStore(tmp_path / "store")
    else:
        bucket = request.getfixturevalue("s3_bucket")
        yield open_store(f"s3://{bucket}/some/prefix")


def test_put_get_roundtrip_binary(store: BlobStore) -> None:
    payload = bytes(range(256)) * 10
    store.put("a/b/c.npy", payload)
    assert store.get("a/b/c.npy") == payload


def test_put_overwrites(store: BlobStore) -> None:
    store.put("k", b"one")
    store.put("k", b"two")
    assert store.get("k") == b"two"


def test_size_without_reading(store: BlobStore) -> None:
    store.put("sized/blob", b"x" * 1234)
    assert store.size("sized/blob") == 1234
    with pytest.raises(BlobNotFound):
        store.size("sized/missing")


def test_missing_key_is_blob_not_found(store: BlobStore) -> None:
    with pytest.raises(BlobNotFound):
        store.get("nope/never")
    assert not store.exists("nope/never")


def test_list_is_sorted_and_prefix_filtered(store: BlobStore) -> None:
    for key in ("v0.2/x", "v0.1/b", "v0.1/a", "other"):
        store.put(key, b"1")
    assert store.list("v0.1/") == ["v0.1/a", "v0.1/b"]
    assert store.list() == ["other", "v0.1/a", "v0.1/b", "v0.2/x"]
    assert store.list("v0.1/a") == ["v0.1/a"]  # a prefix may end inside a name
    assert store.list("v0.") == ["v0.1/a", "v0.1/b", "v0.2/x"]
    assert store.list("v0.3/") == [] and store.list("nothing/below/") == []
    assert store.list("../") == store.list("/etc/") == store.list("v0.1/../") == []


def test_delete_is_idempotent(store: BlobStore) -> None:
    store.put("gone", b"x")
    store.delete("gone")
    store.delete("gone")
    assert not store.exists("gone")


def test_put_if_absent_creates_once(store: BlobStore) -> None:
    assert store.put_if_absent("claim", b"first") is True
    assert store.put_if_absent("claim", b"second") is False
    assert store.get("claim") == b"first"


def test_put_if_absent_has_one_winner_under_concurrency(store: BlobStore) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        wins = list(pool.map(lambda i: store.put_if_absent("race", str(i).encode()), range(16)))
    assert wins.count(True) == 1


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../escape",
        "a/../../b",
        "/abs",
        "a//b",
        "a/./b",
        "sp ace",
        "back\\slash",
        "a/b/",
        "nul\x00",
    ],
)
def test_hostile_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)


def test_open_store_schemes(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path.as_uri()), LocalStore)
    assert isinstance(open_store("memory://x"), MemoryStore)
    assert isinstance(open_store("s3://bucket/prefix"), S3Store)
    from model_registry.errors import StorageError

    for bad in ("ftp://host/x", "s3://", "file://remotehost/x"):
        with pytest.raises(StorageError):
            open_store(bad)


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b", b"x")
    store.put_if_absent("a/c", b"y")
    store.put_if_absent("a/c", b"z")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b", "c"]


def test_s3_outage_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    from model_registry.errors import StorageError

    store = open_store("s3://bucket/p")
    with pytest.raises(StorageError):
        store.put("k", b"x")
