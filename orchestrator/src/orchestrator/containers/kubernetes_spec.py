"""The Kubernetes objects of one job, built from its :class:`ContainerSpec`: pure functions
returning the API's JSON (camelCase dicts), tested without a cluster against the client's own
OpenAPI models.

One job is one Pod (no Deployment: a job runs once, ``restartPolicy: Never``), one Secret that
holds its token (the Pod reads it through ``secretKeyRef``; the Pod's spec never holds it) and
one NetworkPolicy that lets the Pod reach the orchestrator's pods and nothing else. The Secret
and the NetworkPolicy are owned by the Pod once it exists (:func:`owner_reference`), so deleting
the Pod takes them along.

What a Pod cannot say, or says differently than one Docker host:

* A pids limit is not a Pod field: it is the kubelet's ``podPidsLimit`` (one setting per node).
* CPU shares are not set: the CPU request (KUBERNETES_REQUEST_CPUS) is what weighs a pod.
* Swap: a Pod gets none unless the node's kubelet allows it (``memorySwap``), so the memory
  limit is real as on one host.
* ``no-new-privileges`` is ``allowPrivilegeEscalation: false``; the seccomp profile is the
  runtime's default, asked for explicitly.
* An ``emptyDir`` cannot be ``noexec``: /tmp is executable in a pod, unlike on one host.
* The workspace is an ``emptyDir`` (``ContainerSpec.scratch_workspace``): a cluster has no
  path of the orchestrator's host, so the job fetches its project (an upload, a project
  directory's tree, or a git clone) into it over the worker API and pushes it back at its end.
  Bind mounts are refused unless the operator allows hostPath (KUBERNETES_ALLOW_HOST_PATH=1:
  one node, or a path every node shares), which then mounts the project directory itself.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from orchestrator.containers.backend import ContainerSpec
from orchestrator.containers.spec import LABEL_INSTANCE, SANDBOX_HOME, tmpfs_bytes
from orchestrator.errors import FailedPrecondition

# The Pod's one container.
CONTAINER_NAME = "job"
# Selects exactly one job's pod (its NetworkPolicy's podSelector); the pod's name.
LABEL_POD = "ironclaw.pod"
MANAGED_BY = ("app.kubernetes.io/managed-by", "ironclaw-orchestrator")
# Every ``ironclaw.*`` label of the spec, verbatim, as annotations: a label value cannot hold
# ':' or '+' (``ironclaw.created_at``), so what the job manager reads back comes from these.
ANNOTATION_PREFIX = "ironclaw."
SANDBOX_UID = 1000
SANDBOX_GID = 1000
DNS_PORT = 53
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_CONSTRAINT = re.compile(r"node\.labels\.(?P<key>[^=!\s]+)\s*==\s*(?P<value>\S+)")


@dataclass(frozen=True)
class KubernetesOptions:
    """What the operator's settings add to every job's objects."""

    namespace: str
    orchestrator_selector: Mapping[str, str]
    # The orchestrator pod's ports a job may connect to: the worker API's (and the egress
    # gateway's when jobs use it). NetworkPolicies see the pod's port, after a Service's.
    orchestrator_ports: tuple[int, ...]
    orchestrator_url: str
    # An orchestrator outside the cluster (a test run, a host of its own): the address block
    # its worker API is reached at, instead of the selector's pods.
    orchestrator_cidr: str | None = None
    request_millicpus: int = 0
    request_memory_bytes: int = 0
    workspace_bytes: int = 4 << 30
    runtime_class: str | None = None
    allow_host_path: bool = False
    stop_grace_s: int = 10
    node_lost_s: int = 60


@dataclass(frozen=True)
class JobObjects:
    """The three objects of one job, created in this order: NetworkPolicy (so the
    pod's first packet is under it), Secret, Pod."""

    secret: dict[str, Any]
    pod: dict[str, Any]
    network_policy: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    def __repr__(self) -> str:
        # The Secret holds the token: never shown.
        return f"JobObjects(name={self.name!r})"


def valid_label_value(value: str) -> bool:
    """Whether ``value`` is a Kubernetes label value (at most 63, alphanumeric at both ends)."""
    return len(value) <= 63 and _LABEL_VALUE.fullmatch(value) is not None


def object_name(name: str) -> str:
    """``spec.name`` as an RFC 1123 label (a Pod's hostname is one): lowercase, '-' for the
    rest, at most 63."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].rstrip("-")
    if not _NAME.fullmatch(cleaned):
        raise FailedPrecondition(f"container name {name!r} gives no Kubernetes object name")
    return cleaned


def pod_labels(spec: ContainerSpec, name: str) -> dict[str, str]:
    """The labels of each object: the spec's whose values are label values (the others live
    in the annotations only), the pod's own name, and who manages it."""
    labels = {key: value for key, value in spec.labels.items() if valid_label_value(value)}
    labels[LABEL_POD] = name
    labels[MANAGED_BY[0]] = MANAGED_BY[1]
    return labels


def job_annotations(spec: ContainerSpec) -> dict[str, str]:
    return {key: value for key, value in spec.labels.items() if key.startswith(ANNOTATION_PREFIX)}


def instance_selector(instance: str) -> str:
    """The label selector of one orchestrator instance's objects."""
    return f"{LABEL_INSTANCE}={instance}"


def node_selector(placement: tuple[str, ...]) -> dict[str, str]:
    """``node.labels.k==v`` constraints (a job's ``placement.node_labels``) as a nodeSelector;
    anything else has no nodeSelector form and is refused."""
    selector: dict[str, str] = {}
    for constraint in placement:
        match = _CONSTRAINT.fullmatch(constraint.strip())
        if match is None or not valid_label_value(match.group("value")):
            raise FailedPrecondition(
                f"placement {constraint!r} has no Kubernetes nodeSelector form: only "
                "node.labels.<key>==<label value> can be asked of a node"
            )
        selector[match.group("key")] = match.group("value")
    return selector


def _quantity_bytes(count: int) -> str:
    # Whole MiB where it divides (what a reader expects), else plain bytes.
    return f"{count >> 20}Mi" if count % (1 << 20) == 0 else str(count)


def secret_name(name: str) -> str:
    return f"{name}-token"


def build_job_objects(spec: ContainerSpec, options: KubernetesOptions) -> JobObjects:
    """The Secret, Pod and NetworkPolicy of the job ``spec`` describes."""
    if spec.runtime:
        raise FailedPrecondition(
            f"WORKER_RUNTIME={spec.runtime}: a pod chooses its runtime by RuntimeClass; unset "
            "it and set KUBERNETES_RUNTIME_CLASS"
        )
    name = object_name(spec.name)
    labels = pod_labels(spec, name)
    metadata = {
        "name": name,
        "namespace": options.namespace,
        "labels": labels,
        "annotations": job_annotations(spec),
    }
    secret_keys = sorted(key for key in spec.env if key in spec.secret_env_keys)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {**metadata, "name": secret_name(name)},
        "type": "Opaque",
        "immutable": True,
        "stringData": {key: spec.env[key] for key in secret_keys},
    }
    return JobObjects(
        secret=secret,
        pod=_pod(spec, options, metadata, secret_name(name)),
        network_policy=_network_policy(options, metadata, name),
    )


def _env(spec: ContainerSpec, secret: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    for key, value in spec.env.items():
        if key in spec.secret_env_keys:
            ref = {"secretKeyRef": {"name": secret, "key": key, "optional": False}}
            env.append({"name": key, "valueFrom": ref})
        else:
            env.append({"name": key, "value": value})
    return env


def _resources(spec: ContainerSpec, options: KubernetesOptions) -> dict[str, Any]:
    limits: dict[str, str] = {"memory": _quantity_bytes(spec.memory_bytes)}
    requests: dict[str, str] = {}
    if spec.nano_cpus:
        limits["cpu"] = f"{max(1, spec.nano_cpus // 1_000_000)}m"
    if options.request_millicpus:
        cpu = options.request_millicpus
        if spec.nano_cpus:
            cpu = min(cpu, max(1, spec.nano_cpus // 1_000_000))
        requests["cpu"] = f"{cpu}m"
    if options.request_memory_bytes:
        requests["memory"] = _quantity_bytes(min(options.request_memory_bytes, spec.memory_bytes))
    resources: dict[str, Any] = {"limits": limits}
    if requests:
        resources["requests"] = requests
    return resources


def _volumes(
    spec: ContainerSpec, options: KubernetesOptions
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, mount in enumerate(spec.mounts):
        volume = f"mount-{index}"
        if options.allow_host_path:
            source: dict[str, Any] = {"hostPath": {"path": mount.host_path, "type": "Directory"}}
        else:
            raise FailedPrecondition(
                f"a job pod cannot mount {mount.host_path} of the orchestrator's host at "
                f"{mount.container_path}: a cluster has no host paths (set "
                "KUBERNETES_ALLOW_HOST_PATH=1 only on one node, or where every node has it)"
            )
        volumes.append({"name": volume, **source})
        mounts.append(
            {"name": volume, "mountPath": mount.container_path, "readOnly": mount.read_only}
        )
    if spec.scratch_workspace is not None:
        # The job fetches its tree into it at the start and pushes it back at the end.
        volumes.append(
            {
                "name": "workspace",
                "emptyDir": {"sizeLimit": _quantity_bytes(options.workspace_bytes)},
            }
        )
        mounts.append({"name": "workspace", "mountPath": spec.scratch_workspace.container_path})
    for index, (target, options_text) in enumerate(sorted(spec.tmpfs.items())):
        volume = "home" if target == SANDBOX_HOME else f"tmpfs-{index}"
        empty: dict[str, Any] = {"medium": "Memory"}
        size = tmpfs_bytes(options_text)
        if size:
            empty["sizeLimit"] = _quantity_bytes(size)
        volumes.append({"name": volume, "emptyDir": empty})
        mounts.append({"name": volume, "mountPath": target})
    return volumes, mounts


def _pod(
    spec: ContainerSpec, options: KubernetesOptions, metadata: dict[str, Any], secret: str
) -> dict[str, Any]:
    volumes, mounts = _volumes(spec, options)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        # A local tag (ironclaw-worker:latest) on a node must not be pulled: IfNotPresent.
        "imagePullPolicy": "IfNotPresent",
        "env": _env(spec, secret),
        "workingDir": spec.working_dir,
        "resources": _resources(spec, options),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_GID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            # CHOWN only, whatever else the spec asks for: as on one host, no DAC_OVERRIDE.
            "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
            "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    # As on one host: the spec's command replaces the image's command (args), its entrypoint
    # the image's entrypoint (command).
    if spec.entrypoint:
        container["command"] = list(spec.entrypoint)
    if spec.command:
        container["args"] = list(spec.command)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "terminationGracePeriodSeconds": options.stop_grace_s,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_GID,
            "fsGroup": SANDBOX_GID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
        # A NotReady or unreachable node keeps a pod "Running" until the taint manager evicts
        # it: after KUBERNETES_NODE_LOST_S (not the default 300 s) the job is NODE_LOST.
        "tolerations": [
            {
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": options.node_lost_s,
            }
            for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
        ],
    }
    if options.runtime_class:
        pod_spec["runtimeClassName"] = options.runtime_class
    selector = node_selector(spec.placement)
    if selector:
        pod_spec["nodeSelector"] = selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": dict(metadata), "spec": pod_spec}


def needs_dns(url: str) -> bool:
    """Whether a pod must resolve the URL's host (a Service name, not an address)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def _network_policy(
    options: KubernetesOptions, metadata: dict[str, Any], name: str
) -> dict[str, Any]:
    ports = sorted(set(options.orchestrator_ports))
    egress: list[dict[str, Any]] = [
        {
            "to": [
                {"ipBlock": {"cidr": options.orchestrator_cidr}}
                if options.orchestrator_cidr
                else {"podSelector": {"matchLabels": dict(options.orchestrator_selector)}}
            ],
            "ports": [{"protocol": "TCP", "port": port} for port in ports],
        }
    ]
    if needs_dns(options.orchestrator_url):
        egress.append(
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        },
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [
                    {"protocol": "UDP", "port": DNS_PORT},
                    {"protocol": "TCP", "port": DNS_PORT},
                ],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": dict(metadata),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_POD: name}},
            # Both types, no ingress rule: nothing may connect to a job's pod.
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": egress,
        },
    }


def owner_reference(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The reference that makes an object go with the created ``pod`` (its uid)."""
    meta = pod.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": str(meta.get("name", "")),
        "uid": str(meta.get("uid", "")),
        "blockOwnerDeletion": False,
        "controller": False,
    }


def access_review(
    namespace: str, group: str, resource: str, subresource: str, verb: str
) -> dict[str, Any]:
    """The SelfSubjectAccessReview asking whether this identity may ``verb`` ``resource``."""
    attributes = {"namespace": namespace, "group": group, "resource": resource, "verb": verb}
    if subresource:
        attributes["subresource"] = subresource
    return {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes},
    }
