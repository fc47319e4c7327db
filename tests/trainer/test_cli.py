"""The trainer's command line: what operators and CI run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_registry.registry import Registry
from tests.helpers import REPO, synthetic_ratings, write_ml100k
from trainer.__main__ import main
from trainer.models import KINDS


def test_release_layout_and_report(synthetic_release: dict) -> None:
    registry = Registry.open(synthetic_release["registry"])
    assert registry.versions() == ["v0.1"]
    manifest = registry.manifest("v0.1")
    assert set(manifest["parts"]) == {*KINDS, "vocab", "rating"}  # rating: GET /predict
    assert manifest["data_snapshot_id"].startswith("movielens-ml-100k-")
    assert manifest["dataset"]["ratings"] == 720 and manifest["gate"] is None
    assert {"created_at", "git_sha", "image_digest", "protocol"} <= set(manifest)
    report = synthetic_release["report"]
    for kind in KINDS:
        meta = json.loads(registry.store.get(f"v0.1/{kind}/meta.json"))
        assert meta["kind"] == kind and meta["files"] and meta["trials"]
        assert meta["params"] == report["kinds"][kind]["params"]
        assert meta["libraries"]["numpy"]
        metrics = manifest["kinds"][kind]["metrics"]
        for key in (
            "hr@10",
            "ndcg@10",
            "coverage@10",
            "sampled_hr@10",
            "sampled_ndcg@10",
            "train_seconds",
            "artifact_mb",
            "p50_ms",
            "p95_ms",
        ):
            assert key in metrics
    assert "torch" in json.loads(registry.store.get("v0.1/ncf/meta.json"))["libraries"]
    assert registry.store.get("latest.txt") == b"v0.1\n"


def test_models_learn_the_synthetic_taste_groups(synthetic_release: dict) -> None:
    """Two taste groups: every personalised kind must beat popularity on the sampled protocol."""
    kinds = synthetic_release["report"]["kinds"]
    pop = kinds["popularity"]["metrics"]["sampled_hr@10"]
    for kind in ("itemcf", "als", "ncf"):
        assert kinds[kind]["metrics"]["sampled_hr@10"] > pop, kind


def test_ncf_records_its_early_stopped_epochs(synthetic_release: dict) -> None:
    ncf = synthetic_release["report"]["kinds"]["ncf"]
    params = ncf["params"]
    assert 1 <= params["pretrain_epochs"] <= 40 and 0 <= params["finetune_epochs"] <= 10
    assert params["alpha"] in (0.25, 0.5, 0.75) and params["dim"] >= 16
    assert all("valid_ndcg@10" in t for t in ncf["trials"])


def test_second_publish_is_next_version(synthetic_release: dict, tmp_path: Path) -> None:
    registry = (tmp_path / "reg").as_uri()
    args = ["train", "--data", str(synthetic_release["data"]), "--registry", registry]
    assert main([*args, "--kinds", "popularity"]) == 0
    assert main([*args, "--kinds", "popularity,itemcf"]) == 0
    assert Registry.open(registry).versions() == ["v0.1", "v0.2"]
    assert set(Registry.open(registry).manifest("v0.2")["kinds"]) == {"popularity", "itemcf"}


def test_popularity_is_always_included(synthetic_release: dict, tmp_path: Path) -> None:
    registry = (tmp_path / "reg").as_uri()
    data = str(synthetic_release["data"])
    assert main(["train", "--data", data, "--registry", registry, "--kinds", "itemcf"]) == 0
    assert set(Registry.open(registry).manifest("v0.1")["kinds"]) == {"popularity", "itemcf"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kinds", "svd"], "unknown model kind"),
        (["--registry", "ftp://x/y"], "unsupported store"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    synthetic_release: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    args: list[str],
    message: str,
) -> None:
    base = {"--data": str(synthetic_release["data"]), "--registry": (tmp_path / "r").as_uri()}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["train"] + [x for pair in base.items() for x in pair]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_missing_data_folder_is_a_clean_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "train",
            "--data",
            str(tmp_path / "nope"),
            "--registry",
            (tmp_path / "r").as_uri(),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "error:" in out.stderr and "not a directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_malformed_data_file_is_a_clean_error(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t1\n1\tX\t5\t1\n")
    (folder / "u.item").write_text("1|A|x||u|" + "|".join(["0"] * 19) + "\n")
    assert main(["train", "--data", str(folder), "--registry", (tmp_path / "r").as_uri()]) == 2


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train"])
    assert exit_info.value.code == 2


# ---- bad input is one line, exit 2, found before training or publishing (issue #12) ---------
def _train_args(tmp_path: Path, *extra: str) -> list[str]:
    data = write_ml100k(tmp_path / "data", synthetic_ratings(n_users=8, n_items=6, per_user=4), 6)
    return ["train", "--data", str(data), "--registry", (tmp_path / "reg").as_uri(), *extra]


@pytest.mark.parametrize(
    ("kinds", "message"),
    [
        ("", "no model kind given"),
        (" , ", "no model kind given"),
        ("als,als", "als given more than once"),
        ("popularity,itemcf,popularity", "popularity given more than once"),
        ("als,svd", "unknown model kind"),
    ],
)
def test_bad_kinds_exit_2_before_anything(
    kinds: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_train_args(tmp_path, "--kinds", kinds)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --kinds") and message in err and err.count("\n") == 1
    assert not (tmp_path / "reg").exists()


def test_report_path_is_checked_before_publishing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("x")
    for report, message in (
        (tmp_path, "is a folder, not a file"),
        (tmp_path / "a-file" / "report.json", "is not a folder"),
        (Path("/proc/marquee-test/report.json"), "cannot write in /proc"),
    ):
        assert main(_train_args(tmp_path, "--kinds", "popularity", "--report", str(report))) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --report") and message in err, err
        assert not (tmp_path / "reg").exists()  # nothing trained, nothing published


def test_unwritable_registry_is_found_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("x")
    for registry, message in (
        ((tmp_path / "a-file" / "reg").as_uri(), "is not a folder"),
        ((tmp_path / "a-file").as_uri(), "exists and is not a folder"),
        ("file:///proc/marquee-test/reg", "cannot write in /proc"),
    ):
        args = _train_args(tmp_path, "--kinds", "popularity")
        args[args.index("--registry") + 1] = registry
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --registry") and message in err, err


def test_user_id_above_int64_is_one_line(tmp_path: Path) -> None:
    data = write_ml100k(tmp_path / "data", [(1, 1, 5, 880000000), (2**64, 2, 4, 880000001)], 2)
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--data", str(data), "--registry",
         (tmp_path / "reg").as_uri()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.splitlines()[-1]
    assert last == f"error: {data / 'u.data'}:2: user_id does not fit in 64 bits: '{2**64}'"
    assert not (tmp_path / "reg").exists()


def test_non_finite_artifacts_are_never_published(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import numpy as np

    from trainer.models import MODELS
    from trainer.models.popularity import PopularityScorer

    spec = MODELS["popularity"]

    def nan_fit(data, params, rng, valid=None):  # what a diverged fit hands back
        return PopularityScorer(np.full(data.n_items, np.nan, dtype=np.float32), data.n_users)

    monkeypatch.setitem(MODELS, "popularity", dataclasses.replace(spec, fit=nan_fit))
    assert main(_train_args(tmp_path, "--kinds", "popularity")) == 2
    err = capsys.readouterr().err
    assert "popularity: artifact 'item_scores' has non-finite values; not publishing" in err
    assert Registry.open((tmp_path / "reg").as_uri()).versions() == []
