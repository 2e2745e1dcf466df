"""The egress and trust part of a job's command environment.

Where ``GET /job`` says the job's network leads out through the orchestrator's egress gateway
only, every command gets the proxy variables (with the job's egress key, never the worker token)
and, when the gateway terminates TLS for some of the job's hosts, a CA bundle that trusts it
(``ironclaw_contract.egress``). A process that itself calls the orchestrator over ``https://``
(the agent a runner starts, the Claude CLI) is also given the orchestrator's CA
(``IRONCLAW_ORCHESTRATOR_CA``) in the same bundle: system roots, the gateway's CA, the
orchestrator's, so both the orchestrator and upstream hosts through the gateway verify.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ironclaw_contract.egress import (
    CA_BUNDLE_ENV_NAMES,
    SYSTEM_CA_BUNDLE,
    egress_environment,
    write_ca_bundle,
)

log = logging.getLogger(__name__)

# What reads a CA bundle among the clients that call the orchestrator: OpenSSL-based ones
# (Python's ssl, httpx, curl), requests, Node (added to its own roots). Not git: it never
# talks to the orchestrator, and the gateway's bundle sets its variable when git needs it.
ORCHESTRATOR_TRUST_ENV_NAMES = tuple(
    name for name in CA_BUNDLE_ENV_NAMES if name != "GIT_SSL_CAINFO"
)


def egress_env(
    job: Mapping[str, Any],
    job_id: str,
    egress_key: str,
    home: str | None,
    orchestrator_ca_pem: str | None = None,
) -> dict[str, str]:
    """The variables to add to every command's environment: the egress gateway's (empty when
    the job's commands go out directly, no ``egress`` section, or no egress key is known) and,
    given ``orchestrator_ca_pem``, a bundle that trusts the orchestrator too."""
    info = job.get("egress")
    egress = isinstance(info, Mapping) and bool(egress_key)
    gateway_pem = info.get("ca_pem") if isinstance(info, Mapping) and egress else None
    pems = [
        pem.strip("\n")
        for pem in (gateway_pem, orchestrator_ca_pem)
        if isinstance(pem, str) and pem.strip()
    ]
    bundle = None
    if pems:
        # $HOME is a private tmpfs in a job container; the root filesystem is read-only.
        directory = Path(home or tempfile.gettempdir()) / ".ironclaw-egress"
        bundle = write_ca_bundle(directory, "\n".join(pems), SYSTEM_CA_BUNDLE)
    if not egress:
        if bundle is None:
            return {}
        return dict.fromkeys(ORCHESTRATOR_TRUST_ENV_NAMES, str(bundle))
    assert isinstance(info, Mapping)
    env = egress_environment(info, job_id, egress_key, bundle)
    hosts = info.get("allow_hosts") or []
    log.info(
        "egress through the gateway only; allowed: %s",
        ", ".join(str(host) for host in hosts) or "nothing",
    )
    return env
