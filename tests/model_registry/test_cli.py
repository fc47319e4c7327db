"""`python -m model_registry`: every command, one-line errors with exit 2, unreachable store 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_registry.__main__ import main
from model_registry.control import ControlPlane
from model_registry.storage import open_store
from tests.helpers import REPO, free_port
from tests.model_registry.test_control import EXPERIMENT, fake_release


@pytest.fixture
def registry(synthetic_release: dict, tmp_path: Path) -> str:
    """v0.1 (a real release) and v0.2, v0.3 (manifest-only copies for the pointer)."""
    import shutil

    src = Path(synthetic_release["registry"].removeprefix("file://"))
    shutil.copytree(src, tmp_path / "reg")
    store = open_store((tmp_path / "reg").as_uri())
    for version in ("v0.2", "v0.3"):
        fake_release(store, version)
    return (tmp_path / "reg").as_uri()


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model_registry", *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )


def test_promote_rollback_history_status(registry: str, capsys) -> None:
    assert main(["--registry", registry, "promote", "v0.1", "--reason", "first", "--by", "ci"]) == 0
    assert main(["--registry", registry, "promote", "v0.3", "--reason", "new"]) == 0
    assert main(["--registry", registry, "rollback", "--reason", "bad"]) == 0
    capsys.readouterr()
    assert main(["--registry", registry, "--json", "history", "--limit", "2"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [(r["from"], r["to"], r["action"]) for r in body["records"]] == [
        ("v0.3", "v0.1", "rollback"), ("v0.1", "v0.3", "promote")]
    assert body["next_before"] == 2
    assert main(["--registry", registry, "history", "--before", "2"]) == 0
    assert "#1 promote - -> v0.1 by ci" in capsys.readouterr().out
    cp = ControlPlane.open(registry)
    cp.set_experiment(EXPERIMENT, by="a", reason="start")
    cp.report_replica("r1", {"version": "v0.1", "in_sync": True})
    assert main(["--registry", registry, "status"]) == 0
    out = capsys.readouterr().out
    assert "pointer: v0.1" in out and "control=als:50" in out and "replica r1: serves v0.1" in out
    assert main(["--registry", registry, "versions"]) == 0
    assert "v0.1  (production)" in capsys.readouterr().out


def test_verify_checks_hashes_and_values(registry: str, capsys) -> None:
    assert main(["--registry", registry, "verify", "v0.1"]) == 0
    assert "every hash matches" in capsys.readouterr().out
    root = Path(registry.removeprefix("file://"))
    victim = next((root / "v0.1" / "als").glob("*.npy"))
    victim.write_bytes(victim.read_bytes()[:-8] + b"\x00" * 8)
    assert main(["--registry", registry, "verify", "v0.1"]) == 2
    assert "does not match its sha256" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["promote", "v9.9", "--reason", "x"], "not found"),
        (["promote", "v0.1\n", "--reason", "x"], "invalid release version"),
        (["promote", "v0.1", "--reason", "x", "--by", "a@b"], "actor"),
        (["promote", "v0.1", "--reason", "x", "--expect-seq", "7"], "pointer changed since seq 7"),
        (["rollback", "--reason", "x"], "nothing to roll back"),
        (["history", "--limit", "0"], "--limit"),
        (["history", "--stream", "../x"], "--stream"),
        (["show", "v0.9"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(registry: str, args: list, message: str) -> None:
    out = _run("--registry", registry, *args)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr


def test_no_registry_unsupported_scheme_and_unreachable_store(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k != "REGISTRY"}
    out = _run("versions", env=env)
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: no registry: pass --registry URI or set REGISTRY")
    out = _run("--registry", "ftp://x/y", "versions", env=env)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
            "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}
    out = _run("--registry", "s3://bucket/reg", "status", env=dead)
    assert out.returncode == 1, out
    assert out.stderr.startswith("error: cannot use the registry") and "Traceback" not in out.stderr
    out = _run("--registry", (tmp_path / "nothing").as_uri(), "versions", env=env)
    assert out.returncode == 0 and "(no releases)" in out.stdout
    assert not (tmp_path / "nothing").exists()  # a read creates no folder
