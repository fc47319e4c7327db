"""docker-compose.yml and the Prometheus config it mounts agree: every scrape target is a
service on the port that service listens on, every local image is built, and the stack has the
parts the operations guide names. (No Docker engine here: validate, don't run.)"""

from __future__ import annotations

import yaml

from tests.helpers import REPO

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
PROM = yaml.safe_load((REPO / "infra" / "prometheus" / "prometheus.yml").read_text())


def test_the_stack_has_every_part() -> None:
    assert {"kafka", "minio", "minio-init", "ingestor", "trainer", "recommender-1",
            "recommender-2", "probe", "kpi", "prometheus", "grafana"} <= set(SERVICES)  # fmt: skip
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    for replica in ("recommender-1", "recommender-2"):
        env = SERVICES[replica]["environment"]
        assert env["REC_REGISTRY"] == "s3://marquee/registry" and env["REC_SYNC_SECONDS"]
        assert SERVICES[replica]["depends_on"]["trainer"]["condition"] == (
            "service_completed_successfully"
        )
    assert "model_registry" in SERVICES["trainer"]["command"][0]  # publishes, then promotes


def test_local_images_are_built_from_the_dockerfile_targets() -> None:
    for name, service in SERVICES.items():
        if service.get("image", "").startswith("marquee-"):
            build = service["build"]
            assert build["dockerfile"] == "infra/Dockerfile", name
            assert service["image"] == f"marquee-{build['target']}:local", name


def test_every_scrape_target_is_a_compose_service_port() -> None:
    ports = {
        "recommender-1": "8080", "recommender-2": "8080",
        "ingestor": SERVICES["ingestor"]["environment"]["INGEST_METRICS_PORT"],
        "kpi": "9109", "localhost": "9090",
    }  # fmt: skip
    jobs = {job["job_name"]: job for job in PROM["scrape_configs"]}
    assert {"recommender", "ingestor", "kpi"} <= set(jobs)  # the rules select these job names
    for job in jobs.values():
        for target in job["static_configs"][0]["targets"]:
            host, port = target.rsplit(":", 1)
            assert host == "localhost" or host in SERVICES, target
            assert ports[host] == port, target
    assert "9109" in SERVICES["kpi"]["command"]


def test_prometheus_and_grafana_mount_the_repo_config() -> None:
    assert "./infra/prometheus:/etc/prometheus:ro" in SERVICES["prometheus"]["volumes"]
    assert "./infra/grafana/provisioning:/etc/grafana/provisioning:ro" in (
        SERVICES["grafana"]["volumes"]
    )
    for service in SERVICES.values():  # the laptop stack listens on loopback only
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
