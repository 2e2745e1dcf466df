"""The Kubernetes backend's builders: a job's Secret, Pod and NetworkPolicy from its container
spec, each checked against the API's schema (the client's own models) and for every protection
the job container has on one host."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.containers.backend import BindMount, ContainerSpec
from orchestrator.containers.kubernetes_backend import REQUIRED_ACCESS, options_for
from orchestrator.containers.kubernetes_spec import (
    LABEL_POD,
    JobObjects,
    KubernetesOptions,
    access_review,
    build_job_objects,
    needs_dns,
    node_selector,
    object_name,
    owner_reference,
    valid_label_value,
)
from orchestrator.containers.spec import build_container_spec
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.errors import ConfigError, FailedPrecondition, InvalidArgument
from orchestrator.jobs.admission import placement_constraints
from orchestrator.settings import Settings
from tests.kubernetes_schema import SchemaError, validate

TOKEN = "irc_k8s-spec-token-value-never-in-the-pod"
JOB_ID = "0b6c5a52-8d0e-4f53-9d51-5b0c7f3b9a11"
URL = "http://ironclaw-orchestrator.ironclaw.svc:50052"
LIMITS = JobLimits(
    max_iterations=5,
    timeout_seconds=600,
    memory_mb=768,
    llm_token_budget=0,
    llm_call_budget=0,
    llm_max_tokens_per_call=1024,
    claude_max_turns=5,
    claude_model="",
)
# Kubernetes' own syntax (apimachinery validation): a qualified name, optionally prefixed.
LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def settings(tmp_path: Path, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "CONTAINER_BACKEND": "kubernetes",
            "JOB_NETWORK": "bridge",
            "KUBERNETES_ORCHESTRATOR_URL": URL,
            "WORKER_CPUS": "1.5",
            "ORCHESTRATOR_INSTANCE": "ic-k8s-test",
            **extra,
        }
    )


def job_spec(s: Settings, placement: tuple[str, ...] = ()) -> ContainerSpec:
    return build_container_spec(
        settings=s,
        job_id=JOB_ID,
        mode=JobMode.WORKER,
        limits=LIMITS,
        created_at=datetime(2026, 12, 4, 18, 30, 5, 123456, tzinfo=UTC),
        token=TOKEN,
        orchestrator_url=URL,
        project_dir=str(s.projects_dir / JOB_ID),
        placement=placement,
        # As the backend says: host paths only where the operator allows them.
        binds_host_paths=s.kubernetes_allow_host_path,
    )


def objects(tmp_path: Path, **extra: str) -> JobObjects:
    s = settings(tmp_path, **extra)
    return build_job_objects(job_spec(s), options_for(s))


def container(pod: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod["spec"]["containers"]
    return dict(only)


def test_every_object_is_valid_per_the_api_schema(tmp_path: Path) -> None:
    built = objects(tmp_path, KUBERNETES_RUNTIME_CLASS="gvisor")
    for document in (built.secret, built.pod, built.network_policy):
        validate(document)


def test_the_validator_refuses_unknown_keys_wrong_types_and_missing_required_fields(
    tmp_path: Path,
) -> None:
    pod = objects(tmp_path).pod
    misspelt = json.loads(json.dumps(pod))
    misspelt["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(SchemaError, match="readOnlyRootFileSystem"):
        validate(misspelt)
    wrong_type = json.loads(json.dumps(pod))
    wrong_type["spec"]["securityContext"]["runAsUser"] = "1000"
    with pytest.raises(SchemaError, match="runAsUser"):
        validate(wrong_type)
    nameless = json.loads(json.dumps(pod))
    del nameless["spec"]["containers"][0]["name"]
    with pytest.raises(SchemaError, match="requires 'name'"):
        validate(nameless)
    with pytest.raises(SchemaError, match="no model"):
        validate({"apiVersion": "v1", "kind": "Podd"})


def test_one_pod_that_never_restarts_and_holds_no_cluster_credentials(tmp_path: Path) -> None:
    pod = objects(tmp_path).pod
    spec = pod["spec"]
    assert pod["kind"] == "Pod"
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert not spec["hostNetwork"]
    assert not spec["hostPID"]
    assert not spec["hostIPC"]
    assert pod["metadata"]["namespace"] == "ironclaw"
    assert "runtimeClassName" not in spec


def test_the_container_is_hardened_as_on_one_host(tmp_path: Path) -> None:
    pod = objects(tmp_path).pod
    context = container(pod)["securityContext"]
    assert context == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod_context = pod["spec"]["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert (pod_context["runAsUser"], pod_context["runAsGroup"]) == (1000, 1000)
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_capabilities_stay_chown_only_whatever_the_spec_adds(tmp_path: Path) -> None:
    s = settings(tmp_path)
    spec = replace(job_spec(s), cap_add=("CHOWN", "NET_ADMIN", "SYS_ADMIN"), cap_drop=())
    context = container(build_job_objects(spec, options_for(s)).pod)["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}


def test_limits_and_requests(tmp_path: Path) -> None:
    built = objects(tmp_path, KUBERNETES_REQUEST_CPUS="0.5", KUBERNETES_REQUEST_MEMORY_MB="300")
    resources = container(built.pod)["resources"]
    # 768 MiB from the job's limits; WORKER_CPUS=1.5 as millicores. No pids field: a pod has
    # none (the kubelet's podPidsLimit).
    assert resources["limits"] == {"memory": "768Mi", "cpu": "1500m"}
    assert resources["requests"] == {"memory": "300Mi", "cpu": "500m"}


def test_a_request_is_never_above_its_limit(tmp_path: Path) -> None:
    built = objects(
        tmp_path,
        WORKER_CPUS="0.25",
        KUBERNETES_REQUEST_CPUS="2",
        KUBERNETES_REQUEST_MEMORY_MB="4096",
    )
    resources = container(built.pod)["resources"]
    assert resources["requests"] == {"memory": "768Mi", "cpu": "250m"}
    assert resources["limits"]["cpu"] == "250m"


def test_tmpfs_mounts_are_memory_backed_and_sized(tmp_path: Path) -> None:
    pod = objects(tmp_path, WORKER_TMP_MB="128", WORKER_HOME_MB="256").pod
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container(pod)["volumeMounts"]}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Mi"}
    assert volumes[mounts["/home/sandbox"]]["emptyDir"] == {
        "medium": "Memory",
        "sizeLimit": "256Mi",
    }


def test_the_workspace_is_an_empty_dir_and_no_host_path_is_mounted(tmp_path: Path) -> None:
    pod = objects(tmp_path, KUBERNETES_WORKSPACE_MB="2048").pod
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container(pod)["volumeMounts"]}
    assert volumes[mounts["/workspace"]] == {
        "name": "workspace",
        "emptyDir": {"sizeLimit": "2048Mi"},
    }
    assert not any("hostPath" in volume for volume in volumes.values())
    assert str(tmp_path) not in json.dumps(pod)
    assert container(pod)["workingDir"] == "/workspace"


def test_a_bind_mount_of_a_host_path_is_refused_unless_allowed(tmp_path: Path) -> None:
    s = settings(tmp_path)
    extra = BindMount(host_path="/srv/cache", container_path="/cache", read_only=True)
    spec = replace(job_spec(s), mounts=(*job_spec(s).mounts, extra))
    with pytest.raises(FailedPrecondition, match="KUBERNETES_ALLOW_HOST_PATH"):
        build_job_objects(spec, options_for(s))
    allowed = settings(tmp_path, KUBERNETES_ALLOW_HOST_PATH="1")
    bound = job_spec(allowed)
    assert bound.scratch_workspace is None
    spec = replace(bound, mounts=(*bound.mounts, extra))
    pod = build_job_objects(spec, options_for(allowed)).pod
    validate(pod)
    host_paths = {v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    assert host_paths == {str(s.projects_dir / JOB_ID), "/srv/cache"}
    cache = next(m for m in container(pod)["volumeMounts"] if m["mountPath"] == "/cache")
    assert cache["readOnly"] is True


def test_the_token_comes_from_the_job_secret_and_never_appears_in_the_pod(tmp_path: Path) -> None:
    built = objects(tmp_path)
    assert TOKEN not in json.dumps(built.pod)
    assert TOKEN not in json.dumps(built.network_policy)
    assert TOKEN not in repr(built)
    env = {item["name"]: item for item in container(built.pod)["env"]}
    assert env["IRONCLAW_WORKER_TOKEN"] == {
        "name": "IRONCLAW_WORKER_TOKEN",
        "valueFrom": {
            "secretKeyRef": {
                "name": built.secret["metadata"]["name"],
                "key": "IRONCLAW_WORKER_TOKEN",
                "optional": False,
            }
        },
    }
    assert env["IRONCLAW_JOB_ID"] == {"name": "IRONCLAW_JOB_ID", "value": JOB_ID}
    assert env["IRONCLAW_ORCHESTRATOR_URL"]["value"] == URL
    assert built.secret["stringData"] == {"IRONCLAW_WORKER_TOKEN": TOKEN}
    assert built.secret["immutable"] is True


def test_labels_are_valid_and_the_creation_time_is_an_annotation(tmp_path: Path) -> None:
    built = objects(tmp_path)
    for document in (built.secret, built.pod, built.network_policy):
        labels = document["metadata"]["labels"]
        for key, value in labels.items():
            assert LABEL_KEY.match(key), key
            assert LABEL_VALUE.match(value), (key, value)
            assert len(value) <= 63, (key, value)
        assert labels["ironclaw.job_id"] == JOB_ID
        assert labels["ironclaw.instance"] == "ic-k8s-test"
        assert labels["ironclaw.mode"] == "worker"
        assert "ironclaw.created_at" not in labels
        annotations = document["metadata"]["annotations"]
        assert annotations["ironclaw.created_at"] == "2026-12-04T18:30:05.123456+00:00"
        assert annotations["ironclaw.job_id"] == JOB_ID
    assert LABEL_VALUE.match(built.pod["metadata"]["name"])
    assert built.pod["metadata"]["name"] == f"ironclaw-worker-{JOB_ID}"


def test_label_values_and_object_names_follow_kubernetes_syntax() -> None:
    assert valid_label_value("")
    assert valid_label_value("a.b_c-d")
    assert not valid_label_value("2026-12-04T18:30:05+00:00")
    assert not valid_label_value("x" * 64)
    assert not valid_label_value("-a")
    assert object_name("IronClaw_Worker.Job") == "ironclaw-worker-job"
    assert len(object_name("a" * 100)) == 63
    with pytest.raises(FailedPrecondition):
        object_name("___")


def test_the_network_policy_allows_only_the_orchestrator_and_dns(tmp_path: Path) -> None:
    built = objects(tmp_path, KUBERNETES_ORCHESTRATOR_SELECTOR="app=ironclaw-orchestrator,tier=cp")
    policy = built.network_policy["spec"]
    assert policy["podSelector"] == {"matchLabels": {LABEL_POD: built.name}}
    assert built.pod["metadata"]["labels"][LABEL_POD] == built.name
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == []
    to_orchestrator, to_dns = policy["egress"]
    assert to_orchestrator == {
        "to": [{"podSelector": {"matchLabels": {"app": "ironclaw-orchestrator", "tier": "cp"}}}],
        # The worker API and the egress gateway (the pod's one way out): nothing else.
        "ports": [{"protocol": "TCP", "port": 50052}, {"protocol": "TCP", "port": 50053}],
    }
    assert to_dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert {(port["protocol"], port["port"]) for port in to_dns["ports"]} == {
        ("UDP", 53),
        ("TCP", 53),
    }


def test_an_address_url_needs_no_dns_and_the_egress_port_is_always_allowed(
    tmp_path: Path,
) -> None:
    built = objects(tmp_path, KUBERNETES_ORCHESTRATOR_URL="http://10.96.0.12:50052")
    (only,) = built.network_policy["spec"]["egress"]
    assert only["ports"] == [{"protocol": "TCP", "port": 50052}, {"protocol": "TCP", "port": 50053}]
    assert needs_dns("http://ironclaw-orchestrator.ironclaw.svc:50052")
    assert not needs_dns("http://[fd00::1]:50052")


def test_an_orchestrator_outside_the_cluster_is_reached_by_its_address_block(
    tmp_path: Path,
) -> None:
    built = objects(
        tmp_path,
        KUBERNETES_ORCHESTRATOR_URL="http://172.18.0.1:50052",
        KUBERNETES_ORCHESTRATOR_CIDR="172.18.0.1/32",
    )
    validate(built.network_policy)
    (only,) = built.network_policy["spec"]["egress"]
    assert only["to"] == [{"ipBlock": {"cidr": "172.18.0.1/32"}}]
    with pytest.raises(ConfigError, match="KUBERNETES_ORCHESTRATOR_CIDR"):
        settings(tmp_path, KUBERNETES_ORCHESTRATOR_CIDR="172.18.0.1/16")


def test_placement_becomes_a_node_selector(tmp_path: Path) -> None:
    s = settings(tmp_path)
    constraints = placement_constraints({"zone": "a", "topology.kubernetes.io/region": "eu-1"}, s)
    pod = build_job_objects(job_spec(s, placement=constraints), options_for(s)).pod
    validate(pod)
    assert pod["spec"]["nodeSelector"] == {"zone": "a", "topology.kubernetes.io/region": "eu-1"}
    with pytest.raises(FailedPrecondition, match="nodeSelector"):
        node_selector(("node.role!=manager",))


def test_placement_values_a_node_selector_cannot_hold_are_refused_at_admission(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path)
    with pytest.raises(InvalidArgument, match="Kubernetes label value"):
        placement_constraints({"zone": "a:b"}, s)
    with pytest.raises(InvalidArgument, match="Kubernetes label value"):
        placement_constraints({"zone": "x" * 64}, s)
    docker = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "JOB_NETWORK": "bridge"})
    with pytest.raises(FailedPrecondition, match="swarm or kubernetes"):
        placement_constraints({"zone": "a"}, docker)


def test_runtime_class_and_node_loss_toleration(tmp_path: Path) -> None:
    pod = objects(tmp_path, KUBERNETES_RUNTIME_CLASS="gvisor", KUBERNETES_NODE_LOST_S="45").pod
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    tolerations = {t["key"]: t["tolerationSeconds"] for t in pod["spec"]["tolerations"]}
    assert tolerations == {"node.kubernetes.io/not-ready": 45, "node.kubernetes.io/unreachable": 45}


def test_the_command_and_entrypoint_map_to_args_and_command(tmp_path: Path) -> None:
    s = settings(tmp_path)
    spec = replace(job_spec(s), command=("--await-claim",), entrypoint=("ironclaw-agent-run",))
    job = container(build_job_objects(spec, options_for(s)).pod)
    assert (job["command"], job["args"]) == (["ironclaw-agent-run"], ["--await-claim"])
    plain = container(objects(tmp_path).pod)
    assert "command" not in plain
    assert "args" not in plain


def test_owner_reference_names_the_created_pod() -> None:
    ref = owner_reference({"metadata": {"name": "ironclaw-worker-x", "uid": "1234-abcd"}})
    assert ref == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "ironclaw-worker-x",
        "uid": "1234-abcd",
        "blockOwnerDeletion": False,
        "controller": False,
    }
    validate(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s", "ownerReferences": [ref]},
        }
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"JOB_NETWORK": "isolated"}, "JOB_NETWORK=bridge"),
        ({"WARM_POOL": "worker=1"}, "unset WARM_POOL"),
        ({"WORKER_RUNTIME": "runsc"}, "KUBERNETES_RUNTIME_CLASS"),
        ({"KUBERNETES_ORCHESTRATOR_URL": ""}, "needs KUBERNETES_ORCHESTRATOR_URL"),
        ({"KUBERNETES_NAMESPACE": "Not_A_Namespace"}, "KUBERNETES_NAMESPACE"),
        ({"KUBERNETES_ORCHESTRATOR_SELECTOR": "app"}, "KUBERNETES_ORCHESTRATOR_SELECTOR"),
    ],
)
def test_settings_kubernetes_cannot_honour_are_refused_with_the_fix(
    tmp_path: Path, extra: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, **extra)


def test_options_follow_the_settings(tmp_path: Path) -> None:
    options = options_for(settings(tmp_path, KUBERNETES_NAMESPACE="jobs", STOP_GRACE_S="7"))
    assert options == KubernetesOptions(
        namespace="jobs",
        orchestrator_selector={"app": "ironclaw-orchestrator"},
        orchestrator_ports=(50052, 50053),
        orchestrator_url=URL,
        request_millicpus=250,
        request_memory_bytes=256 << 20,
        workspace_bytes=4096 << 20,
        runtime_class=None,
        allow_host_path=False,
        stop_grace_s=7,
        node_lost_s=60,
    )


def test_the_access_reviews_of_the_start_are_valid_and_name_each_right() -> None:
    reviews = [
        access_review("ironclaw", group, resource, sub, verb)
        for group, resource, sub, verbs in REQUIRED_ACCESS
        for verb in verbs
    ]
    for review in reviews:
        validate(review)
    log = access_review("ironclaw", "", "pods", "log", "get")["spec"]["resourceAttributes"]
    assert log == {
        "namespace": "ironclaw",
        "group": "",
        "resource": "pods",
        "subresource": "log",
        "verb": "get",
    }
    assert len(reviews) == 13
