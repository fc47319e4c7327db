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


# Module-level rules inside the package graph (DESIGN §1): the service sees the trainer only
# through the seam, and the seam (`trainer.models`) imports nothing else of the trainer.
SEAM = "trainer.models"
MODULE_RULES = {  # package folder -> the trainer modules it may import
    "recommender": (SEAM,),
    "trainer/models": (SEAM,),
}


def _module_imports(folder: str) -> list[tuple[str, str]]:
    """(file, module) for every absolute import of a `trainer` module under `folder`, lazy too."""
    out = []
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from trainer import models` names the module trainer.models
                names = [f"{node.module}.{a.name}" for a in node.names]
                names = [node.module] if node.module != "trainer" else names
            else:
                continue
            out += [(str(path.relative_to(REPO)), n) for n in names if n.split(".")[0] == "trainer"]
    return out


def _allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_module_dependency_rule() -> None:
    for folder, prefixes in MODULE_RULES.items():
        illegal = [(f, m) for f, m in _module_imports(folder) if not _allowed(m, prefixes)]
        assert not illegal, f"{folder} may import only {prefixes} of trainer, found {illegal}"


def test_module_rule_catches_a_violation(tmp_path: Path, monkeypatch) -> None:
    """The rule is not vacuous: an upward import inside a copy of the seam is reported."""
    import tests.test_dependency_rules as rules

    (tmp_path / "trainer" / "models").mkdir(parents=True)
    (tmp_path / "trainer" / "models" / "x.py").write_text(
        "def f():\n    from trainer.evaluate import evaluate\n    from trainer import data\n"
    )
    monkeypatch.setattr(rules, "REPO", tmp_path)
    found = sorted(m for _, m in _module_imports("trainer/models"))
    assert found == ["trainer.data", "trainer.evaluate"]
    assert not any(_allowed(m, (SEAM,)) for m in found)


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
