"""The infra linters, run by `make test`: hadolint (Dockerfile), actionlint, zizmor and the
workflow JSON schema over EVERY workflow in .github/workflows (whoever wrote it), the compose
spec schema, cfn-lint and checkov (infra/: CloudFormation and the Dockerfile, ~15 s)."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.helpers import REPO
from tests.infra.tools import INFRA, WORKFLOWS, run, tool, workflows

DOCKERFILES = sorted(INFRA.glob("**/Dockerfile*"))
TEMPLATES = sorted((INFRA / "aws").glob("*.yaml"))


def _ok(result: object) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]  # type: ignore[attr-defined]


def test_there_is_something_to_lint() -> None:
    assert DOCKERFILES and TEMPLATES and workflows()
    assert (WORKFLOWS / "deploy.yml") in workflows()


def test_hadolint() -> None:
    _ok(run([tool("hadolint"), "--no-color", *map(str, DOCKERFILES)]))


def test_actionlint_every_workflow() -> None:
    _ok(run([tool("actionlint"), "-no-color", *map(str, workflows())]))


def test_zizmor_every_workflow() -> None:
    _ok(run([tool("zizmor"), "--offline", "--no-progress", *map(str, workflows())]))


def test_workflow_schema_every_workflow() -> None:
    cmd = [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows"]
    _ok(run([*cmd, *map(str, workflows())]))


def test_compose_schema() -> None:
    cmd = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    _ok(run([*cmd, str(REPO / "docker-compose.yml")]))


def test_cfn_lint() -> None:
    _ok(run([tool("cfn-lint"), *map(str, TEMPLATES)]))


def test_checkov_infra() -> None:
    checkov = tool("checkov", "`make tools` installs it into .tools/checkov")
    # --skip-download: the bundled checks only, no call to the vendor's platform
    _ok(run([checkov, "-d", str(INFRA), "--skip-download", "--compact", "--quiet"]))


def test_every_checkov_skip_says_why() -> None:
    for path in TEMPLATES:
        skips = re.findall(r"- id: (CKV\w+)\n\s+comment: (.+)", path.read_text())
        assert skips, "expected the justified skips"
        assert all(len(why) > 30 for _, why in skips)
        assert path.read_text().count("- id: CKV") == len(skips)


def test_serving_image_has_no_training_libraries() -> None:
    """The serving target installs only the `serve` extra, which holds no torch, implicit,
    pandas or pyarrow (DESIGN §1: the service never imports them)."""
    text = (INFRA / "Dockerfile").read_text()
    stage = text.split("AS build-serving", 1)[1].split("FROM ", 1)[0]
    assert re.search(r'pip install --no-cache-dir "/src\[serve\]"', stage)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    serve = " ".join(extras["optional-dependencies"]["serve"] + extras["dependencies"]).lower()
    for heavy in ("torch", "implicit", "pandas", "pyarrow"):
        assert heavy not in serve


@pytest.mark.parametrize("target", ["serving", "ingestor", "trainer"])
def test_every_image_runs_as_non_root_with_a_healthcheck_decision(target: str) -> None:
    text = (INFRA / "Dockerfile").read_text()
    stage = text.split(f"AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    assert "USER 10001" in stage
    assert "HEALTHCHECK" in stage
    assert re.search(r"^FROM python:3\.11-slim@sha256:[0-9a-f]{64} AS base$", text, re.M)
