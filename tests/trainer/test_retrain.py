"""The retrain loop through its CLI: publish + promote, drift and gate recorded, refusal, dry run,
bad input; and the workflow's make target, parsed from retrain.yml and run against moto's S3."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from model_registry.control import ControlPlane
from model_registry.registry import Registry
from scripts.bench_train import synthetic, write_ml100k
from tests.helpers import REPO
from trainer.__main__ import main
from trainer.models import MODELS

KINDS = "popularity,als"


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A MovieLens-shaped history: its first 80 % by time, and all of it."""
    root = tmp_path_factory.mktemp("windows")
    ratings, items = synthetic(300, 200, 9_000, seed=5)
    ratings = ratings.sort_values("timestamp", kind="stable")
    cut = int(len(ratings) * 0.8)
    return {
        "early": write_ml100k(root / "early", ratings.iloc[:cut], items),
        "all": write_ml100k(root / "all", ratings, items),
    }


@pytest.fixture(autouse=True)
def _small_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAIN_GATE_MIN_USERS", "30")  # a few hundred users in these windows
    monkeypatch.setenv("TRAIN_LOG_LEVEL", "WARNING")


def _retrain(registry: str, data: Path, *extra: str) -> int:
    return main(["retrain", "--data", str(data), "--registry", registry, "--kinds", KINDS, *extra])


def test_retrain_publishes_promotes_and_records_drift_and_gate(
    windows: dict[str, Path], tmp_path: Path
) -> None:
    registry = (tmp_path / "registry").as_uri()
    summary, report = tmp_path / "summary.md", tmp_path / "report.json"
    assert _retrain(registry, windows["early"], "--promote") == 0
    control = ControlPlane.open(registry)
    assert control.pointer().data["version"] == "v0.1"
    first = Registry.open(registry).manifest("v0.1")
    assert first["gate"]["verdict"] == "pass" and first["gate"]["against"] is None
    assert first["drift"] is None and first["data"]["ratings"]  # the reference for next time

    args = ("--promote", "--summary", str(summary), "--report", str(report))
    assert _retrain(registry, windows["all"], *args) == 0
    assert control.pointer().data["version"] == "v0.2"
    manifest = Registry.open(registry).manifest("v0.2")
    gate, drift = manifest["gate"], manifest["drift"]
    assert gate["against"] == "v0.1" and gate["decision"] == "accept"
    assert gate["comparisons"]["als"]["delta"]["ndcg@10"]["margin"] == 0.0125
    assert drift["reference"]["name"] == "v0.1"
    assert 0 < drift["current"]["events"] < drift["reference"]["events"]  # only the new events
    assert set(drift["tests"]) >= {"item_popularity", "genre_mix", "new_users", "new_items"}
    text = summary.read_text()
    assert "Gate: pass" in text and "### Drift" in text and "| als |" in text
    outcome = json.loads(report.read_text())
    assert outcome["promoted"] and outcome["exit_code"] == 0
    records, _ = control.history("gate")
    assert [r.data["version"] for r in records] == ["v0.2", "v0.1"]
    assert records[0].data["default"]["delta"]["ndcg@10"]["lo"] is not None


def test_gate_and_drift_commands_on_published_releases(
    windows: dict[str, Path], tmp_path: Path, capsys
) -> None:
    registry = (tmp_path / "registry").as_uri()
    assert _retrain(registry, windows["early"], "--promote") == 0
    assert _retrain(registry, windows["early"], "--seed", "1", "--dry-run") == 3  # nothing new
    capsys.readouterr()
    # v0.1 against itself on the whole history: its users' newest events it never saw
    args = ["--registry", registry, "--data", str(windows["all"]), "--json"]
    assert main(["gate", "v0.1", "--against", "production", *args]) == 0
    gate = json.loads(capsys.readouterr().out)
    assert gate["verdict"] == "pass" and gate["held_out"]["compared"] >= 30
    assert gate["comparisons"]["als"]["delta"]["ndcg@10"]["mean"] == 0
    drift_args = ["--reference", "production", "--current", str(windows["all"]), "--new-only"]
    assert main(["drift", *drift_args, "--registry", registry, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"]["name"] == "v0.1" and report["current"]["events"] > 0
    assert main(["gate", "v9.9", "--registry", registry, "--data", str(windows["all"])]) == 2


def _shuffled_als(spec):
    def fit(data, params, rng, valid=None):
        scorer = spec.fit(data, params, rng, valid)
        order = np.random.default_rng(0).permutation(scorer.n_items)
        return type(scorer)(scorer.user_factors, scorer.item_factors[order],
                            scorer.regularization, scorer.confidence)  # fmt: skip

    return dataclasses.replace(spec, fit=fit)


def test_a_sabotaged_candidate_is_refused_and_production_stays(
    windows: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    registry = (tmp_path / "registry").as_uri()
    assert _retrain(registry, windows["early"], "--promote") == 0
    monkeypatch.setitem(MODELS, "als", _shuffled_als(MODELS["als"]))
    assert _retrain(registry, windows["all"], "--promote") == 3
    assert "refused: gate fail" in capsys.readouterr().err
    assert ControlPlane.open(registry).pointer().data["version"] == "v0.1"
    refused = Registry.open(registry).manifest("v0.2")  # published, marked, never promoted
    assert refused["gate"]["decision"] == "refuse"
    assert refused["gate"]["comparisons"]["als"]["verdict"] == "fail"
    records, _ = ControlPlane.open(registry).history("gate")
    assert records[0].data["decision"] == "refuse" and not records[0].data["promoted"]
    # a dry run publishes nothing and says what the gate would do
    assert _retrain(registry, windows["all"], "--dry-run") == 3
    assert Registry.open(registry).versions() == ["v0.1", "v0.2"]


def test_bad_input_exits_2(tmp_path: Path, capsys) -> None:
    registry = (tmp_path / "registry").as_uri()
    assert _retrain(registry, tmp_path / "missing") == 2
    assert "error:" in capsys.readouterr().err
    code = main(["retrain", "--snapshots", registry, "--window", "ninety", "--registry", registry])
    assert code == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kinds", ""], "error: --kinds: no model kind given"),
        (["--kinds", "als,als"], "error: --kinds: als given more than once"),
        (["--kinds", "svd"], "error: --kinds: unknown model kind(s) ['svd']"),
        (["--report", "."], "is a folder, not a file"),
        (["--summary", "/proc/marquee/summary.md"], "error: --summary"),
    ],
)
def test_retrain_arguments_are_checked_before_anything_runs(
    tmp_path: Path, windows: dict[str, Path], capsys, extra: list[str], message: str
) -> None:
    registry = tmp_path / "registry"
    args = ["retrain", "--data", str(windows["all"]), "--registry", registry.as_uri()]
    assert main([*args, "--kinds", KINDS, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not registry.exists()  # nothing loaded, trained or published


def test_an_unreachable_registry_exits_1(tmp_path: Path, capsys, monkeypatch) -> None:
    """A store that does not answer is a dependency down (exit 1), not a user error (2)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: refused
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code = main(["drift", "--reference", "production", "--current", str(tmp_path),
                 "--registry", "s3://marquee-nowhere/registry"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err


def _workflow() -> dict:
    return yaml.safe_load((REPO / ".github/workflows/retrain.yml").read_text())


def test_retrain_workflow_is_scheduled_pinned_and_calls_the_make_target() -> None:
    flow = _workflow()
    triggers = flow[True] if True in flow else flow["on"]  # YAML 1.1 reads `on` as true
    assert triggers["schedule"] == [{"cron": "30 5 * * 1,4"}]
    assert set(triggers["workflow_dispatch"]["inputs"]) == {"window", "kinds", "promote", "dry_run"}
    assert flow["concurrency"] == {"group": "retrain", "cancel-in-progress": False}
    assert flow["permissions"] == {"contents": "read"}
    (job,) = flow["jobs"].values()
    assert job["permissions"]["id-token"] == "write"
    steps = job["steps"]
    for step in steps:
        if "uses" in step:
            assert re.fullmatch(r"[\w./-]+@[0-9a-f]{40}", step["uses"]), step["uses"]
    aws = next(s for s in steps if "configure-aws-credentials" in s.get("uses", ""))
    assert "role-to-assume" in aws["with"] and "aws-access-key-id" not in aws["with"]
    runs = [s["run"] for s in steps if "run" in s]
    assert "make retrain" in runs  # the step that does the work is exactly the make target
    assert not any("${{" in r for r in runs)  # inputs reach commands through env only


def _write_snapshots(store_uri: str, ratings) -> None:
    """Rate events as the ingestor stores them (one topic, one partition, 2000 per file)."""
    from ingestor.schema import RateEvent
    from ingestor.snapshot import ValidRows, write_batch
    from model_registry.storage import open_store

    store = open_store(store_uri)
    rows = ratings.sort_values("timestamp", kind="stable").itertuples(index=False)
    events = [
        RateEvent(user_id=int(r.user_id), movie_id=int(r.item_id), rating=float(r.rating),
                  ts=int(r.timestamp) * 1000)
        for r in rows
    ]  # fmt: skip
    for first in range(0, len(events), 2000):
        batch = events[first : first + 2000]
        offsets = list(range(first, first + len(batch)))
        payloads = [e.model_dump_json().encode() for e in batch]
        last = offsets[-1]
        write_batch(store, None, "rate", 0, first, last, ValidRows(offsets, batch, payloads), [])


def test_the_workflows_make_target_runs_against_s3(s3_bucket: str, tmp_path: Path) -> None:
    ratings, _ = synthetic(300, 200, 9_000, seed=6)
    snapshots = f"s3://{s3_bucket}/events"
    registry = f"s3://{s3_bucket}/registry"
    _write_snapshots(snapshots, ratings)
    steps = _workflow()["jobs"]["retrain"]["steps"]
    step = next(s for s in steps if s.get("run") == "make retrain")
    env = {
        **os.environ,
        "REGISTRY": registry,
        "SNAPSHOTS": snapshots,
        "WINDOW": "all",  # the synthetic history is from 1997
        "KINDS": "popularity,als",
        "PROMOTE": "yes",
        "DRY_RUN": "no",
        "RETRAIN_BY": "test",
        "TRAIN_GATE_MIN_USERS": "30",
        "REPORT_DIR": str(tmp_path),
    }
    assert set(step["env"]) <= set(env)  # every variable the workflow sets, this run sets
    proc = subprocess.run(
        ["make", "-o", ".venv/.installed", *step["run"].split()[1:]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ControlPlane.open(registry).pointer().data["version"] == "v0.1"
    outcome = json.loads((tmp_path / "retrain.json").read_text())
    assert outcome["window"]["source"] == snapshots and outcome["promoted"]
    assert outcome["window"]["snapshot_id"].startswith("snapshot-")
    assert "Gate: pass" in (tmp_path / "retrain.md").read_text()
    # a failing command fails the step: make passes the exit status on (3 refused is tested
    # in-process above; here the cheapest failure, no snapshot store configured)
    proc = subprocess.run(
        ["make", "-o", ".venv/.installed", "retrain"], cwd=REPO, env={**env, "SNAPSHOTS": ""},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "SNAPSHOTS" in proc.stderr


def test_window_bounds() -> None:
    from datetime import date

    from trainer.errors import TrainerError
    from trainer.retrain_cli import bounds

    today = date(2026, 12, 1)
    assert bounds(None, None, "90d", today) == ("2026-09-03", "2026-12-01")
    assert bounds(None, "2026-01-31", "31d", today) == ("2026-01-01", "2026-01-31")
    assert bounds("2026-01-01", None, None, today) == ("2026-01-01", None)
    assert bounds(None, None, "all", today) == (None, None)
    for bad in ("90", "0d", "٣d", "90d\n"):
        with pytest.raises(TrainerError):
            bounds(None, None, bad, today)
    with pytest.raises(TrainerError):
        bounds("2026-01-01", None, "30d", today)
