"""The Kubernetes backend without a cluster: the real client against an address where nothing
listens (no API server, fake or real), and without any cluster credentials. Each call is the
orchestrator's error with the fix, never the client's exception."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from orchestrator.containers.kubernetes_backend import KubernetesBackend
from orchestrator.errors import ConfigError, EngineUnavailable, FailedPrecondition
from orchestrator.service import build_backend
from orchestrator.settings import Settings
from tests.unit.core.test_kubernetes_spec import job_spec


def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "CONTAINER_BACKEND": "kubernetes",
            "JOB_NETWORK": "bridge",
            "KUBERNETES_ORCHESTRATOR_URL": "http://ironclaw-orchestrator.ironclaw.svc:50052",
        }
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def kubeconfig_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    server = f"https://127.0.0.1:{closed_port()}"
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: x\n"
        f"clusters: [{{name: c, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: not-a-real-token}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return server


async def test_an_unreachable_api_is_engine_unavailable_naming_it(
    tmp_path: Path, kubeconfig_nowhere: str
) -> None:
    backend = build_backend(settings(tmp_path))
    assert isinstance(backend, KubernetesBackend)
    try:
        for call in (
            backend.ping(),
            backend.verify_hardening(),
            backend.list_managed("ic-x"),
            backend.inspect("ironclaw-worker-x"),
            backend.logs_tail("ironclaw-worker-x", 10),
            backend.create_and_start(job_spec(settings(tmp_path))),
        ):
            with pytest.raises(EngineUnavailable, match=f"unreachable at {kubeconfig_nowhere}"):
                await call
        # What needs no API call is answered anyway.
        assert await backend.image_exists("ironclaw-worker:latest") is True
        assert await backend.default_gateway() is None
    finally:
        await backend.close()


async def test_no_cluster_credentials_is_a_config_error_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    backend = KubernetesBackend(settings(tmp_path))
    try:
        with pytest.raises(ConfigError, match="set KUBECONFIG"):
            await backend.ping()
    finally:
        await backend.close()


async def test_a_spec_a_pod_cannot_honour_is_refused_before_any_api_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No credentials at all: the refusal comes first, from the builder.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    backend = KubernetesBackend(settings(tmp_path))
    spec = job_spec(settings(tmp_path), placement=("node.role!=manager",))
    try:
        with pytest.raises(FailedPrecondition, match="nodeSelector"):
            await backend.create_and_start(spec)
    finally:
        await backend.close()


SERVICE_HOST = "ironclaw-orchestrator.ironclaw.svc"


def served_settings(tmp_path: Path, url: str) -> Settings:
    return Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "CONTAINER_BACKEND": "kubernetes",
            "JOB_NETWORK": "bridge",
            "KUBERNETES_ORCHESTRATOR_URL": url,
            # As in deploy/kubernetes: the pod's every address, beyond loopback.
            "ORCHESTRATOR_HTTP_BIND": "0.0.0.0",
            "METRICS_ENABLED": "0",
        }
    )


async def test_pods_get_the_service_url_over_tls_and_the_gateway_beside_it(
    tmp_path: Path, kubeconfig_nowhere: str
) -> None:
    from orchestrator.service import start_orchestrator

    url = f"https://{SERVICE_HOST}:50052"
    orch = await start_orchestrator(served_settings(tmp_path, url), grpc_port=0, http_port=0)
    try:
        manager = orch.manager
        assert manager.orchestrator_url == url
        # The pod's NetworkPolicy lets it reach the orchestrator only: its one way out.
        assert manager.egress_url == f"http://{SERVICE_HOST}:{orch.egress_port}"
        ca_pem = manager.orchestrator_ca_pem
        assert ca_pem is not None
        # The certificate names the Service a pod calls, signed by the CA the pod is given.
        context = ssl.create_default_context(cadata=ca_pem)

        def handshake() -> str | None:
            with (
                socket.create_connection(("127.0.0.1", orch.http_port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=SERVICE_HOST) as tls,
            ):
                return tls.version()

        # Off the loop: the server answering it runs on this one.
        assert await asyncio.to_thread(handshake) is not None
    finally:
        await orch.stop()


async def test_a_plain_http_service_url_is_refused_where_the_api_speaks_tls(
    tmp_path: Path, kubeconfig_nowhere: str
) -> None:
    from orchestrator.service import start_orchestrator

    settings = served_settings(tmp_path, f"http://{SERVICE_HOST}:50052")
    with pytest.raises(ConfigError, match=r"KUBERNETES_ORCHESTRATOR_URL=http://.*use https://"):
        await start_orchestrator(settings, grpc_port=0, http_port=0)


def test_an_api_refusal_echoing_the_token_never_carries_it_into_the_error() -> None:
    import json

    from kubernetes.client.exceptions import ApiException

    from orchestrator.containers.kubernetes_backend import _api_error_text
    from tests.unit.core.test_kubernetes_spec import TOKEN

    refused = ApiException(status=422, reason="Unprocessable Entity")
    # A validation message may quote the value it refused; the body holds the whole object.
    refused.body = json.dumps(
        {
            "message": f'Secret "job-token" is invalid: data[token]: Invalid value: "{TOKEN}"',
            "details": {"causes": [{"message": TOKEN}]},
        }
    ).encode()
    text = _api_error_text("secret create", refused)
    assert "422" in text
    assert "data[token]" in text
    assert TOKEN not in text
