"""deploy/kubernetes: every document is valid per the API's schema (the strict check the job
objects pass too), the RBAC grants exactly what the backend checks for and nothing more, and
the Deployment, Service and policies agree with each other and with the settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.containers.kubernetes_backend import REQUIRED_ACCESS
from orchestrator.settings import Settings
from tests.conftest import ROOT
from tests.kubernetes_schema import validate

MANIFESTS = ROOT / "deploy" / "kubernetes"


def documents() -> list[tuple[Path, dict[str, Any]]]:
    loaded = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                loaded.append((path, document))
    return loaded


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in documents() if document["kind"] == kind]


def only(kind: str) -> dict[str, Any]:
    (document,) = by_kind(kind)
    return document


def test_there_are_the_objects_the_readme_names() -> None:
    kinds = sorted(document["kind"] for _, document in documents())
    assert kinds == [
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]


@pytest.mark.parametrize(
    "item", documents(), ids=lambda item: f"{item[0].name}:{item[1].get('kind')}"
)
def test_every_document_is_valid_per_the_api_schema(item: tuple[Path, dict[str, Any]]) -> None:
    validate(item[1])


def test_everything_lives_in_the_one_namespace() -> None:
    namespace = only("Namespace")["metadata"]["name"]
    for _, document in documents():
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == namespace, document["kind"]


def test_the_role_grants_exactly_what_the_backend_needs() -> None:
    role = only("Role")
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames, no URLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb))
    needed = {
        (group, f"{resource}/{sub}" if sub else resource, verb)
        for group, resource, sub, verbs in REQUIRED_ACCESS
        for verb in verbs
    }
    assert granted == needed
    assert not any("*" in part for entry in granted for part in entry)
    # Tokens are written, never read back: no get, list or watch on Secrets.
    assert {verb for group, resource, verb in granted if resource == "secrets"} == {
        "create",
        "patch",
        "delete",
    }
    assert not by_kind("ClusterRole")
    assert not by_kind("ClusterRoleBinding")


def test_the_binding_gives_the_role_to_the_orchestrators_service_account_only() -> None:
    binding, account = only("RoleBinding"), only("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": only("Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    pod = only("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_one_replica_recreated_with_its_state_on_the_claim() -> None:
    deployment = only("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {only("PersistentVolumeClaim")["metadata"]["name"]}
    assert only("PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not any("hostPath" in volume for volume in pod["volumes"])


def test_the_orchestrator_container_is_hardened() -> None:
    pod = only("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["privileged"] is False


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container["env"]}


def test_its_environment_is_a_valid_kubernetes_configuration(tmp_path: Path) -> None:
    (container,) = only("Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["ORCHESTRATOR_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    assert "value" not in env["ORCHESTRATOR_ADMIN_TOKEN"]
    plain = {name: item["value"] for name, item in env.items() if "value" in item}
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("x")
    key.write_text("x")
    settings = Settings.from_env(
        {
            **plain,
            "KUBERNETES_NAMESPACE": only("Namespace")["metadata"]["name"],
            "ORCHESTRATOR_ADMIN_TOKEN": "admin",
            "ORCHESTRATOR_TLS_CERT": str(cert),
            "ORCHESTRATOR_TLS_KEY": str(key),
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "ORCHESTRATOR_STATE_DIR": str(tmp_path / "state"),
        }
    )
    assert settings.container_backend == "kubernetes"
    service = only("Service")
    ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    assert ports == {
        "grpc": settings.grpc_port,
        "worker-api": settings.http_port,
        "egress": settings.egress_port,
    }
    # https: the worker API listens on the pod's address, beyond loopback, so it speaks TLS
    # (its own CA on the state volume unless WORKER_API_TLS_* name the operator's).
    url = f"https://{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert settings.kubernetes_orchestrator_url == f"{url}:{settings.http_port}"
    labels = only("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert dict(settings.kubernetes_orchestrator_selector).items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()


def test_readiness_is_the_grpc_health_check() -> None:
    (container,) = only("Deployment")["spec"]["template"]["spec"]["containers"]
    script = container["readinessProbe"]["exec"]["command"][-1]
    assert "HealthStub" in script
    assert "SERVING" in script
    assert "50051" in script
    compile(script, "readinessProbe", "exec")  # the probe is Python that parses


def test_the_orchestrators_policy_admits_jobs_on_the_worker_api_only() -> None:
    policy = only("NetworkPolicy")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app": "ironclaw-orchestrator"}}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    rules = {
        tuple(sorted(peer["podSelector"]["matchLabels"].items())): [
            p["port"] for p in rule["ports"]
        ]
        for rule in policy["ingress"]
        for peer in rule["from"]
    }
    assert rules == {
        (("app.kubernetes.io/managed-by", "ironclaw-orchestrator"),): [50052, 50053],
        (("ironclaw-client", "true"),): [50051],
    }
