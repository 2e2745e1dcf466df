"""The egress part of a job's command environment: where ``GET /job`` says the job's network
leads out through the orchestrator's egress gateway only, every command gets the proxy
variables (with the job's egress key, never the worker token) and, when the gateway terminates
TLS for some of the job's hosts, a CA bundle that trusts it (``ironclaw_contract.egress``)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ironclaw_contract.egress import SYSTEM_CA_BUNDLE, egress_environment, write_ca_bundle

log = logging.getLogger(__name__)


def egress_env(
    job: Mapping[str, Any], job_id: str, egress_key: str, home: str | None
) -> dict[str, str]:
    """The variables to add to every command's environment; empty when the job's commands go
    out directly (no ``egress`` section) or no egress key is known."""
    info = job.get("egress")
    if not isinstance(info, Mapping) or not egress_key:
        return {}
    ca_pem = info.get("ca_pem")
    bundle = None
    if isinstance(ca_pem, str) and ca_pem.strip():
        # $HOME is a private tmpfs in a job container; the root filesystem is read-only.
        directory = Path(home or tempfile.gettempdir()) / ".ironclaw-egress"
        bundle = write_ca_bundle(directory, ca_pem, SYSTEM_CA_BUNDLE)
    env = egress_environment(info, job_id, egress_key, bundle)
    hosts = info.get("allow_hosts") or []
    log.info(
        "egress through the gateway only; allowed: %s",
        ", ".join(str(host) for host in hosts) or "nothing",
    )
    return env
