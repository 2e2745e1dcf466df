"""``JOB_NETWORK=isolated``: what the job manager asks the backend for, per job."""

from __future__ import annotations

from urllib.parse import urlsplit

from orchestrator.containers.backend import JobNetworkRequest
from orchestrator.errors import FailedPrecondition
from orchestrator.settings import Settings


def job_network_request(
    settings: Settings, job_id: str, orchestrator_url: str, egress_url: str | None = None
) -> JobNetworkRequest:
    """The isolated network of one job: its relay answers as the host of the worker API's URL
    (so the URL in the container does not change) and forwards only that URL's port, and the
    egress gateway's when its URL is given (on the same host: :func:`egress_relay_problem`)."""
    parts = urlsplit(orchestrator_url)
    if not parts.hostname:
        raise FailedPrecondition(f"worker API URL {orchestrator_url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    extra_ports: tuple[int, ...] = ()
    if egress_url is not None:
        problem = egress_relay_problem(orchestrator_url, egress_url)
        if problem:
            raise FailedPrecondition(problem)
        extra_ports = (urlsplit(egress_url).port or 80,)
    alias = parts.hostname
    upstream = alias
    if settings.container_backend == "swarm" and settings.http_bind:
        # The job's URL names its relay (swarm_network.RELAY_ALIAS); the relay goes on to the
        # address the worker API is bound to, which the nodes reach.
        upstream = settings.http_bind
    return JobNetworkRequest(
        instance=settings.instance,
        job_id=job_id,
        relay_image=settings.job_relay_image or settings.worker_image,
        upstream_network=settings.worker_network,
        upstream_host=upstream,
        alias=alias,
        port=port,
        subnet_pool=settings.job_network_pool,
        extra_ports=extra_ports,
        relay_max_connections=settings.job_relay_max_connections,
        relay_first_byte_timeout_s=settings.http_header_timeout_s,
        relay_idle_timeout_s=relay_idle_timeout_s(settings),
    )


def egress_relay_problem(orchestrator_url: str, egress_url: str) -> str | None:
    """Why a job's relay cannot forward to both URLs, or None: it answers as one host only."""
    worker_api, egress = urlsplit(orchestrator_url), urlsplit(egress_url)
    if worker_api.hostname != egress.hostname:
        return (
            f"the egress gateway's URL for jobs ({egress_url}) must name the worker API's host "
            f"({worker_api.hostname}): an isolated job's relay answers as that host only"
        )
    worker_port = worker_api.port or (443 if worker_api.scheme == "https" else 80)
    if (egress.port or 80) == worker_port:
        return f"the egress gateway's URL for jobs ({egress_url}) has the worker API's port"
    return None


def relay_idle_timeout_s(settings: Settings) -> float:
    """The longest silence a relayed connection has in normal use: an LLM call with all its
    retries (nothing flows until the answer), then a keep-alive pause; plus a margin."""
    llm_call = settings.llm_timeout_s * (settings.llm_max_retries + 1)
    return llm_call + settings.http_idle_timeout_s + 60.0
