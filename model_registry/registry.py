"""Immutable, versioned releases on any BlobStore (layout in DESIGN.md §5).

    <root>/vX.Y/.claim            who claimed the number (written first, atomically)
    <root>/vX.Y/<part>/meta.json  per part (each model kind, and `vocab`): metadata + file sha256s
    <root>/vX.Y/<part>/*.npy      artifact files
    <root>/vX.Y/manifest.json     written LAST; holds the sha256 of every meta.json
    <root>/latest.txt             newest complete release (a hint; readers list manifests)
    <root>/control/...            production pointer, experiment state, decisions (control.py)

A version without a manifest does not exist for readers, so a crashed publish is invisible, and
two publishers can never share a number because the claim is a create-if-absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from model_registry.errors import (
    BlobNotFound,
    InvalidVersion,
    ReleaseCorrupt,
    ReleaseMalformed,
    ReleaseNotFound,
)
from model_registry.storage import BlobStore, open_store

FORMAT_MAJOR = 0  # grows when the artifact format changes incompatibly
VERSION_RE = re.compile(r"^v([0-9]{1,6})\.([0-9]{1,9})\Z")  # ASCII digits, whole string
MANIFEST = "manifest.json"
META = "meta.json"
_NAME = re.compile(r"(?!\.\.?\Z)[A-Za-z0-9._-]{1,128}\Z")  # one path segment; not . or ..


def parse_version(version: str) -> tuple[int, int]:
    match = VERSION_RE.match(version) if isinstance(version, str) else None
    if not match:
        raise InvalidVersion(
            f"invalid release version {version!r}: expected vMAJOR.MINOR, e.g. v0.3"
        )
    return int(match.group(1)), int(match.group(2))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode()


class Registry:
    def __init__(self, store: BlobStore) -> None:
        self.store = store

    @classmethod
    def open(cls, uri: str) -> Registry:
        return cls(open_store(uri))

    @property
    def uri(self) -> str:
        return self.store.uri

    # ---- reading -------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete releases, oldest first."""
        found = []
        for key in self.store.list("v"):  # release folders only: not control/, audit/, snapshots
            parts = key.split("/")
            if len(parts) == 2 and parts[1] == MANIFEST and VERSION_RE.match(parts[0]):
                found.append(parts[0])
        return sorted(found, key=parse_version)

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def manifest(self, version: str) -> dict[str, Any]:
        parse_version(version)
        try:
            raw = self.store.get(f"{version}/{MANIFEST}")
        except BlobNotFound:
            raise ReleaseNotFound(f"release {version} not found in {self.uri}") from None
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise ReleaseCorrupt(f"release {version}: manifest.json is not valid JSON") from None
        if not isinstance(manifest, dict) or manifest.get("version") != version:
            raise ReleaseCorrupt(f"release {version}: manifest.json does not describe {version}")
        return manifest

    def fetch(self, version: str, dest: Path) -> dict[str, Any]:
        """Download a release into `dest`, verifying every hash; returns the manifest.

        Raises ReleaseCorrupt at the first file whose bytes differ from what was published.
        """
        manifest = self.manifest(version)
        parts = manifest.get("parts")
        if not isinstance(parts, dict) or not parts:
            raise ReleaseCorrupt(f"release {version}: manifest lists no parts")
        for part, meta_sha in parts.items():
            meta_raw, files = self._part_meta(version, part, meta_sha)
            target = dest / part
            target.mkdir(parents=True, exist_ok=True)
            (target / META).write_bytes(meta_raw)
            for name, file_sha in files.items():
                (target / name).write_bytes(self._verified(version, f"{part}/{name}", file_sha))
        return manifest

    def read_part_file(self, version: str, part: str, name: str) -> bytes:
        """One file of a release, its hash checked through manifest -> meta.json -> file."""
        parts = self.manifest(version).get("parts")
        if not isinstance(parts, dict) or not isinstance(parts.get(part), str):
            raise ReleaseMalformed(f"release {version}: has no part {part!r}")
        _, files = self._part_meta(version, part, parts[part])
        if name not in files:
            raise ReleaseMalformed(f"release {version}: {part} has no file {name!r}")
        return self._verified(version, f"{part}/{name}", files[name])

    def _part_meta(self, version: str, part: str, meta_sha: Any) -> tuple[bytes, dict[str, str]]:
        """A part's verified meta.json and its {file name: sha256} (the part's format is the
        reader's business; the registry needs only that map)."""
        if not isinstance(part, str) or not _NAME.match(part) or not isinstance(meta_sha, str):
            raise ReleaseMalformed(f"release {version}: manifest part {part!r} is malformed")
        meta_raw = self._verified(version, f"{part}/{META}", meta_sha)
        try:
            meta = json.loads(meta_raw)
        except ValueError:
            raise ReleaseMalformed(f"release {version}: {part}/{META} is not valid JSON") from None
        files = meta.get("files", {}) if isinstance(meta, dict) else None
        if not isinstance(files, dict) or not all(
            isinstance(n, str) and _NAME.match(n) and n != META and isinstance(h, str)
            for n, h in files.items()
        ):
            raise ReleaseMalformed(
                f"release {version}: {part}/{META} needs an object with files {{name: sha256}}"
            )
        return meta_raw, files

    def _verified(self, version: str, rel: str, expected: str) -> bytes:
        try:
            data = self.store.get(f"{version}/{rel}")
        except BlobNotFound:
            raise ReleaseCorrupt(f"release {version}: {rel} is missing") from None
        if sha256_bytes(data) != expected:
            raise ReleaseCorrupt(f"release {version}: {rel} does not match its sha256")
        return data

    # ---- writing -------------------------------------------------------------------------
    def claim_version(self) -> str:
        """Reserve the next free vMAJOR.MINOR atomically (safe with concurrent publishers)."""
        taken = {
            parse_version(k.split("/")[0])
            for k in self.store.list("v")
            if VERSION_RE.match(k.split("/")[0])
        }
        minor = max((m for (maj, m) in taken if maj == FORMAT_MAJOR), default=0) + 1
        owner = _dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})
        while True:
            version = f"v{FORMAT_MAJOR}.{minor}"
            if self.store.put_if_absent(f"{version}/.claim", owner):
                return version
            minor += 1

    def publish(self, staging: Path, manifest: dict[str, Any]) -> str:
        """Upload `staging/<part>/*` as a new release and return its version.

        Each part folder's files are hashed into its meta.json (merged with any meta.json already
        in the folder); the manifest gets the version, the parts' meta hashes, and goes last.
        """
        version = self.claim_version()
        parts: dict[str, str] = {}
        for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
            meta_path = folder / META
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            files = {}
            for path in sorted(folder.iterdir()):
                if path.name == META or not path.is_file():
                    continue
                data = path.read_bytes()
                self.store.put(f"{version}/{folder.name}/{path.name}", data)
                files[path.name] = sha256_bytes(data)
            meta["files"] = files
            meta_raw = _dumps(meta)
            self.store.put(f"{version}/{folder.name}/{META}", meta_raw)
            parts[folder.name] = sha256_bytes(meta_raw)
        full = {**manifest, "version": version, "parts": parts}
        self.store.put(f"{version}/{MANIFEST}", _dumps(full))
        newest = self.latest() or version
        self.store.put("latest.txt", f"{newest}\n".encode())
        return version
