"""What the CloudFormation template and the deploy workflow promise, read from the files:
least-privilege roles, rollback on a failed deployment, health checks, scaling, the bucket's
protections; actions pinned by commit, OIDC, images by digest. (cfn-lint and checkov check the
rest in test_linters.py.)"""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.helpers import REPO

TEMPLATE = REPO / "infra" / "aws" / "marquee.yaml"
DEPLOY = REPO / ".github" / "workflows" / "deploy.yml"


class _CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _tag)
TEMPLATE_DOC = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)  # a SafeLoader subclass
RES = TEMPLATE_DOC["Resources"]


def _statements(role: str) -> dict[str, dict]:
    return {
        s["Sid"]: s
        for policy in RES[role]["Properties"]["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
    }


def _puts(role: str) -> set[str]:
    return {
        r["Sub"].removeprefix("${Bucket.Arn}/")
        for s in _statements(role).values()
        if s["Action"] == "s3:PutObject"
        for r in s["Resource"]
    }


def test_task_roles_are_least_privilege() -> None:
    assert _puts("ApiTaskRole") == {"registry/control/*", "registry/audit/*"}
    assert _puts("IngestorTaskRole") == {
        "events/snapshots/*", "events/dlq/*", "events/ranges/*",
    }  # fmt: skip
    for role in ("ApiTaskRole", "IngestorTaskRole"):
        for statement in _statements(role).values():
            assert statement["Effect"] == "Allow"
            assert statement["Action"] in {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
            assert statement["Resource"] != "*"
    assert "s3:DeleteObject" not in TEMPLATE.read_text()


def test_api_service_rolls_back_and_is_health_checked() -> None:
    service = RES["ApiService"]["Properties"]
    breaker = service["DeploymentConfiguration"]["DeploymentCircuitBreaker"]
    assert breaker == {"Enable": True, "Rollback": True}
    assert service["DesiredCount"] == {"Ref": "ApiMinTasks"}
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    assert RES["TargetGroup"]["Properties"]["HealthCheckPath"] == "/readyz"
    container = RES["ApiTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert "/healthz" in " ".join(container["HealthCheck"]["Command"])
    assert container["Secrets"] == [{"Name": "REC_ADMIN_TOKEN", "ValueFrom": {"Ref": "AdminToken"}}]
    params = TEMPLATE_DOC["Parameters"]
    assert params["ApiMinTasks"]["MinValue"] >= 2
    assert params["ServingImage"]["AllowedPattern"].endswith("@sha256:[0-9a-f]{64}$")


def test_api_scales_on_cpu_and_requests_per_target() -> None:
    kinds = {
        RES[name]["Properties"]["TargetTrackingScalingPolicyConfiguration"][
            "PredefinedMetricSpecification"]["PredefinedMetricType"]
        for name in ("ApiCpuScaling", "ApiRequestScaling")
    }  # fmt: skip
    assert kinds == {"ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"}


def test_bucket_is_versioned_encrypted_private_and_expires_old_ranges() -> None:
    bucket = RES["Bucket"]["Properties"]
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    rules = {r["Id"]: r for r in bucket["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-old-range-markers"]["Prefix"] == "events/ranges/"
    for name in ("ApiLogs", "IngestorLogs"):
        assert RES[name]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_deploy_workflow_pins_actions_uses_oidc_and_deploys_digests() -> None:
    text = DEPLOY.read_text()
    uses = re.findall(r"uses: (\S+)", text)
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in uses)
    workflow = yaml.safe_load(text)
    job = workflow["jobs"]["deploy"]
    assert workflow["permissions"] == {} and job["permissions"]["id-token"] == "write"
    assert "aws-access-key-id" not in text
    assert '"ServingImage=$SERVING" "IngestorImage=$INGESTOR"' in text
    assert "@$digest" in text and "IMAGE_DIGEST" in text
