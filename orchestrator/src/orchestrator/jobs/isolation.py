"""``JOB_NETWORK=isolated``: what the job manager asks the backend for, per job."""

from __future__ import annotations

from urllib.parse import urlsplit

from orchestrator.containers.backend import JobNetworkRequest
from orchestrator.errors import FailedPrecondition
from orchestrator.settings import Settings


def job_network_request(
    settings: Settings, job_id: str, orchestrator_url: str
) -> JobNetworkRequest:
    """The isolated network of one job: its relay answers as the host of the worker API's URL
    (so the URL in the container does not change) and forwards only that URL's port."""
    parts = urlsplit(orchestrator_url)
    if not parts.hostname:
        raise FailedPrecondition(f"worker API URL {orchestrator_url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return JobNetworkRequest(
        instance=settings.instance,
        job_id=job_id,
        relay_image=settings.job_relay_image or settings.worker_image,
        upstream_network=settings.worker_network,
        upstream_host=parts.hostname,
        port=port,
        subnet_pool=settings.job_network_pool,
        relay_max_connections=settings.job_relay_max_connections,
        relay_first_byte_timeout_s=settings.http_header_timeout_s,
        relay_idle_timeout_s=relay_idle_timeout_s(settings),
    )


def relay_idle_timeout_s(settings: Settings) -> float:
    """The longest silence a relayed connection has in normal use: an LLM call with all its
    retries (nothing flows until the answer), then a keep-alive pause; plus a margin."""
    llm_call = settings.llm_timeout_s * (settings.llm_max_retries + 1)
    return llm_call + settings.http_idle_timeout_s + 60.0
