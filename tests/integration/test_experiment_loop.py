"""The experiment loop with real processes: Tansu (Kafka), the ingestor, two service replicas
following the control plane, the KPI job, the rollout controller, simulated users and probes.

Users are synthetic but behave like the simulator makes MovieLens users behave: two taste groups,
a training history, and held-out "truth" (the rest of their group, rated 4-5). A popularity
candidate against an ALS control is rolled back; an ALS candidate against a popularity control is
promoted; probe traffic is served but left out of the KPIs; a stream whose experiment traffic all
lands in one arm is caught by SRM and the rollout holds, then stops.

Fast settings (steps 30,50,100; 6 s soaks; 1 s KPI runs); docs/experiments.md has the normal ones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_registry.control import ROLLOUT, ControlPlane
from tests.helpers import REPO, free_port, python, start, stop, wait_for_http, write_ml100k

N_USERS, N_ITEMS = 1200, 60
SOAK = "6s"


def synthetic_world(root: Path) -> tuple[Path, Path]:
    """Training ratings (u.data) and held-out truth: each user rated 12 of their group's 30
    movies and 2 others; the other 18 of their group are what they would like next."""
    rng = np.random.default_rng(0)
    rows, truth = [], []
    for user in range(1, N_USERS + 1):
        own = [i for i in range(1, N_ITEMS + 1) if i % 2 == user % 2]
        other = [i for i in range(1, N_ITEMS + 1) if i % 2 != user % 2]
        picks = [*rng.choice(own, 12, replace=False), *rng.choice(other, 2, replace=False)]
        rows += [
            (user, int(i), int(rng.integers(3, 6)), 880_000_000 + s) for s, i in enumerate(picks)
        ]
        truth += [(user, i, int(rng.integers(4, 6)), 890_000_000) for i in own if i not in picks]
    data = write_ml100k(root / "data", rows, N_ITEMS)
    truth_file = root / "truth.data"
    truth_file.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in truth))
    return data, truth_file


def clone_release(root: Path, source: str, target: str) -> None:
    """The same artifacts under a second version (a retrain with identical results), so the
    candidates are other releases than production without a second 15 s training."""
    shutil.copytree(root / source, root / target)
    manifest = json.loads((root / target / "manifest.json").read_text())
    (root / target / "manifest.json").write_text(json.dumps({**manifest, "version": target}))


def create_topics(brokers: str, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=brokers)
    admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
    admin.close()


@pytest.fixture(scope="module")
def world(kafka_broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from trainer.__main__ import main as train

    root = tmp_path_factory.mktemp("loop")
    data, truth = synthetic_world(root)
    registry_dir = root / "registry"
    registry = registry_dir.as_uri()
    assert (
        train(["train", "--data", str(data), "--registry", registry, "--kinds", "popularity,als"])
        == 0
    )
    clone_release(registry_dir, "v0.1", "v0.2")
    cp = ControlPlane.open(registry)
    cp.promote("v0.1", by="test", reason="baseline")
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"{k}_{tag}" for k in ("reco_responses", "watch", "rate", "reco_probes")}
    create_topics(kafka_broker, list(topics.values()))
    store = (root / "events").as_uri()
    procs: list[subprocess.Popen] = []
    ingestor = start(
        [python(), "-m", "ingestor", "run"],
        env={
            "INGEST_BROKERS": kafka_broker,
            "INGEST_TOPICS": ",".join(f"{t}={k}" for k, t in topics.items()),
            "INGEST_GROUP": f"g-{tag}",
            "INGEST_STORE": store,
            "INGEST_FLUSH_SECONDS": "1",
            "INGEST_SESSION_TIMEOUT_MS": "6000",
            "INGEST_LOG_LEVEL": "WARNING",
        },
        log=root / "ingestor.log",
    )
    procs.append(ingestor)
    replicas = []
    for n in range(2):
        port = free_port()
        procs.append(
            start(
                [python(), "-m", "recommender", "--registry", registry, "--port", str(port)],
                env={
                    "REC_KAFKA_BROKERS": kafka_broker,
                    "REC_RESPONSES_TOPIC": topics["reco_responses"],
                    "REC_SYNC_SECONDS": "0.3",
                    "REC_REPLICA_ID": f"r{n}",
                    "REC_LOG_LEVEL": "WARNING",
                },
                log=root / f"replica{n}.log",
            )
        )
        replicas.append(f"http://127.0.0.1:{port}")
    try:
        for url, proc in zip(replicas, procs[1:], strict=True):
            wait_for_http(f"{url}/readyz", timeout=90, proc=proc)
        simulator = start(
            [
                python(),
                "scripts/simulate_users.py",
                *[a for u in replicas for a in ("--url", u)],
                "--brokers",
                kafka_broker,
                "--truth",
                str(truth),
                "--holdout-from",
                "890000000",
                "--watch-topic",
                topics["watch"],
                "--rate-topic",
                topics["rate"],
                "--duration",
                "10m",
                "--p-hit",
                "0.08",
                "--p-background",
                "0.02",
                "--summary",
                str(root / "simulation.json"),
            ],
            log=root / "simulator.log",
        )
        procs.append(simulator)
        yield {
            "root": root,
            "registry": registry,
            "store": store,
            "replicas": replicas,
            "brokers": kafka_broker,
            "topics": topics,
            "cp": cp,
            "simulator": simulator,
        }
    finally:
        for proc in reversed(procs):
            stop(proc)


def rollout(
    world: dict,
    name: str,
    candidate: str,
    control: str,
    holds: int = 5,  # fast settings: a few soaks of ~300 users per arm can stay unsure
    during: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run the KPI job and the controller for one experiment; `during` runs once the experiment
    is live. Returns the controller's exit code, its printed decisions and the time taken."""
    root = world["root"]
    kpi = start(
        [
            python(),
            "-m",
            "ingestor",
            "kpi",
            "--store",
            world["store"],
            "--registry",
            world["registry"],
            "--experiment",
            name,
            "--every",
            "1s",
            "--margin",
            "0.05",
            "--min-users",
            "100",
            "--min-hits",
            "30",
            "--n-star",
            "1000",
            "--log-level",
            "WARNING",
        ],
        log=root / f"kpi-{name}.log",
    )
    out_path = root / f"controller-{name}.out"
    started = time.monotonic()
    with out_path.open("w") as out:
        controller = subprocess.Popen(
            [
                python(),
                "-m",
                "recommender",
                "rollout",
                "--registry",
                world["registry"],
                "--candidate",
                candidate,
                "--control",
                control,
                "--kpi-store",
                world["store"],
                "--metrics",
                *(f"{u}/metrics" for u in world["replicas"]),
                "--steps",
                "30,50,100",
                "--soak",
                SOAK,
                "--max-holds",
                str(holds),
                "--experiment",
                name,
                "--log-level",
                "WARNING",
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if during is not None:
            cp: ControlPlane = world["cp"]
            deadline = time.monotonic() + 30
            while (cp.experiment() is None or cp.experiment().data["name"] != name) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.1)
            during()
        code = controller.wait(timeout=150)
    finally:
        stop(controller)
        stop(kpi)
    text = out_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith('{"experiment')]
    result = {
        "code": code,
        "lines": lines,
        "seconds": time.monotonic() - started,
        "output": text[-3000:],
    }
    (root / f"rollout-{name}.json").write_text(json.dumps(result, indent=1))
    return result


def kpi_report_behind(world: dict, record: Any) -> dict[str, Any]:
    """The KPI report a decision read (its deterministic copy, named by snapshot id)."""
    key = record.data["gates"]["kpi"]["value"]["report"]
    return json.loads(Path(world["store"].removeprefix("file://"), key).read_text())


def test_a_worse_candidate_is_rolled_back(world: dict) -> None:
    result = rollout(world, "worse", "v0.2/popularity", "als")
    assert result["code"] == 3, result
    last = result["lines"][-1]
    assert last["action"] == "rollback" and last["cs"][1] < 0, last
    cp: ControlPlane = world["cp"]
    assert cp.pointer().data["version"] == "v0.1"
    record = cp.head(ROLLOUT)
    assert record.action == "rollback" and record.data["gates"]["kpi"]["verdict"] == "fail"
    assert record.data["gates"]["errors"]["verdict"] == "pass"  # the KPI, not errors, decided
    assert cp.experiment().data["status"] == "ended"


def test_a_better_candidate_is_promoted_and_probes_stay_out(world: dict) -> None:
    probe = start(
        [
            python(),
            "-m",
            "recommender",
            "probe",
            "--url",
            world["replicas"][0],
            "--users",
            f"1-{N_USERS}",
            "--rounds",
            "1000",
            "--interval",
            "0.2",
            "--duration",
            "10m",
            "--brokers",
            world["brokers"],
            "--topic",
            world["topics"]["reco_probes"],
            "--log-level",
            "WARNING",
        ],
        log=world["root"] / "probe.log",
    )
    try:
        result = rollout(world, "better", "v0.2/als", "popularity")
    finally:
        stop(probe)
    assert result["code"] == 0, result
    actions = [line["action"] for line in result["lines"]]
    assert actions[-1] == "promote" and "rollback" not in actions
    cp: ControlPlane = world["cp"]
    assert cp.pointer().data["version"] == "v0.2"
    record = cp.head(ROLLOUT)
    kpi = record.data["gates"]["kpi"]["value"]
    assert kpi["cs_low"] > -0.05 and kpi["srm_p_value"] > 0.001
    report = kpi_report_behind(world, record)
    assert report["excluded"]["probes"] > 0  # probes were served and published, not counted
    assert not report["comparison"]["srm"]["flagged"]
    assert "probe" not in report["arms"]


def test_traffic_forced_to_one_arm_is_caught_by_srm(world: dict) -> None:
    """A broken replica that puts every user of the experiment in the control arm (its answers
    reach the responses topic like any replica's): SRM flags it, the rollout holds, then stops."""
    from kafka import KafkaProducer

    def broken_replica() -> None:
        producer = KafkaProducer(bootstrap_servers=world["brokers"])
        now = int(time.time() * 1000)
        for user in range(100_001, 100_801):
            body = {
                "user_id": user,
                "items": list(range(1, 11)),
                "model": "als",
                "version": "v0.2",
                "arm": "control",
                "request_id": f"broken-{user}",
                "ts": now + user % 1000,
            }
            producer.send(world["topics"]["reco_responses"], json.dumps(body).encode())
        producer.flush()
        producer.close()

    result = rollout(world, "broken", "v0.1/als", "als", holds=2, during=broken_replica)
    assert result["code"] == 3, result
    actions = [line["action"] for line in result["lines"]]
    assert actions[0] == "start" and set(actions[1:-1]) == {"hold"} and actions[-1] == "rollback"
    cp: ControlPlane = world["cp"]
    records, _ = cp.history(ROLLOUT, limit=len(actions))
    srm = [
        r
        for r in records
        if "sample ratio mismatch" in r.data["gates"].get("kpi", {}).get("reason", "")
    ]
    assert srm, [r.reason for r in records]  # the KPI gate said why it would not judge
    assert srm[0].data["gates"]["kpi"]["value"]["srm_p_value"] < 0.001
    assert records[0].action == "rollback" and "inconclusive for 3 soaks" in records[0].reason
    assert cp.pointer().data["version"] == "v0.2"  # production untouched


def test_simulator_holdout_keeps_every_user_known(tmp_path: Path) -> None:
    """--holdout-last: each user's latest ratings are the truth, the rest the training data."""
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    from simulate_users import load_truth, write_train

    rows = [(u, i, 4.0 if i % 2 else 2.0, 1000 * u + i) for u in (1, 2) for i in range(1, 11)]
    source = tmp_path / "u.data"
    source.write_text("".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in rows))
    truth, movies = load_truth(source, 0, 0.2)
    assert truth == {1: {9: 4.0, 10: 2.0}, 2: {9: 4.0, 10: 2.0}} and movies == list(range(1, 11))
    train = (write_train(source, tmp_path / "train", 0, 0.2) / "u.data").read_text().splitlines()
    assert len(train) == 16 and all(int(line.split("\t")[1]) <= 8 for line in train)
    by_time, _ = load_truth(source, 2006, 0.0)
    assert by_time == {2: {6: 2.0, 7: 4.0, 8: 2.0, 9: 4.0, 10: 2.0}}
