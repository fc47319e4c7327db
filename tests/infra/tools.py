"""Find the linters `make tools` installs (the venv's bin, .tools/, then PATH) and run them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

INFRA = REPO / "infra"
WORKFLOWS = REPO / ".github" / "workflows"
# checkov pins old boto3/packaging versions that break the project's own dependencies, so
# `make tools` gives it a venv of its own.
SEARCH = [Path(sys.executable).parent, REPO / ".tools" / "checkov" / "bin"]


def tool(name: str, why: str = "run `make tools`") -> str:
    for folder in SEARCH:
        if (folder / name).is_file():
            return str(folder / name)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({why})")
    return found


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def workflows() -> list[Path]:
    """Every workflow file, whoever wrote it: the linters must cover all of them."""
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])
