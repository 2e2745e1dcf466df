"""A real Kubernetes cluster for the backend's contract and lifecycle tests, named by KUBECONFIG.

No API server can be started on the machine the suite usually runs on, and no fake one stands
in: without KUBECONFIG these tests are not run, and say so in ``pytest -ra`` (also under
CI=true). With it, the cluster must answer: a KUBECONFIG that points nowhere fails.

What the cluster needs (README, "Running on Kubernetes"): the images on its nodes (with kind:
``kind load docker-image <image>``) named by IRONCLAW_K8S_TEST_IMAGE (a base image with
python3; default the job images' base) and IRONCLAW_K8S_WORKER_IMAGE (default the worker image
of this checkout's tag); a namespace the kubeconfig's identity may use
(IRONCLAW_K8S_TEST_NAMESPACE, default ``ironclaw-test``, created and deleted by the session when
it does not exist). Everything a test makes carries its instance label and is deleted by it,
also when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import image_name
from tests.swarm.fixtures import BASE_IMAGE

KUBECONFIG_SKIP = (
    "not run: needs KUBECONFIG pointing at a reachable cluster (the Kubernetes backend's "
    "contract and lifecycle, run before a release: README, 'Running on Kubernetes')"
)


@dataclass(frozen=True)
class KubernetesCluster:
    """The cluster the tests use, and what they need to know about it."""

    namespace: str
    image: str
    worker_image: str
    api_host: str
    api_client: Any

    def core(self) -> Any:
        import kubernetes.client as k8s

        return k8s.CoreV1Api(self.api_client)

    def networking(self) -> Any:
        import kubernetes.client as k8s

        return k8s.NetworkingV1Api(self.api_client)

    def host_address(self) -> str:
        """An address of this machine that the cluster's pods reach: the one this machine
        uses towards the API server (kind: the Docker network's), unless
        IRONCLAW_K8S_TEST_ORCHESTRATOR_HOST says."""
        given = os.environ.get("IRONCLAW_K8S_TEST_ORCHESTRATOR_HOST")
        if given:
            return given
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((self.api_host, 443))
            return str(probe.getsockname()[0])

    def leftovers(self, instance: str) -> list[str]:
        """Every Pod, Secret and NetworkPolicy of the instance still there."""
        selector = f"ironclaw.instance={instance}"
        found = []
        for kind, lister in (
            ("pod", self.core().list_namespaced_pod),
            ("secret", self.core().list_namespaced_secret),
            ("networkpolicy", self.networking().list_namespaced_network_policy),
        ):
            for item in lister(self.namespace, label_selector=selector).items:
                found.append(f"{kind}/{item.metadata.name}")
        return sorted(found)

    def remove_instance(self, instance: str) -> None:
        """Deletes what the instance left, printing each pod's log first."""
        selector = f"ironclaw.instance={instance}"
        core, networking = self.core(), self.networking()
        for pod in core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            with contextlib.suppress(Exception):
                print(f"--- log of pod {pod.metadata.name} ---")
                print(
                    core.read_namespaced_pod_log(pod.metadata.name, self.namespace, tail_lines=50)
                )
        with contextlib.suppress(Exception):
            core.delete_collection_namespaced_pod(
                self.namespace, label_selector=selector, grace_period_seconds=0
            )
        with contextlib.suppress(Exception):
            core.delete_collection_namespaced_secret(self.namespace, label_selector=selector)
        with contextlib.suppress(Exception):
            networking.delete_collection_namespaced_network_policy(
                self.namespace, label_selector=selector
            )


@pytest.fixture(scope="session")
def kubernetes_cluster() -> Iterator[KubernetesCluster]:
    """The cluster KUBECONFIG names; not run without it."""
    kubeconfig = os.environ.get("KUBECONFIG", "")
    if not kubeconfig:
        pytest.skip(KUBECONFIG_SKIP)
    try:
        import kubernetes.client as k8s
        import kubernetes.config as k8s_config
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        pytest.fail("KUBECONFIG is set but the kubernetes client is not installed (make venv)")
    configuration = k8s.Configuration()
    try:
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        api_client = k8s.ApiClient(configuration)
        k8s.VersionApi(api_client).get_code()
    except Exception as exc:
        pytest.fail(f"KUBECONFIG={kubeconfig} but its cluster does not answer: {exc}")
    namespace = os.environ.get("IRONCLAW_K8S_TEST_NAMESPACE", "ironclaw-test")
    core = k8s.CoreV1Api(api_client)
    created = False
    try:
        core.read_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespace({"metadata": {"name": namespace}})
        created = True
    cluster = KubernetesCluster(
        namespace=namespace,
        image=os.environ.get("IRONCLAW_K8S_TEST_IMAGE", BASE_IMAGE),
        worker_image=os.environ.get("IRONCLAW_K8S_WORKER_IMAGE", image_name("worker")),
        api_host=urlsplit(configuration.host).hostname or "127.0.0.1",
        api_client=api_client,
    )
    try:
        yield cluster
    finally:
        if created:
            with contextlib.suppress(Exception):
                core.delete_namespace(namespace)
        api_client.close()
