"""The README stays true command for command.

Every command it shows is run the cheap way: `make -n TARGET` (a dry run), `python -m PKG [SUB]
--help` and `python scripts/X.py --help`, and every `--flag` it shows must be one that command
accepts; every `curl` path must be a route of the service; every link and image must exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import REPO

README = REPO / "README.md"
MAX_LINES = 220  # a landing page; the details live in docs/
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def shell_commands(text: str) -> list[str]:
    """Each command line of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def inline_commands(text: str) -> list[str]:
    """`python ...` and `make ...` written inline (tables, prose)."""
    return re.findall(r"`((?:python|make) [^`]+)`", text)


def _tokens(command: str) -> list[str]:
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in a placeholder: fall back to spaces
        tokens = command.split()
    # placeholders like [--seed N] or {a,b}: keep the words, drop the brackets
    return [t.strip("[]{}|") for t in tokens if t.strip("[]{}|")]


def _help(args: list[str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, *args, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    return proc.returncode, proc.stdout + proc.stderr


def _subcommands(help_text: str) -> set[str]:
    usage = help_text.split("\n\n")[0]
    return {c for group in re.findall(r"\{([a-z0-9_,-]+)\}", usage) for c in group.split(",")}


def python_checks(commands: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """(command, argv of the program, the words after it) for `python -m X` / `python x.py`."""
    found = []
    for command in commands:
        tokens = _tokens(command)
        if not tokens or not tokens[0].endswith("python"):
            continue
        if len(tokens) > 2 and tokens[1] == "-m":
            found.append((command, ["-m", tokens[2]], tokens[3:]))
        elif len(tokens) > 1 and tokens[1].endswith(".py"):
            found.append((command, [tokens[1]], tokens[2:]))
    return found


def _parallel(argvs: set[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[int, str]]:
    ordered = sorted(argvs)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(ordered, pool.map(lambda a: _help(list(a)), ordered), strict=True))


def make_targets(commands: list[str]) -> set[str]:
    targets = set()
    for command in commands:
        tokens = _tokens(command)
        if tokens and tokens[0] == "make":
            targets |= {t for t in tokens[1:] if not t.startswith("-") and "=" not in t}
    return targets


def text() -> str:
    return README.read_text()


def test_readme_is_a_landing_page() -> None:
    lines = text().splitlines()
    assert len(lines) <= MAX_LINES, f"README has {len(lines)} lines; move details to docs/"
    shown = [_tokens(c) for c in shell_commands(text())]
    for command in ("make run", "make test"):
        assert command.split() in shown, f"the README must show `{command}`"


def test_every_python_command_exists_with_the_flags_shown() -> None:
    checks = python_checks(shell_commands(text()) + inline_commands(text()))
    assert len(checks) >= 8, checks
    tops = _parallel({tuple(program) for _, program, _ in checks})
    # The subcommand: a word its parser lists ({a,b,...}) wherever it stands (after global
    # options too), else a first bare word, which is a subcommand if `... WORD --help` works.
    subs: dict[str, str | None] = {}
    for command, program, rest in checks:
        listed = _subcommands(tops[tuple(program)][1])
        word = next((t for t in rest if t in listed), None)
        if word is None and rest and not rest[0].startswith("-"):
            word = rest[0]
        subs[command] = word
    sub_helps = _parallel(
        {(*program, subs[c]) for c, program, _ in checks if subs[c] is not None}
    )
    problems = []
    for command, program, rest in checks:
        code, out = tops[tuple(program)]
        word = subs[command]
        if word is not None:
            sub_code, sub_out = sub_helps[(*program, word)]
            if sub_code == 0:
                code, out = 0, out + sub_out
            elif program[0] == "-m" or word in _subcommands(out):
                # a module's first bare word is its subcommand (a typo must fail); a script's
                # may be a positional argument, checked by the script's own --help
                code, out = sub_code, sub_out
        if code != 0:
            problems.append(f"{command!r}: `{' '.join(program)} ... --help` exited {code}: "
                            f"{out[-300:]}")
            continue
        shown = {f for t in rest for f in FLAG.findall(t.split("=")[0])}
        missing = shown - set(FLAG.findall(out))
        if missing:
            problems.append(f"{command!r}: {sorted(missing)} not in its --help")
    assert not problems, "\n".join(problems)


def test_every_make_target_dry_runs() -> None:
    targets = make_targets(shell_commands(text()) + inline_commands(text()))
    assert {"run", "test"} <= targets
    for target in sorted(targets):
        proc = subprocess.run(
            ["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"make -n {target}: {proc.stderr[-500:]}"


def test_every_curl_path_is_a_route() -> None:
    from recommender.app import create_app
    from recommender.settings import ServiceSettings

    app = create_app(ServiceSettings(registry="memory://readme-routes"))
    routes = [  # each path template, its {parameters} matching one segment
        re.compile("[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]+\}", t)) + r"\Z")
        for t in app.openapi()["paths"]
    ]
    paths = [
        url.split("?")[0]
        for command in shell_commands(text())
        if command.startswith("curl")
        for url in re.findall(r"https?://[^/\s'\"]+(/[^\s'\"]*)", command)
    ]
    for path in paths:
        assert any(r.match(path) for r in routes), f"no route for {path}"


@pytest.mark.parametrize(
    "doc", ["README.md", "docs/serving.md", "docs/ingest.md", "docs/benchmarks.md"]
)
def test_links_and_images_exist(doc: str) -> None:
    source = REPO / doc
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (source.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc} links to {target}, which does not exist"
