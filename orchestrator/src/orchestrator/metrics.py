"""Prometheus metrics: one :class:`Metrics` per orchestrator, on its own registry and port.

Every label set is bounded: modes, states, terminal reasons, route patterns (never the raw
path), HTTP codes, providers and the configured models. No metric carries a job id. The
endpoint is served on ``METRICS_BIND:METRICS_PORT`` (loopback by default, like the control
plane), never on the worker-API port that job containers reach.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from orchestrator.accept_errors import listening_socket
from orchestrator.logging import get_logger

if TYPE_CHECKING:
    from orchestrator.settings import Settings

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JobCounts = Callable[[], Mapping[tuple[str, str], int]]

# Job start (create → running) is seconds; a job's life is minutes to hours.
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 86400.0)
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)
OTHER = "other"


# Labelled children kept per label set (the label values are bounded already; this bounds the
# cache too).
_MAX_CACHED_LABELS = 1024


class _JobStateCollector(Collector):
    """``ironclaw_jobs{state,mode}``, read from the manager at scrape time."""

    def __init__(self, counts: JobCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "ironclaw_jobs",
            "Jobs the orchestrator knows, by state and mode",
            labels=["state", "mode"],
        )
        for (state, mode), count in sorted(self._counts().items()):
            family.add_metric([state.lower(), mode.lower()], count)
        yield family


class _WarmPoolCollector(Collector):
    """``ironclaw_warm_pool_slots{mode,state}`` and the configured sizes, read at scrape time."""

    def __init__(self, states: Callable[[], Iterable[object]]) -> None:
        self._states = states

    def collect(self) -> Iterable[Metric]:
        slots = GaugeMetricFamily(
            "ironclaw_warm_pool_slots",
            "Unclaimed warm-pool containers, by mode and state (ready, starting)",
            labels=["mode", "state"],
        )
        sizes = GaugeMetricFamily(
            "ironclaw_warm_pool_size", "Configured warm-pool size (WARM_POOL)", labels=["mode"]
        )
        for state in self._states():
            mode = str(getattr(state, "mode", ""))
            slots.add_metric([mode, "ready"], float(getattr(state, "ready", 0)))
            slots.add_metric([mode, "starting"], float(getattr(state, "starting", 0)))
            sizes.add_metric([mode], float(getattr(state, "size", 0)))
        yield slots
        yield sizes


class Metrics:
    """The orchestrator's metrics; every recording method is cheap and never raises."""

    def __init__(self, known_models: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._known_models = frozenset(m for m in known_models if m)
        self._llm_children: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r = self.registry
        self.jobs_created = Counter("ironclaw_jobs_created", "Jobs created", ["mode"], registry=r)
        self.jobs_ended = Counter(
            "ironclaw_jobs_ended",
            "Jobs ended, by terminal reason (completed, failed, oom_killed, timed_out, "
            "stopped_by_operator, budget_exceeded, ...)",
            ["mode", "reason"],
            registry=r,
        )
        self.job_start_seconds = Histogram(
            "ironclaw_job_start_seconds",
            "Time from a job's creation until its container runs",
            ["mode"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.job_duration_seconds = Histogram(
            "ironclaw_job_duration_seconds",
            "Time from a job's creation until its terminal result",
            ["mode", "reason"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.llm_calls = Counter(
            "ironclaw_llm_calls", "LLM calls proxied for jobs", ["provider", "model"], registry=r
        )
        self.llm_tokens = Counter(
            "ironclaw_llm_tokens",
            "LLM tokens used by jobs",
            ["provider", "model", "direction"],
            registry=r,
        )
        self.llm_errors = Counter(
            "ironclaw_llm_errors",
            "LLM calls that failed or were refused",
            ["provider", "model", "kind"],
            registry=r,
        )
        self.llm_seconds = Histogram(
            "ironclaw_llm_proxy_seconds",
            "LLM proxy latency (request in → answer out)",
            ["provider", "model"],
            buckets=LLM_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "ironclaw_worker_api_requests",
            "Worker API requests by route pattern, method and status code",
            ["route", "method", "code"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "ironclaw_worker_api_request_seconds",
            "Worker API request latency by route pattern",
            ["route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.reconcile_passes = Counter(
            "ironclaw_reconcile_passes",
            "Reconciliation passes by outcome (ok, postponed, failed)",
            ["outcome"],
            registry=r,
        )
        self.reconcile_actions = Counter(
            "ironclaw_reconcile_actions",
            "Decisions reconciliation took (adopted, removed_orphan, container_lost, timed_out, "
            "exit_detected)",
            ["action"],
            registry=r,
        )
        self.worker_api_connections = Gauge(
            "ironclaw_worker_api_connections",
            "Worker API connections open now",
            registry=r,
        )
        self.worker_api_connections_refused = Counter(
            "ironclaw_worker_api_connections_refused",
            "Worker API connections closed at the accept, unread: over the cap of their source "
            "(per_source) or of the worker API (total)",
            ["reason"],
            registry=r,
        )
        self.worker_api_connections_timed_out = Counter(
            "ironclaw_worker_api_connections_timed_out",
            "Worker API connections closed for taking too long: header_timeout, body_timeout, "
            "idle_timeout (keep-alive), send_timeout (a response left unread)",
            ["reason"],
            registry=r,
        )
        self.accept_errors = Counter(
            "ironclaw_accept_errors",
            "accept() failures for want of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM), each "
            "followed by a second without accepting",
            ["errno"],
            registry=r,
        )
        self.egress_attempts = Counter(
            "ironclaw_egress_attempts",
            "Egress gateway attempts by outcome (allowed, or the refusal: not_allowed, "
            "ip_literal, forbidden_address, sni_mismatch, unauthenticated, ...)",
            ["outcome"],
            registry=r,
        )
        self.egress_bytes = Counter(
            "ironclaw_egress_bytes",
            "Bytes through the egress gateway (sent: job to upstream; received: back)",
            ["direction"],
            registry=r,
        )
        self.egress_connections = Gauge(
            "ironclaw_egress_connections", "Egress gateway connections open now", registry=r
        )
        self.egress_connections_refused = Counter(
            "ironclaw_egress_connections_refused",
            "Egress gateway connections closed at the accept, unread (per_source, total)",
            ["reason"],
            registry=r,
        )
        self.egress_events_dropped = Counter(
            "ironclaw_egress_events_dropped",
            "Egress attempts counted but not recorded as job events (over the job's event rate)",
            registry=r,
        )
        self.docker_errors = Counter(
            "ironclaw_docker_api_errors",
            "Docker API calls that failed (unreachable, or api_<status>)",
            ["kind"],
            registry=r,
        )

        self.warm_pool_claims = Counter(
            "ironclaw_warm_pool_claims",
            "Jobs that started in a warm-pool container",
            ["mode"],
            registry=r,
        )
        self.warm_pool_misses = Counter(
            "ironclaw_warm_pool_misses",
            "Jobs of a pooled mode that started cold (empty, project, claim_failed)",
            ["mode", "reason"],
            registry=r,
        )
        self.warm_pool_claim_seconds = Histogram(
            "ironclaw_warm_pool_claim_seconds",
            "Time from taking a warm slot until its claim was answered",
            ["mode"],
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        self.warm_pool_fill_failures = Counter(
            "ironclaw_warm_pool_fill_failures",
            "Warm-pool containers that could not be made",
            ["mode"],
            registry=r,
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> Metrics:
        """Metrics whose model labels are limited to the models the settings allow."""
        models = [settings.llm_model, *settings.llm_model_allowlist]
        models += [model for _, model in settings.claude_model_map]
        return cls(models)

    def watch_jobs(self, counts: JobCounts) -> None:
        """Publishes ``ironclaw_jobs{state,mode}`` from ``counts`` at every scrape."""
        self.registry.register(_JobStateCollector(counts))

    def model_label(self, model: str) -> str:
        """The model as a label value: a configured model, else ``other`` (bounded)."""
        return model if model in self._known_models else OTHER

    # ------------------------------------------------------------ warm pools

    def watch_warm_pools(self, states: Callable[[], Iterable[object]]) -> None:
        """Publishes the pools' slot counts and sizes from ``states`` at every scrape."""
        self.registry.register(_WarmPoolCollector(states))

    def warm_pool_claim(self, mode: str, seconds: float) -> None:
        self.warm_pool_claims.labels(mode).inc()
        self.warm_pool_claim_seconds.labels(mode).observe(max(0.0, seconds))

    def warm_pool_miss(self, mode: str, reason: str) -> None:
        self.warm_pool_misses.labels(mode, reason).inc()

    def warm_pool_fill_failed(self, mode: str) -> None:
        self.warm_pool_fill_failures.labels(mode).inc()

    # ------------------------------------------------------------ jobs

    def job_created(self, mode: str) -> None:
        self.jobs_created.labels(mode).inc()

    def job_started(self, mode: str, seconds: float) -> None:
        self.job_start_seconds.labels(mode).observe(max(0.0, seconds))

    def job_ended(self, mode: str, reason: str, seconds: float) -> None:
        reason = reason.lower()
        self.jobs_ended.labels(mode, reason).inc()
        self.job_duration_seconds.labels(mode, reason).observe(max(0.0, seconds))

    # ------------------------------------------------------------ LLM

    def llm_call(
        self, provider: str, model: str, seconds: float, input_tokens: int, output_tokens: int
    ) -> None:
        # The labelled children are looked up once per (provider, model): on the proxy's hot
        # path four ``labels()`` calls a call were a measurable share of its CPU.
        children = self._llm_children.get((provider, model))
        if children is None:
            label, name = self.model_label(model), provider_label(provider)
            children = (
                self.llm_calls.labels(name, label),
                self.llm_seconds.labels(name, label),
                self.llm_tokens.labels(name, label, "input"),
                self.llm_tokens.labels(name, label, "output"),
            )
            if len(self._llm_children) < _MAX_CACHED_LABELS:
                self._llm_children[(provider, model)] = children
        calls, latency, tokens_in, tokens_out = children
        calls.inc()
        latency.observe(max(0.0, seconds))
        tokens_in.inc(max(0, input_tokens))
        tokens_out.inc(max(0, output_tokens))

    def llm_error(self, provider: str, model: str, kind: str) -> None:
        self.llm_errors.labels(provider_label(provider), self.model_label(model), kind).inc()

    # ------------------------------------------------------------ control loops

    def reconcile_pass(self, outcome: str) -> None:
        self.reconcile_passes.labels(outcome).inc()

    def reconcile_action(self, action: str) -> None:
        self.reconcile_actions.labels(action).inc()

    def docker_error(self, kind: str) -> None:
        self.docker_errors.labels(kind).inc()

    # ------------------------------------------------------------ connections

    def watch_worker_api_connections(self, count: Callable[[], int]) -> None:
        """Publishes ``ironclaw_worker_api_connections`` from ``count`` at every scrape."""
        self.worker_api_connections.set_function(count)

    def worker_api_connection_refused(self, reason: str) -> None:
        self.worker_api_connections_refused.labels(reason).inc()

    def worker_api_connection_timed_out(self, reason: str) -> None:
        self.worker_api_connections_timed_out.labels(reason).inc()

    def accept_error(self, errno_name: str) -> None:
        self.accept_errors.labels(errno_name).inc()

    # ------------------------------------------------------------ egress

    def egress_attempt(self, outcome: str, bytes_sent: int, bytes_received: int) -> None:
        self.egress_attempts.labels(outcome).inc()
        if bytes_sent:
            self.egress_bytes.labels("sent").inc(bytes_sent)
        if bytes_received:
            self.egress_bytes.labels("received").inc(bytes_received)

    def watch_egress_connections(self, count: Callable[[], int]) -> None:
        """Publishes ``ironclaw_egress_connections`` from ``count`` at every scrape."""
        self.egress_connections.set_function(count)

    def egress_connection_refused(self, reason: str) -> None:
        self.egress_connections_refused.labels(reason).inc()

    def egress_event_dropped(self) -> None:
        self.egress_events_dropped.inc()

    # ------------------------------------------------------------ exposition

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    def middleware(self) -> Middleware:
        """aiohttp middleware counting worker-API requests by route pattern (outermost, so it
        sees the status the error middleware chose)."""

        @web.middleware
        async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
            started = time.monotonic()
            code = 500
            try:
                response = await handler(request)
                code = response.status
                return response
            except web.HTTPException as exc:
                code = exc.status
                raise
            finally:
                route = _route_pattern(request)
                key = (route, request.method, code)
                children = self._http_children.get(key)
                if children is None:
                    children = (
                        self.http_requests.labels(route, request.method, str(code)),
                        self.http_seconds.labels(route),
                    )
                    if len(self._http_children) < _MAX_CACHED_LABELS:
                        self._http_children[key] = children
                children[0].inc()
                children[1].observe(time.monotonic() - started)

        return count_requests


def provider_label(name: str) -> str:
    """The provider's kind (``scripted (replays x.yaml)`` → ``scripted``): bounded."""
    words = name.split()
    return words[0] if words else "none"


def _route_pattern(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


class MetricsServer:
    """The ``/metrics`` endpoint on its own aiohttp site."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serves ``GET /metrics`` on host:port (0 picks a free port)."""

    async def handle(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        # The socket that ends an accept round at the first EMFILE (accept_errors.py).
        sock = listening_socket(host, port, backlog=128)
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return MetricsServer(runner, host, int(sock.getsockname()[1]))
