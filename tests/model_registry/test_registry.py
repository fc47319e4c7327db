from __future__ import annotations

import json
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from model_registry.errors import InvalidVersion, ReleaseCorrupt, ReleaseNotFound
from model_registry.registry import Registry, parse_version
from tests.helpers import REPO


def _staging(root: Path, value: float = 1.0) -> Path:
    (root / "als").mkdir(parents=True)
    np.save(root / "als" / "user_factors.npy", np.full((3, 2), value, dtype=np.float32))
    (root / "als" / "meta.json").write_text(json.dumps({"kind": "als", "params": {"factors": 2}}))
    (root / "vocab").mkdir()
    np.save(root / "vocab" / "user_ids.npy", np.arange(1, 4))
    return root


@pytest.fixture(params=["memory", "local", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    if request.param == "memory":
        return Registry.open(f"memory://{uuid.uuid4().hex}")
    if request.param == "local":
        return Registry.open((tmp_path / "reg").as_uri())
    return Registry.open(f"s3://{request.getfixturevalue('s3_bucket')}/registry")


def test_publish_then_fetch_roundtrip(registry: Registry, tmp_path: Path) -> None:
    version = registry.publish(_staging(tmp_path / "s"), {"git_sha": "abc"})
    assert version == "v0.1"
    assert registry.versions() == ["v0.1"] and registry.latest() == "v0.1"
    manifest = registry.fetch(version, tmp_path / "out")
    assert manifest["git_sha"] == "abc" and set(manifest["parts"]) == {"als", "vocab"}
    meta = json.loads((tmp_path / "out" / "als" / "meta.json").read_text())
    assert meta["params"] == {"factors": 2} and set(meta["files"]) == {"user_factors.npy"}
    got = np.load(tmp_path / "out" / "als" / "user_factors.npy")
    assert np.array_equal(got, np.ones((3, 2), dtype=np.float32))
    assert registry.store.get("latest.txt") == b"v0.1\n"


def test_versions_grow_and_sort_numerically(registry: Registry, tmp_path: Path) -> None:
    for i in range(11):
        registry.publish(_staging(tmp_path / f"s{i}"), {})
    assert registry.versions()[-3:] == ["v0.9", "v0.10", "v0.11"]
    assert registry.latest() == "v0.11"


def test_tampered_file_is_refused(registry: Registry, tmp_path: Path) -> None:
    version = registry.publish(_staging(tmp_path / "s"), {})
    registry.store.put(f"{version}/als/user_factors.npy", b"not what was published")
    with pytest.raises(ReleaseCorrupt, match=r"user_factors.npy does not match"):
        registry.fetch(version, tmp_path / "out")


def test_tampered_meta_is_refused(registry: Registry, tmp_path: Path) -> None:
    version = registry.publish(_staging(tmp_path / "s"), {})
    registry.store.put(f"{version}/als/meta.json", b'{"files": {}}')
    with pytest.raises(ReleaseCorrupt, match=r"meta.json"):
        registry.fetch(version, tmp_path / "out")


def test_missing_file_is_refused(registry: Registry, tmp_path: Path) -> None:
    version = registry.publish(_staging(tmp_path / "s"), {})
    registry.store.delete(f"{version}/vocab/user_ids.npy")
    with pytest.raises(ReleaseCorrupt, match="missing"):
        registry.fetch(version, tmp_path / "out")


def test_release_without_manifest_does_not_exist(registry: Registry, tmp_path: Path) -> None:
    registry.publish(_staging(tmp_path / "s"), {})
    # A publisher that died half way: claimed v0.2 and wrote a file, never the manifest.
    registry.store.put("v0.2/.claim", b"{}")
    registry.store.put("v0.2/als/user_factors.npy", b"partial")
    assert registry.versions() == ["v0.1"]
    with pytest.raises(ReleaseNotFound):
        registry.manifest("v0.2")
    assert registry.publish(_staging(tmp_path / "s2"), {}) == "v0.3"  # the dead number is skipped


@pytest.mark.parametrize("bad", ["0.1", "v1", "v0.1/../x", "../v0.1", "v0.1 ", "va.b", "", "v-1.0"])
def test_malformed_versions_are_refused(registry: Registry, bad: str) -> None:
    with pytest.raises(InvalidVersion):
        registry.manifest(bad)
    with pytest.raises(InvalidVersion):
        parse_version(bad)


def test_malformed_manifest_is_corrupt(registry: Registry) -> None:
    registry.store.put("v0.1/manifest.json", b"{not json")
    with pytest.raises(ReleaseCorrupt):
        registry.manifest("v0.1")
    registry.store.put("v0.2/manifest.json", b'{"version": "v9.9"}')
    with pytest.raises(ReleaseCorrupt):
        registry.manifest("v0.2")


def test_concurrent_publishers_get_distinct_complete_versions(
    registry: Registry, tmp_path: Path
) -> None:
    stagings = [_staging(tmp_path / f"s{i}", value=float(i)) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        versions = list(pool.map(lambda s: registry.publish(s, {}), stagings))
    assert sorted(versions, key=parse_version) == [f"v0.{i}" for i in range(1, 7)]
    for version in versions:
        registry.fetch(version, tmp_path / "out" / version)  # every one is whole and verifies


_PUBLISH = """
import json, sys
from pathlib import Path
import numpy as np
from model_registry.registry import Registry
root = Path(sys.argv[2]); (root / "m").mkdir(parents=True)
np.save(root / "m" / "w.npy", np.arange(10))
print(Registry.open(sys.argv[1]).publish(root, {}))
"""


def test_concurrent_publisher_processes_on_disk(tmp_path: Path) -> None:
    uri = (tmp_path / "reg").as_uri()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PUBLISH, uri, str(tmp_path / f"s{i}")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    versions = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(versions) == ["v0.1", "v0.2", "v0.3", "v0.4"]
    assert Registry.open(uri).versions() == ["v0.1", "v0.2", "v0.3", "v0.4"]
