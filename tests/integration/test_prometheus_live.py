"""Every dashboard panel query and every rule expression, evaluated by a real Prometheus
(Debian's binary) scraping real processes: two recommender replicas following the control plane
(one publishing answers to a Kafka-protocol broker, Tansu; one whose broker is gone, so it drops
them), the ingestor, two probes (one with a timeout too short to pass), the rollout controller
and the KPI job. A query that names a metric or a label no target exports fails; a query that is
merely zero or empty is fine. Traffic: known and unknown users in both arms, a 404, a refused
admin action, a promote the replicas follow, valid and invalid events.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, free_port, python, start, stop, wait_for_http
from tests.infra.promql import problems, refs

sys.path.insert(0, str(REPO / "infra" / "grafana"))
import generate as dashboards  # infra/grafana/generate.py

TOKEN = "live-token"
RULES = sorted((REPO / "infra" / "prometheus" / "rules").glob("*.yml"))
WINDOW = "30s"  # stands for Grafana's $__rate_interval: 30 scrapes at 1 s


def _queries() -> dict[str, str]:
    out = {}
    for board in dashboards.DASHBOARDS:
        for panel in board.panels:
            for legend, expr in panel.queries.items():
                out[f"{board.uid} / {panel.title} / {legend}"] = expr.replace(
                    "$__rate_interval", WINDOW
                )
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[f"{path.name} / {rule.get('alert') or rule['record']}"] = rule["expr"]
    return out


def _recorded() -> set[str]:
    return {
        rule["record"]
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


class Prom:
    def __init__(self, base: str) -> None:
        self.base = base

    def get(self, path: str, **params: str | list[str]) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.base}{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def names(self) -> set[str]:
        return set(self.get("/api/v1/label/__name__/values"))

    def labels(self, metric: str) -> set[str]:
        series = self.get("/api/v1/series", **{"match[]": [metric]})
        return {key for labels in series for key in labels}


def _produce(brokers: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=brokers, acks=1)
    for value in values:
        producer.send(topic, value=value)
    producer.flush()
    producer.close()


@pytest.fixture
def stack(two_releases: dict, kafka_broker: str, tmp_path: Path) -> Iterator[Prom]:
    from kafka.admin import KafkaAdminClient, NewTopic

    from model_registry.control import ControlPlane

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus is not installed (Debian package prometheus: `make tools`)")
    started = time.monotonic()
    shutil.copytree(two_releases["root"], tmp_path / "reg")
    registry = (tmp_path / "reg").as_uri()
    store = (tmp_path / "events").as_uri()
    _record_drift(tmp_path / "reg", registry)
    control = ControlPlane.open(registry)
    control.promote("v0.1", by="test", reason="live metrics")
    tag = uuid.uuid4().hex[:8]
    rate, responses = f"rate_{tag}", f"responses_{tag}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1)
                         for t in (rate, responses)])
    admin.close()
    ports = {n: free_port() for n in ("a", "b", "ingest", "probe", "probe_bad", "rollout", "kpi")}
    ports["prom"] = free_port()
    procs = []

    def launch(name: str, args: list[str], **env: str) -> None:
        procs.append(start([python(), *args], env=env, log=tmp_path / f"{name}.log"))

    try:
        launch("ingest", ["-m", "ingestor", "run"], INGEST_BROKERS=kafka_broker,
               INGEST_TOPICS=f"{rate}=rate,{responses}=reco_responses", INGEST_GROUP=f"g-{tag}",
               INGEST_STORE=store, INGEST_FLUSH_SECONDS="1", INGEST_LOG_LEVEL="WARNING",
               INGEST_METRICS_PORT=str(ports["ingest"]), INGEST_SESSION_TIMEOUT_MS="6000")
        brokers = {"a": kafka_broker, "b": f"127.0.0.1:{free_port()}"}  # b's broker is gone
        for name in ("a", "b"):
            launch(name, ["-m", "recommender", "--registry", registry, "--port", str(ports[name])],
                   REC_ADMIN_TOKEN=TOKEN, REC_SYNC_SECONDS="1", REC_KAFKA_BROKERS=brokers[name],
                   REC_RESPONSES_TOPIC=responses, REC_LOG_LEVEL="WARNING")
        urls = {n: f"http://127.0.0.1:{ports[n]}" for n in ("a", "b")}
        for name, proc in zip(("a", "b"), procs[1:3], strict=True):
            wait_for_http(f"{urls[name]}/readyz", timeout=90, proc=proc)
        control.promote("v0.2", by="test", reason="a swap to observe")
        for name, timeout in (("probe", "5s"), ("probe_bad", "1ms")):  # the second one fails
            launch(name, ["-m", "recommender", "probe", "--url", urls["a"], "--interval", "1s",
                          "--rounds", "1000", "--duration", "120s", "--timeout", timeout,
                          "--metrics-port", str(ports[name])])
        launch("rollout", ["-m", "recommender", "rollout", "--registry", registry,
                           "--candidate", "v0.1/itemcf", "--control", "als", "--kpi-store", store,
                           "--metrics", f"{urls['a']}/metrics", f"{urls['b']}/metrics",
                           "--steps", "50,100", "--soak", "3s", "--max-holds", "1",
                           "--experiment", "live",
                           "--metrics-port", str(ports["rollout"])])
        launch("kpi", ["-m", "ingestor", "kpi", "--store", store, "--registry", registry,
                       "--experiment", "live", "--every", "1s", "--min-users", "1",
                       "--min-hits", "1", "--catalogue-items", "40",
                       "--metrics-port", str(ports["kpi"])])
        jobs = {"recommender": ["a", "b"], "ingestor": ["ingest"], "probe": ["probe", "probe_bad"],
                "rollout": ["rollout"], "kpi": ["kpi"]}
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULES],
            "scrape_configs": [
                {"job_name": job, "static_configs": [
                    {"targets": [f"127.0.0.1:{ports[n]}" for n in names]}]}
                for job, names in jobs.items()
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.append(start(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports['prom']}"],
            log=tmp_path / "prometheus.log",
        ))
        prom_base = f"http://127.0.0.1:{ports['prom']}"
        wait_for_http(f"{prom_base}/-/ready", timeout=30, proc=procs[-1])
        deadline = time.monotonic() + 30  # the controller configures experiment "live"
        while (control.experiment() is None or control.experiment().data["name"] != "live") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        time.sleep(1.5)  # the replicas follow within REC_SYNC_SECONDS
        _traffic(urls, kafka_broker, rate)
        print(f"\nstack up and traffic sent in {time.monotonic() - started:.1f} s")
        yield Prom(prom_base)
    finally:
        for proc in reversed(procs):
            stop(proc)


def _record_drift(root: Path, registry: str) -> None:
    """Put a real drift report (v0.1's window against v0.2's, by the trainer's CLI) into v0.2's
    manifest, where a retrain records it (`trainer retrain` does; `trainer train` does not), so
    the replicas export the drift gauges. The manifest is not among the hashed files."""
    out = subprocess.run(
        [python(), "-m", "trainer", "drift", "--reference", "v0.1", "--current", "v0.2",
         "--registry", registry, "--json"],
        cwd=REPO, capture_output=True, text=True, check=True, timeout=120,
    )
    manifest = root / "v0.2" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()),
                                    "drift": json.loads(out.stdout)}))


def _traffic(urls: dict[str, str], brokers: str, rate_topic: str) -> None:
    """Known users (both arms), unknown users (popularity fallback), a 404 and a refused admin
    action on each replica; then rate events of the users for what they were shown (KPI hits)
    plus two invalid events (dead letters)."""
    shown: list[tuple[int, int]] = []
    for base in urls.values():
        conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=10)
        for user in [*range(1, 61), 99_999, 99_998]:
            conn.request("GET", f"/recommend/{user}")
            body = json.loads(conn.getresponse().read())
            shown += [(user, item) for item in body.get("items", [])[:1]]
        conn.request("GET", "/recommend/1?model=nope")
        assert conn.getresponse().read()
        conn.request("POST", "/switch", body=b'{"version": "v0.1"}',
                     headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 401, resp.read()
        resp.read()
    later = int(time.time() * 1000) + 1000
    events = [json.dumps({"user_id": u, "movie_id": m, "rating": 5, "ts": later}).encode()
              for u, m in shown]
    _produce(brokers, rate_topic, [*events, b'{"user_id": "oops"}', b"\xff\xfe"])

def test_every_panel_and_rule_query_names_exported_metrics_and_labels(stack: Prom) -> None:
    queries = _queries()
    needed = set().union(*(refs(q).metrics for q in queries.values()))
    deadline = time.monotonic() + 60
    while True:  # until every scraped and recorded name is there (or the deadline)
        missing = needed - stack.names()
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    recorded = _recorded()
    assert missing == set(), f"no target exports (or no rule records): {sorted(missing)}"
    labels = {name: stack.labels(name) for name in needed}
    for expr in queries.values():
        stack.get("/api/v1/query", query=expr)  # evaluates (a syntax error fails here)
    found = problems(queries, labels)
    assert found == [], "\n".join(found)
    assert recorded <= needed  # every recording rule is used by a panel or an alert
    groups = stack.get("/api/v1/rules")["groups"]  # type: ignore[index]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {where.split(" / ")[1] for where in queries if ".yml / " in where}
    unhealthy = {n: r.get("lastError") for n, r in loaded.items() if r["health"] != "ok"}
    assert unhealthy == {}, unhealthy
    print(f"\n{len(queries)} queries over {len(needed)} metrics checked against live targets")
