"""DESIGN.md §1: the package dependency rule and a service that never imports torch or implicit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

ALLOWED = {  # package -> our packages it may import
    "model_registry": set(),
    "ingestor": {"model_registry"},
    "trainer": {"model_registry", "ingestor"},
    "recommender": {"model_registry", "trainer"},
}


def _our_imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in ALLOWED and top != package:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_package_dependency_rule() -> None:
    for package, allowed in ALLOWED.items():
        illegal = {k: v for k, v in _our_imports(package).items() if k not in allowed}
        assert not illegal, f"{package} may not import {illegal}"


def test_service_does_not_import_training_libraries(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "from recommender.app import create_app\n"
        "from recommender.settings import ServiceSettings\n"
        f"create_app(ServiceSettings(registry={(tmp_path / 'r').as_uri()!r}))\n"
        "import trainer.models\n"
        "heavy = ('torch', 'implicit', 'pandas')\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(out.stdout) == []
