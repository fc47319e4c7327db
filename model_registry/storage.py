"""BlobStore: get / put / put_if_absent / list / delete on '/'-separated keys, chosen by URI scheme.

- `file:///abs/path`     LocalStore: temp file, fsync, os.replace: readers never see half a file
- `s3://bucket/prefix`   S3Store: boto3; endpoint from AWS_ENDPOINT_URL (moto, MinIO, LocalStack)
- `memory://name`        MemoryStore: process-local, for fast tests

`put_if_absent` is the one atomic primitive the registry builds on (claiming a version):
O_EXCL-style `os.link` locally, `If-None-Match: *` on S3, a lock in memory.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from model_registry.errors import BlobNotFound, InvalidKey, InvalidStoreURI, StorageError

_KEY_PART = re.compile(r"^[A-Za-z0-9._=-]+$")


def check_key(key: str) -> str:
    """Keys are relative '/'-joined names of safe characters; no '..', no empty parts."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise InvalidKey(f"invalid storage key {key!r}")
    return key


class BlobStore(ABC):
    uri: str

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write only if nothing is there yet; True if this call created it."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Bytes stored under `key`, without reading them."""

    def exists(self, key: str) -> bool:
        try:
            self.get(key)
        except BlobNotFound:
            return False
        return True


class LocalStore(BlobStore):
    def __init__(self, root: Path) -> None:
        # No mkdir here: reading (listing, verifying, serving) must not create folders; the
        # first write creates what it needs (_write_temp), and a missing root lists as empty.
        self.root = root.resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFound(f"{self.uri}/{key}: not found") from None

    def _write_temp(self, path: Path, data: bytes) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            os.replace(self._write_temp(path, data), path)
        except OSError as exc:
            raise StorageError(f"{self.uri}/{key}: write failed: {exc.strerror}") from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            tmp = self._write_temp(path, data)
        except OSError as exc:
            raise StorageError(f"{self.uri}/{key}: write failed: {exc.strerror}") from None
        try:
            os.link(tmp, path)  # atomic: fails if the name exists
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise StorageError(f"{self.uri}/{key}: write failed: {exc.strerror}") from None
        finally:
            os.unlink(tmp)

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the folder the prefix names ('ranges/rate/part-00003-' -> ranges/rate/), not
        # the whole store: the ingestor's markers sit beside many snapshot files.
        folder, _, _ = prefix.rpartition("/")
        try:
            top = self._path(folder) if folder else self.root
        except InvalidKey:
            return []  # no valid key lies below '../x/', '/etc/' and the like
        keys = []
        for dirpath, dirs, files in os.walk(top):
            # Prune folders the prefix rules out ('v' walks v0.1/, v0.2/ but not snapshots/).
            here = Path(dirpath).relative_to(self.root).as_posix()
            here = "" if here == "." else here + "/"
            dirs[:] = [
                d
                for d in dirs
                if (here + d + "/").startswith(prefix) or prefix.startswith(here + d + "/")
            ]
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                rel = Path(dirpath, name).relative_to(self.root).as_posix()
                if rel.startswith(prefix):
                    keys.append(rel)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(f"{self.uri}/{key}: not found") from None


class MemoryStore(BlobStore):
    _named: ClassVar[dict[str, dict[str, bytes]]] = {}
    _lock = threading.Lock()

    def __init__(self, name: str) -> None:
        self.uri = f"memory://{name}"
        with self._lock:
            self._blobs = self._named.setdefault(name, {})

    def get(self, key: str) -> bytes:
        try:
            return self._blobs[check_key(key)]
        except KeyError:
            raise BlobNotFound(f"{self.uri}/{key}: not found") from None

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._blobs[check_key(key)] = bytes(data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self._lock:
            if check_key(key) in self._blobs:
                return False
            self._blobs[key] = bytes(data)
            return True

    def list(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._blobs if k.startswith(prefix))

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(check_key(key), None)

    def size(self, key: str) -> int:
        return len(self.get(key))


class S3Store(BlobStore):
    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
            # AWS_MAX_ATTEMPTS (the SDK's own variable) when set: a replica that polls every
            # few seconds may prefer failing fast over five backed-off attempts.
            config=Config(
                retries={
                    "max_attempts": _env_int("AWS_MAX_ATTEMPTS", 5),
                    "mode": "standard",
                },
                connect_timeout=_env_int("AWS_CONNECT_TIMEOUT", 10),
            ),
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """botocore's errors as ours: a missing object is BlobNotFound, the rest StorageError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise BlobNotFound(f"{self.uri}/{key}: not found") from None
            raise StorageError(f"{self.uri}/{key}: {type(exc).__name__}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.uri}/{key}: {type(exc).__name__}: {exc}") from None

    def get(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(key):
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
                return True
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (409, 412):  # PreconditionFailed / ConditionalRequestConflict
                    return False
                raise

    def list(self, prefix: str = "") -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with self._errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + prefix
            )
            for page in pages:
                keys.extend(obj["Key"][len(base) :] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def size(self, key: str) -> int:
        with self._errors(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else default


def open_store(uri: str) -> BlobStore:
    """The store a URI names: file:///abs/path, s3://bucket/prefix or memory://name."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidStoreURI(f"{uri}: file URIs must be file:///absolute/path")
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidStoreURI(f"{uri}: s3 URIs need a bucket: s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "memory":
        return MemoryStore(parsed.netloc or "default")
    if parsed.scheme == "" and uri:
        return LocalStore(Path(uri))  # a plain path is a convenience for the command line
    raise InvalidStoreURI(f"{uri!r}: unsupported store (use file://, s3:// or memory://)")
