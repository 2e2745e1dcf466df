"""Assembles one orchestrator process: the job manager, the gRPC control plane and the HTTP
worker API on one event loop, plus the background watchers (container exits, deadlines)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from orchestrator.accept_errors import AcceptErrors, install_accept_error_filter
from orchestrator.agent_catalog import AgentCatalog
from orchestrator.containers.backend import ContainerBackend
from orchestrator.containers.docker_backend import DockerBackend
from orchestrator.containers.engine_checks import check_engine_capabilities
from orchestrator.containers.spec import HOST_GATEWAY_NAME
from orchestrator.containers.swarm_backend import SwarmBackend
from orchestrator.containers.swarm_network import RELAY_ALIAS
from orchestrator.egress.ca import CaError, EgressCa
from orchestrator.egress.gateway import (
    EgressGateway,
    GatewayConfig,
    GatewayLimits,
    upstream_tls_context,
)
from orchestrator.egress.jobs import JobEgressAudit, ManagerEgressJobs
from orchestrator.egress.resolve import Resolver
from orchestrator.errors import ConfigError, EngineUnavailable
from orchestrator.fd_limit import FdLimit, current_fd_limit, raise_fd_limit
from orchestrator.grpc_api.server import ControlPlane, start_control_plane
from orchestrator.host_interfaces import interface_address
from orchestrator.http_api.app import build_app, start_worker_api
from orchestrator.http_api.connection_limits import ConnectionLimits, connection_limits
from orchestrator.http_api.worker_tls import (
    WorkerApiTls,
    WorkerTlsError,
    bridge_addresses,
    is_local_bind,
    operator_tls,
    own_tls,
    server_names,
)
from orchestrator.jobs.isolation import egress_relay_problem
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.llm.factory import build_provider
from orchestrator.llm.proxy import LlmProxy
from orchestrator.llm.types import LlmProvider
from orchestrator.logging import get_logger
from orchestrator.metrics import Metrics, MetricsServer, start_metrics_server
from orchestrator.settings import Settings
from orchestrator.store.sealing import GrantSealer
from orchestrator.store.sqlite_store import SqliteJobStore
from orchestrator.tokens import TokenStore
from orchestrator.tool_catalog import ToolCatalog

log = get_logger(__name__)


@dataclass
class Orchestrator:
    """A running orchestrator; build it with :func:`start_orchestrator`."""

    settings: Settings
    backend: ContainerBackend
    manager: ContainerJobManager
    proxy: LlmProxy
    control_plane: ControlPlane
    http_runner: web.AppRunner
    http_host: str
    http_port: int
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    metrics: Metrics | None = None
    metrics_server: MetricsServer | None = None
    connection_limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    accept_errors: AcceptErrors | None = None
    undo_accept_filter: Any = None
    egress: EgressGateway | None = None

    @property
    def egress_port(self) -> int:
        """The egress gateway's bound port (on the worker API's address)."""
        return self.egress.port if self.egress is not None else 0

    @property
    def metrics_port(self) -> int | None:
        """The bound ``/metrics`` port, when metrics are served."""
        return self.metrics_server.port if self.metrics_server is not None else None

    @property
    def grpc_port(self) -> int:
        return self.control_plane.port

    async def stop(self, drain: bool = False, grace: float = 5.0) -> None:
        """Health NOT_SERVING, no new jobs, in-flight RPCs finish; containers stay for the next
        start unless ``drain``."""
        await self.control_plane.set_serving(False)
        await self.manager.shutdown(drain=drain)
        await self.control_plane.server.stop(grace)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.egress is not None:
            await self.egress.close()
        await self.http_runner.cleanup()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self.undo_accept_filter is not None:
            self.undo_accept_filter()
        if self.accept_errors is not None:
            self.accept_errors.close()
        await self.proxy.aclose()
        await self.manager.close()
        await self.backend.close()


async def check_engine(settings: Settings, backend: ContainerBackend) -> None:
    """Stops the start (ConfigError) on a setting the engine would refuse for every job; logs
    what it cannot enforce."""
    caps = await backend.capabilities(probe_image=settings.worker_image)
    check = check_engine_capabilities(settings, caps)
    for warning in check.warnings:
        log.warning(warning)
    if check.errors:
        raise ConfigError("; ".join(check.errors))
    log.info(
        "job container limits",
        cpus=settings.worker_cpus or "no quota",
        read_only_rootfs=settings.worker_read_only_rootfs,
        writable_layer_limit=caps.writable_layer_limit,
        storage_driver=caps.storage_driver or "?",
    )


async def resolve_http_bind(settings: Settings, backend: ContainerBackend) -> str:
    """Where the worker API listens: the configured address, else the Docker bridge gateway
    (reachable from containers, not from the LAN)."""
    if settings.http_bind:
        return settings.http_bind
    if settings.container_backend == "swarm":
        raise ConfigError(
            "CONTAINER_BACKEND=swarm: set ORCHESTRATOR_HTTP_BIND to an address of this host "
            "that the Swarm nodes reach (and the LAN need not), e.g. its address on the nodes' "
            "network"
        )
    if settings.container_backend == "kubernetes":
        raise ConfigError(
            "CONTAINER_BACKEND=kubernetes: set ORCHESTRATOR_HTTP_BIND (0.0.0.0 in the "
            "orchestrator's pod: its NetworkPolicy, not the bind address, keeps others out)"
        )
    try:
        gateway = await backend.default_gateway()
    except EngineUnavailable:
        gateway = interface_address("docker0")
    if gateway is None:
        raise EngineUnavailable(
            "cannot find the Docker bridge gateway to bind the worker API to: set "
            "ORCHESTRATOR_HTTP_BIND"
        )
    return gateway


async def start_orchestrator(
    settings: Settings,
    backend: ContainerBackend | None = None,
    provider: LlmProvider | None = None,
    grpc_port: int | None = None,
    http_port: int | None = None,
    reaper_interval: float = 2.0,
    metrics_port: int | None = None,
    egress_port: int | None = None,
    workspace_sweep_interval: float = 60.0,
) -> Orchestrator:
    """Starts everything; ports default to the settings (0 picks free ones, for tests). The
    egress gateway's port follows ``http_port=0`` when not given, so tests that pick free
    ports for the worker API never collide on the gateway's."""
    metrics = Metrics.for_settings(settings) if settings.metrics_enabled else None
    # Checked before anything starts: a cap the descriptor limit cannot carry stops the start.
    limits = connection_limits(settings, current_fd_limit())
    backend = backend or build_backend(settings)
    if metrics is not None:
        backend.report_errors_to(metrics.docker_error)
    try:
        await backend.ping()
        await check_engine(settings, backend)
        await backend.verify_hardening()
    except EngineUnavailable as exc:
        # Serve anyway: jobs are not judged lost until reconciliation can see the engine.
        log.error("container engine unreachable at start; will keep retrying", error=exc.message)
    if provider is None:
        provider = build_provider(settings)
    catalog = ToolCatalog(settings.base_dir)
    mcp_servers, wasm_tools = catalog.check()  # a broken catalogue stops the start
    log.info(
        "custom tool catalogues",
        mcp_catalog=str(catalog.mcp_path),
        mcp_servers=mcp_servers,
        wasm_tools_dir=str(catalog.wasm_dir),
        wasm_tools=wasm_tools,
    )
    agents = AgentCatalog(settings.base_dir)
    log.info("agent catalogue", path=str(agents.path), agents=agents.check())
    http_host = await resolve_http_bind(settings, backend)
    await backend.check_host_paths(settings.projects_dir)
    # Without persistence the manager keeps its ended jobs in a temporary store of its own.
    store = (
        SqliteJobStore(settings.store_path, history_max_bytes=settings.job_history_max_bytes)
        if settings.persist
        else None
    )
    sealer = GrantSealer(settings.secrets_key) if settings.secrets_key else None
    manager = ContainerJobManager(
        settings,
        backend,
        TokenStore(),
        llm_provider_name=provider.name if provider else "none",
        store=store,
        sealer=sealer,
        metrics=metrics,
        catalog=catalog,
        agents=agents,
    )
    manager.restore()
    manager.uploads.prepare()
    proxy = LlmProxy(settings, provider, manager, metrics=metrics)
    port = settings.http_port if http_port is None else http_port
    accept_errors = AcceptErrors(metrics.accept_error if metrics is not None else None)
    undo_accept_filter = install_accept_error_filter(asyncio.get_running_loop(), accept_errors)
    tls = await worker_api_tls(settings, backend, http_host)
    runner, bound_port = await start_worker_api(
        build_app(manager, proxy, metrics),
        http_host,
        port,
        limits,
        metrics,
        tls=tls.context if tls is not None else None,
    )
    # Containers learn the URL only once the port is bound (port 0 picks one in tests).
    scheme = "https" if tls is not None else "http"
    orchestrator_url = settings.orchestrator_url or _container_url(
        settings, http_host, bound_port, scheme
    )
    manager.set_orchestrator_url(orchestrator_url)
    manager.set_orchestrator_ca_pem(tls.ca_pem if tls is not None else None)
    if egress_port is None:
        egress_port = 0 if http_port == 0 else settings.egress_port
    try:
        gateway = await start_egress_gateway(settings, manager, metrics, http_host, egress_port)
    except BaseException:
        await runner.cleanup()
        raise
    if settings.job_network == "isolated":
        # Only where the job's network has no other way out do its commands get the gateway;
        # on the host's bridge they go out directly, and a proxy would only refuse them.
        egress_url = settings.egress_url or _container_url(settings, http_host, gateway.port)
        problem = egress_relay_problem(orchestrator_url, egress_url)
        if problem:
            await gateway.close()
            await runner.cleanup()
            raise ConfigError(f"IRONCLAW_EGRESS_URL_FOR_JOBS: {problem}")
        manager.set_egress_url(egress_url)
    elif settings.container_backend == "kubernetes":
        # A job pod's NetworkPolicy lets it reach the orchestrator's pods only: the gateway,
        # beside the worker API behind the same Service, is its one way out.
        manager.set_egress_url(
            settings.egress_url or _kubernetes_egress_url(settings, gateway.port)
        )
    plane = await start_control_plane(settings, manager, grpc_port)
    orch = Orchestrator(
        settings=settings,
        backend=backend,
        manager=manager,
        proxy=proxy,
        control_plane=plane,
        http_runner=runner,
        http_host=http_host,
        http_port=bound_port,
        metrics=metrics,
        connection_limits=limits,
        accept_errors=accept_errors,
        undo_accept_filter=undo_accept_filter,
        egress=gateway,
    )
    if metrics is not None:
        orch.metrics_server = await _serve_metrics(metrics, settings, metrics_port)
    try:
        await manager.reconcile_once()
    except EngineUnavailable as exc:
        log.warning("first reconciliation postponed: engine unreachable", error=exc.message)
    orch.tasks.append(asyncio.create_task(manager.watch_container_exits(), name="exits"))
    # After the first reconciliation, which removes the slots a previous run left unclaimed.
    manager.start_warm_pool()
    orch.tasks.append(asyncio.create_task(manager.run_reaper(reaper_interval), name="reaper"))
    orch.tasks.append(
        asyncio.create_task(
            manager.run_workspace_sweeper(workspace_sweep_interval), name="workspace-retention"
        )
    )
    log.info(
        "orchestrator started",
        grpc=f"{settings.grpc_bind}:{plane.port}",
        worker_api=f"{http_host}:{bound_port}",
        worker_api_tls=tls.origin if tls is not None else "off",
        job_network=settings.job_network,
        egress_gateway=f"{http_host}:{gateway.port}",
        egress_allow_hosts=[str(rule) for rule in settings.egress_allow_hosts.rules],
        worker_api_max_connections=limits.max_connections,
        worker_api_max_connections_per_source=limits.max_per_source,
        container_url=orchestrator_url,
        instance=settings.instance,
        warm_pool=dict(settings.warm_pool) or "off",
        llm_provider=proxy.provider_name,
        metrics=(
            f"{settings.metrics_bind}:{orch.metrics_port}/metrics" if orch.metrics_port else "off"
        ),
    )
    return orch


async def start_egress_gateway(
    settings: Settings,
    manager: ContainerJobManager,
    metrics: Metrics | None,
    host: str,
    port: int,
) -> EgressGateway:
    """The egress gateway on host:port: jobs' tokens checked by the manager, their attempts
    recorded as ``egress`` events."""
    try:
        ca = EgressCa.load_or_create(settings.state_dir or settings.base_dir)
        upstream_tls = upstream_tls_context(
            str(settings.egress_upstream_ca) if settings.egress_upstream_ca else None
        )
    except CaError as exc:
        raise ConfigError(str(exc)) from None
    except ssl.SSLError:
        raise ConfigError("EGRESS_UPSTREAM_CA: not a PEM bundle of CA certificates") from None
    manager.set_egress_ca_pem(ca.cert_pem)
    config = GatewayConfig(
        ca=ca,
        upstream_tls=upstream_tls,
        operator=settings.egress_allow_hosts,
        may_widen=settings.egress_job_may_widen,
        resolver=Resolver(settings.egress_resolve),
        limits=GatewayLimits(
            max_connections=settings.egress_max_connections,
            max_per_source=settings.http_max_connections_per_source,
            header_timeout_s=settings.http_header_timeout_s,
            idle_timeout_s=settings.egress_idle_timeout_s,
        ),
    )
    audit = JobEgressAudit(manager, settings.job_event_rate, settings.job_event_burst, metrics)
    gateway = EgressGateway(config, ManagerEgressJobs(manager), audit, metrics)
    await gateway.start(host, port)
    return gateway


async def _serve_metrics(
    metrics: Metrics, settings: Settings, port: int | None
) -> MetricsServer | None:
    # Metrics are for watching the service, not a reason to refuse to run jobs: a taken port
    # is logged loudly with the fix, and the orchestrator serves on without /metrics.
    chosen = settings.metrics_port if port is None else port
    try:
        return await start_metrics_server(metrics, settings.metrics_bind, chosen)
    except OSError as exc:
        log.error(
            "metrics endpoint not served: set METRICS_PORT to a free port (or METRICS_ENABLED=0)",
            address=f"{settings.metrics_bind}:{chosen}",
            error=str(exc),
        )
        return None


def _container_url(settings: Settings, http_host: str, port: int, scheme: str = "http") -> str:
    if settings.kubernetes_orchestrator_url and settings.container_backend == "kubernetes":
        # Pods reach the orchestrator through its Service, never through an address of a host
        # (the setting is required with this backend: checked with the settings).
        return settings.kubernetes_orchestrator_url
    return f"{scheme}://{container_host(settings, http_host)}:{port}"


def _kubernetes_egress_url(settings: Settings, port: int) -> str:
    """The egress gateway as job pods reach it: the worker API's Service host, its own port."""
    host = urlsplit(settings.kubernetes_orchestrator_url or "").hostname or ""
    return f"http://{host}:{port}"


def _jobs_url_override(settings: Settings) -> tuple[str, str] | None:
    """The URL jobs are told to use when the operator gave one, with the setting's name."""
    if settings.orchestrator_url:
        return "IRONCLAW_ORCHESTRATOR_URL_FOR_JOBS", settings.orchestrator_url
    if settings.container_backend == "kubernetes" and settings.kubernetes_orchestrator_url:
        return "KUBERNETES_ORCHESTRATOR_URL", settings.kubernetes_orchestrator_url
    return None


def container_host(settings: Settings, http_host: str) -> str:
    """The worker API's host name as job containers reach it (without an override)."""
    if settings.container_backend == "swarm":
        if settings.job_network == "isolated":
            # The job's own relay, on the job's network (swarm_network).
            return RELAY_ALIAS
        # No host-gateway on other machines: the address the worker API is bound to, which
        # the nodes reach.
        return http_host
    # host.docker.internal is mapped to the bridge gateway in every job container.
    return HOST_GATEWAY_NAME


async def worker_api_tls(
    settings: Settings, backend: ContainerBackend, http_host: str
) -> WorkerApiTls | None:
    """The worker API's TLS: the operator's files when set; else, where it listens beyond
    loopback and the Docker bridge, the orchestrator's own CA (unless WORKER_API_INSECURE=1);
    None: plaintext."""
    override = _jobs_url_override(settings)
    url_host = (
        urlsplit(override[1]).hostname if override else container_host(settings, http_host)
    ) or http_host
    try:
        if settings.worker_api_tls_cert is not None:
            assert settings.worker_api_tls_key is not None
            assert settings.worker_api_ca is not None
            tls: WorkerApiTls | None = operator_tls(
                settings.worker_api_tls_cert, settings.worker_api_tls_key, settings.worker_api_ca
            )
        else:
            try:
                gateway = await backend.default_gateway()
            except EngineUnavailable:
                gateway = None
            if is_local_bind(http_host, bridge_addresses(gateway)):
                tls = None
            elif settings.worker_api_insecure:
                log.warning(
                    "WORKER_API_INSECURE=1: the worker API serves job tokens in plaintext "
                    "beyond loopback and the Docker bridge",
                    worker_api=http_host,
                )
                tls = None
            else:
                tls = own_tls(
                    settings.state_dir or settings.base_dir, server_names(url_host, http_host)
                )
    except WorkerTlsError as exc:
        raise ConfigError(str(exc)) from None
    if override and (urlsplit(override[1]).scheme == "https") != (tls is not None):
        name, url = override
        raise ConfigError(
            f"{name}={url}: the worker API is served "
            f"{'over TLS' if tls is not None else 'in plaintext'} here; use "
            f"{'https' if tls is not None else 'http'}://"
        )
    return tls


def build_backend(settings: Settings) -> ContainerBackend:
    """The container backend CONTAINER_BACKEND names."""
    if settings.container_backend == "swarm":
        return SwarmBackend(settings)
    if settings.container_backend == "kubernetes":
        # Imported here: the client is an optional extra (orchestrator[kubernetes]).
        from orchestrator.containers.kubernetes_backend import KubernetesBackend

        return KubernetesBackend(settings)
    return DockerBackend()


async def serve_forever(settings: Settings, drain: bool = False) -> None:
    """Runs until SIGTERM/SIGINT, then shuts down gracefully."""
    _log_fd_limit(raise_fd_limit())
    orch = await start_orchestrator(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", drain=drain)
    await orch.stop(drain=drain)


def _log_fd_limit(limit: FdLimit) -> None:
    if limit.error:
        log.warning(
            "could not raise the file-descriptor limit; the worker API's connection cap "
            "follows the lower limit",
            soft=limit.soft,
            hard=limit.hard,
            error=limit.error,
        )
    elif limit.soft != limit.previous_soft:
        log.info("file-descriptor limit raised", soft=limit.soft, previous=limit.previous_soft)
    else:
        log.info("file-descriptor limit", soft=limit.soft, hard=limit.hard)
