"""The quality bar on the real MovieLens 100K, end to end through the CLI and real HTTP.

Each kind must match or beat the best peer library of its family on this exact protocol
(numbers measured side by side on the identical split; docs/evaluation.md), NCF's mean over
three seeds must reach 0.052 NDCG@10 (1.10x its peer), and the best kind must beat 0.054 NDCG@10.
Then every kind is served by uvicorn with the ranking that was measured.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from model_registry.registry import Registry
from recommender.release import load_release
from tests.helpers import REPO, free_port, python, start, stop, wait_for_http
from tests.integration.test_serving_http import get
from trainer.models import KINDS, top_n

# Best peer per family on this protocol: (NDCG@10, HR@10)
PEERS = {
    "popularity": (0.025, 0.050),
    "itemcf": (0.038, 0.079),  # RecBole ItemKNN
    "als": (0.054, 0.107),  # implicit ALS, BM25-weighted
    "ncf": (0.047, 0.093),  # RecBole NeuMF
}
# Ours above the peer where a bar holds: NCF's seeds 0-2 give 0.0507 / 0.0534 / 0.0566 NDCG@10
# (mean 0.0536, docs/evaluation.md); this run is seed 0 (0.0507 / 0.1103 when measured), and
# seed 0 is repeatable on one torch build and CPU, so its bar sits between the peer and that
# number, about 0.0025 below it: a rounding change alone moves a seed by about 0.005
# (docs/evaluation.md). HR@10 0.100: the lowest of five seeds is 0.1039.
OURS = {"ncf": (0.048, 0.100)}

pytestmark = pytest.mark.slow


def _run(*args: str) -> subprocess.CompletedProcess:
    """This repo's Python with `args`, from the repo root, output captured, at most 15 min."""
    return subprocess.run([python(), *args], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ml100k")
    registry = (root / "registry").as_uri()
    report = root / "report.json"
    out = _run(
        "-m",
        "trainer",
        "train",
        "--data",
        str(ml100k_dir),
        "--registry",
        registry,
        "--report",
        str(report),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "published v0.1" in out.stdout and "NDCG@10" in out.stdout
    return {"registry": registry, "report": json.loads(report.read_text())}


@pytest.mark.parametrize("kind", KINDS)
def test_kind_matches_or_beats_best_peer(trained: dict, kind: str) -> None:
    metrics = trained["report"]["kinds"][kind]["metrics"]
    ndcg, hr = OURS.get(kind, PEERS[kind])
    assert metrics["ndcg@10"] >= ndcg and metrics["hr@10"] >= hr, metrics


# Issue #14's NCF bar: 1.10x RecBole NeuMF (0.047), 0.052 NDCG@10, as a mean over three seeds
# (one run's standard error is about 0.005; docs/evaluation.md, "NCF over seeds").
NCF_THREE_SEED_BAR = 0.052


def test_ncf_three_seed_mean_meets_its_bar(trained: dict, ml100k_dir: Path, tmp_path: Path) -> None:
    """Seeds 1 and 2 of what ships (`NCFParams()`, the sweep's `pretrain` setting) through the
    same protocol as the CLI's seed 0 (tune with early stopping, refit on train+validation, test;
    the sweep's seed 0 equals the CLI's), two processes at once; with seed 0 from the CLI run.

    Measured 0.0507 / 0.0534 / 0.0566 (mean 0.0536) with torch 2.13.0+cpu on x86: a seed is
    repeatable on one torch build and CPU, but another build re-rounds every seed (about 0.003 on
    a three-seed mean). If this fails after such a change, measure more seeds before moving a
    bar (docs/evaluation.md, "NCF over seeds")."""
    out = tmp_path / "ncf.jsonl"
    seeds = ["--configs", "pretrain", "--seeds", "1", "2", "--workers", "2", "--out", str(out)]
    done = _run("scripts/sweep_ncf.py", "--data", str(ml100k_dir), *seeds)
    assert done.returncode == 0, done.stderr[-3000:]
    ndcg = [trained["report"]["kinds"]["ncf"]["metrics"]["ndcg@10"]]
    ndcg += [json.loads(line)["test_ndcg"] for line in out.read_text().splitlines()]
    assert len(ndcg) == 3
    assert sum(ndcg) / 3 >= NCF_THREE_SEED_BAR, ndcg
    assert min(ndcg) > PEERS["ncf"][0], ndcg  # every seed beats the peer, not only the mean


def test_best_kind_beats_0054(trained: dict) -> None:
    assert max(k["metrics"]["ndcg@10"] for k in trained["report"]["kinds"].values()) > 0.054


# scikit-surprise's SVD (defaults) on the identical split: RMSE 1.0434, MAE 0.8274, mean of
# three seeds (scripts/bench_rating.py -> benchmarks/results/rating_ml100k.json)
SURPRISE_SVD_RMSE = 1.0434


def test_rating_model_beats_biases_and_surprise_svd(trained: dict) -> None:
    m = trained["report"]["rating"]["metrics"]
    assert m["n"] == 943
    assert m["rmse"] < m["baseline_rmse"] and m["mae"] < m["baseline_mae"], m
    assert m["rmse"] < SURPRISE_SVD_RMSE, m


def test_every_kind_reports_bias_and_groups(trained: dict) -> None:
    for kind, block in trained["report"]["kinds"].items():
        m = block["metrics"]
        assert 0 <= m["gini@10"] <= 1 and 0 <= m["long_tail@10"] <= 1 and m["novelty@10"] > 0
        assert set(block["fairness"]) == {"activity", "age_band", "gender", "occupation"}, kind
        gender = block["fairness"]["gender"]["groups"]
        assert gender["F"]["users"] + gender["M"]["users"] == 943
    # popularity shows only the head; the personalised kinds reach into the tail
    kinds = trained["report"]["kinds"]
    assert kinds["popularity"]["metrics"]["long_tail@10"] == 0.0
    assert kinds["als"]["metrics"]["long_tail@10"] > 0.1


def test_every_kind_served_over_http_as_measured(trained: dict) -> None:
    release = load_release(Registry.open(trained["registry"]), "v0.1")
    port = free_port()
    proc = start(
        [python(), "-m", "recommender", "--registry", trained["registry"], "--port", str(port)]
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", timeout=120, proc=proc)
        for kind in KINDS:
            for user_id in release.vocab.user_ids[::47]:
                status, body = get(f"{base}/recommend/{user_id}?k=10&model={kind}")
                assert status == 200
                idx = release.vocab.user_index(int(user_id))
                want, _ = top_n(release.scorers[kind].score(idx), 10, exclude=release.seen(idx))
                assert body["items"] == release.vocab.item_ids[want].tolist()
    finally:
        stop(proc)
