"""Releases whose hashes match but whose contents break the format are refused, with the reason
(issue #12): `release_invalid` (409) at load, /switch and POST /releases/{v}, skipped at start-up.

Each case publishes a good release built from arrays (no training), changes one file, and
re-signs it (new sha256 in meta.json, new meta.json sha256 in the manifest), exactly what a
buggy or hostile publisher could produce.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model_registry.registry import Registry
from recommender.errors import ReleaseInvalid, ReleaseNotFound, ReleaseRefused
from recommender.release import load_release
from tests.helpers import build_release, free_port, python, start, stop, wait_for_http
from trainer.models import release_format
from trainer.models.als import ALSScorer
from trainer.models.release_format import InvalidRelease, sample_users

TOKEN = "t0ken-for-the-release-validation-tests"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def resign(root: Path, version: str, part: str, name: str, data: bytes) -> None:
    """Replace one file and update the hashes above it, so fetching verifies cleanly."""
    folder = root / version / part
    (folder / name).write_bytes(data)
    if name != "meta.json":
        meta = json.loads((folder / "meta.json").read_bytes())
        meta["files"][name] = _sha(data)
        (folder / "meta.json").write_bytes(json.dumps(meta).encode())
    manifest_path = root / version / "manifest.json"
    manifest = json.loads(manifest_path.read_bytes())
    manifest["parts"][part] = _sha((folder / "meta.json").read_bytes())
    manifest_path.write_bytes(json.dumps(manifest).encode())


def edit_manifest(root: Path, version: str, change: Callable[[dict], None]) -> None:
    path = root / version / "manifest.json"
    manifest = json.loads(path.read_bytes())
    change(manifest)
    path.write_bytes(json.dumps(manifest).encode())


def _array(root: Path, version: str, part: str, name: str) -> np.ndarray:
    return np.load(root / version / part / name, allow_pickle=False)


N_USERS, N_ITEMS = 60, 40


def _meta_files_list(root: Path, v: str) -> None:
    meta = json.loads((root / v / "vocab" / "meta.json").read_bytes())
    meta["files"] = list(meta["files"])
    resign(root, v, "vocab", "meta.json", json.dumps(meta).encode())


def _nan(part: str, name: str) -> Callable[[Path, str], None]:
    def change(root: Path, v: str) -> None:
        array = _array(root, v, part, name).astype(np.float32)
        array[...] = np.nan
        resign(root, v, part, name, _npy(array))

    return change


CASES: dict[str, tuple[Callable[[Path, str], None], str]] = {
    "meta.json files is a list": (_meta_files_list, "needs an object with files"),
    "meta.json is not JSON": (
        lambda root, v: resign(root, v, "popularity", "meta.json", b"{not json"),
        "popularity/meta.json is not valid JSON",
    ),
    "meta.json of another kind": (
        lambda root, v: resign(
            root, v, "als", "meta.json",
            json.dumps({"kind": "ncf", "files": json.loads(
                (root / v / "als" / "meta.json").read_bytes())["files"]}).encode(),
        ),
        "als/meta.json: says kind 'ncf'",
    ),
    "catalogue is a list": (
        lambda root, v: resign(root, v, "vocab", "catalogue.json", b'[{"title": "x"}]'),
        "vocab/catalogue.json",
    ),
    "catalogue title is a number": (
        lambda root, v: resign(root, v, "vocab", "catalogue.json", b'{"1": {"title": 7}}'),
        "vocab/catalogue.json",
    ),
    "history shorter than the users": (
        lambda root, v: resign(
            root, v, "vocab", "history_indptr.npy",
            _npy(_array(root, v, "vocab", "history_indptr.npy")[: N_USERS // 2]),
        ),
        "history index pointer",
    ),
    "history names unknown items": (
        lambda root, v: resign(
            root, v, "vocab", "history_indices.npy",
            _npy(_array(root, v, "vocab", "history_indices.npy") + N_ITEMS),
        ),
        "outside the vocabulary",
    ),
    "user ids are floats": (
        lambda root, v: resign(
            root, v, "vocab", "user_ids.npy", _npy(np.arange(1.0, N_USERS + 1))
        ),
        "user_ids must be 1-D integers",
    ),
    "user ids not sorted": (
        lambda root, v: resign(
            root, v, "vocab", "user_ids.npy", _npy(np.arange(N_USERS, 0, -1))
        ),
        "strictly increasing",
    ),
    "als factors for fewer users": (
        lambda root, v: resign(
            root, v, "als", "user_factors.npy",
            _npy(_array(root, v, "als", "user_factors.npy")[:-3]),
        ),
        "als: 57 users",
    ),
    "als factors are strings": (
        lambda root, v: resign(
            root, v, "als", "item_factors.npy",
            _npy(_array(root, v, "als", "item_factors.npy").astype("U8")),
        ),
        "als:",
    ),
    "ncf weight missing": (
        lambda root, v: (
            (root / v / "ncf" / "out_b.npy").unlink(),
            resign(
                root, v, "ncf", "meta.json",
                json.dumps({"kind": "ncf", "files": {
                    k: h for k, h in json.loads(
                        (root / v / "ncf" / "meta.json").read_bytes())["files"].items()
                    if k != "out_b.npy"}}).encode(),
            ),
        ),
        "ncf: ",
    ),
    "all-NaN als factors": (_nan("als", "user_factors.npy"), "als: artifact 'user_factors'"),
    "NaN popularity": (_nan("popularity", "item_scores.npy"), "popularity: artifact"),
    "NaN itemcf similarity": (_nan("itemcf", "sim_data.npy"), "itemcf: artifact"),
    "NaN ncf weights": (_nan("ncf", "gmf_user.npy"), "ncf: artifact"),
    "als scores overflow": (  # finite factors whose products overflow float32
        lambda root, v: (
            resign(root, v, "als", "user_factors.npy", _npy(np.full((N_USERS, 16), 1e20))),
            resign(root, v, "als", "item_factors.npy", _npy(np.full((N_ITEMS, 16), 1e20))),
        ),
        "als: scores are not finite",
    ),
    "unknown kind": (
        lambda root, v: edit_manifest(root, v, lambda m: m["kinds"].update(svd={})),
        "unknown model kind",
    ),
    "no popularity": (
        lambda root, v: edit_manifest(root, v, lambda m: m["kinds"].pop("popularity")),
        "no popularity model",
    ),
}


@pytest.fixture
def registry(tmp_path: Path) -> tuple[Path, Registry]:
    root = tmp_path / "registry"
    build_release(root.as_uri(), n_users=N_USERS, n_items=N_ITEMS)
    return root, Registry.open(root.as_uri())


def test_a_good_release_loads(registry: tuple[Path, Registry]) -> None:
    release = load_release(registry[1], "v0.1", precompute_cells=10**6)
    assert sorted(release.scorers) == ["als", "itemcf", "ncf", "popularity"]
    assert release.titles[0] == "Movie 1" and release.top["als"].counts.min() > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_release_is_refused_with_the_reason(
    case: str, registry: tuple[Path, Registry]
) -> None:
    root, reg = registry
    change, reason = CASES[case]
    change(root, "v0.1")
    with pytest.raises(ReleaseInvalid) as info:
        load_release(reg, "v0.1")
    assert info.value.status == 409 and info.value.code == "release_invalid"
    assert reason in info.value.detail, info.value.detail
    assert str(root) not in info.value.detail  # no registry path in an answer


def test_non_finite_scores_outside_the_sample_are_caught_by_the_precompute(
    tmp_path: Path,
) -> None:
    root = tmp_path / "registry"
    build_release(root.as_uri(), n_users=300, n_items=N_ITEMS)
    row = next(u for u in range(300) if u not in set(sample_users(300).tolist()))
    factors = _array(root, "v0.1", "als", "user_factors.npy") * 1e-19
    factors[row] = 1e20  # finite, but this user's scores overflow float32
    resign(root, "v0.1", "als", "user_factors.npy", _npy(factors))
    items = np.full_like(_array(root, "v0.1", "als", "item_factors.npy"), 1e19)
    resign(root, "v0.1", "als", "item_factors.npy", _npy(items))
    reg = Registry.open(root.as_uri())
    load_release(reg, "v0.1")  # the sample alone does not see it ...
    with pytest.raises(ReleaseInvalid, match=f"als scores are not finite for user_idx {row}"):
        load_release(reg, "v0.1", precompute_cells=10**6)  # ... every user's top list does


def test_a_changed_file_is_still_corrupt_not_invalid(registry: tuple[Path, Registry]) -> None:
    root, reg = registry
    (root / "v0.1" / "vocab" / "catalogue.json").write_text("{}")  # hash no longer matches
    with pytest.raises(ReleaseRefused) as info:
        load_release(reg, "v0.1")
    assert info.value.code == "release_refused" and "sha256" in info.value.detail


def test_the_trainer_refuses_to_write_non_finite_artifacts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
    users[2, 1] = np.nan
    with pytest.raises(InvalidRelease, match="'user_factors' has non-finite values"):
        release_format.save_scorer(tmp_path / "als", ALSScorer(users, items))
    with np.errstate(over="ignore"):
        overflowing = ALSScorer(np.full((5, 4), 1e20), items + 1e20)
    with pytest.raises(InvalidRelease, match="scores are not finite"):
        release_format.save_scorer(tmp_path / "als", overflowing)
    assert not (tmp_path / "als").exists()  # nothing written


# ---- over HTTP, against a real process ------------------------------------------------------
def _post(base: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else b""
    request = urllib.request.Request(
        base + path,
        data=data,
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_invalid_releases_over_http_are_409_and_skipped_at_start(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    uri = root.as_uri()
    build_release(uri, n_users=N_USERS, n_items=N_ITEMS, seed=0)
    build_release(uri, n_users=N_USERS, n_items=N_ITEMS, seed=1)
    CASES["catalogue is a list"][0](root, "v0.2")
    build_release(uri, n_users=N_USERS, n_items=N_ITEMS, seed=2)
    CASES["history shorter than the users"][0](root, "v0.3")  # newest; once crashed start-up
    port = free_port()
    proc = start(
        [python(), "-m", "recommender", "--registry", uri, "--port", str(port)],
        env={"REC_ADMIN_TOKEN": TOKEN, "REC_LOG_LEVEL": "WARNING"},
        log=tmp_path / "server.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/healthz", timeout=60, proc=proc)
        assert proc.poll() is None  # the newest release is malformed: skipped, not fatal
        for path, body in (("/releases/v0.2", None), ("/switch", {"version": "v0.3"})):
            status, answer = _post(base, path, body)
            assert status == 409 and answer["error"] == "release_invalid", answer
            assert "release v0." in answer["detail"] and str(root) not in answer["detail"]
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        key = 'marquee_swaps_total{result="refused"}'
        refused = [x for x in metrics.splitlines() if x.startswith(key)]
        assert refused and float(refused[0].split()[-1]) >= 1
        assert proc.poll() is None
    finally:
        stop(proc)


def test_refusals_do_not_show_where_the_registry_lives(registry: tuple[Path, Registry]) -> None:
    root, reg = registry
    with pytest.raises(ReleaseNotFound) as missing:
        load_release(reg, "v9.9")
    (root / "v0.1" / "als" / "item_factors.npy").unlink()
    with pytest.raises(ReleaseRefused) as corrupt:
        load_release(reg, "v0.1")
    for exc in (missing.value, corrupt.value):
        assert str(root) not in exc.detail and reg.uri not in exc.detail, exc.detail
