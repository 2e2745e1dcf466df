"""``--await-claim``: a warm-pool slot waits for its job before the agent starts.

A slot's container is started before any job exists, so its environment holds no job id and
no token: only the worker API's URL, which slot it is and the slot's claim secret
(``ironclaw_contract.container_env``). This waits on the slot's claim channel
(``GET /warm/{slot}/claim``, a long poll authenticated by that secret) until the orchestrator
answers with the job id and token, puts them where the normal entry point reads them, and
returns; the agent (or the Claude bridge) then starts in this same process, with every module
already imported, which is where a warm start gains its time.

The secret leaves the environment before anything else runs; the orchestrator forgets it once
the claim is answered, so the claim is the only thing it ever opened.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import MutableMapping
from dataclasses import dataclass

from ironclaw_contract import container_env
from ironclaw_contract.worker_api import WARM_CLAIM_POLL_S, warm_claim_route
from worker.client import tls_context

log = logging.getLogger("worker.claim")

# Between polls after a failure (the orchestrator restarting, the relay not ready yet).
RETRY_PAUSE_S = 0.5
# The poll's socket timeout: the server answers within WARM_CLAIM_POLL_S (204 at the latest).
_READ_MARGIN_S = 10.0


class ClaimRefused(Exception):
    """The slot is unknown or retired (401): there is no job for this container."""


@dataclass(frozen=True)
class Claim:
    """What the orchestrator answers a slot once a job has claimed it."""

    job_id: str
    token: str

    def __repr__(self) -> str:
        return f"Claim(job_id={self.job_id!r}, token=***)"


def await_claim(env: MutableMapping[str, str]) -> Claim:
    """Blocks until the slot named in ``env`` is claimed; then sets the job id and token in
    ``env`` (the token for the entry point to read and remove, as in a cold container) and
    returns the claim. Raises ClaimRefused when the orchestrator no longer knows the slot, and
    ValueError when ``env`` names no slot."""
    slot_id = env.get(container_env.WARM_SLOT_ID, "").strip()
    secret = env.pop(container_env.WARM_SLOT_SECRET, "").strip()
    url = env.get(container_env.ORCHESTRATOR_URL, "").strip()
    if not slot_id or not secret or not url:
        raise ValueError(
            f"--await-claim needs {container_env.WARM_SLOT_ID}, "
            f"{container_env.WARM_SLOT_SECRET} and {container_env.ORCHESTRATOR_URL}"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{container_env.ORCHESTRATOR_URL}: {url!r} is not an http(s):// URL")
    tls = tls_context(env.get(container_env.ORCHESTRATOR_CA)) if parts.scheme == "https" else None
    default_port = 443 if tls is not None else 80
    claim = _poll_until_claimed(parts.hostname, parts.port or default_port, slot_id, secret, tls)
    env.pop(container_env.WARM_SLOT_ID, None)
    env[container_env.JOB_ID] = claim.job_id
    env[container_env.WORKER_TOKEN] = claim.token
    return claim


def _poll_until_claimed(
    host: str, port: int, slot_id: str, secret: str, tls: ssl.SSLContext | None = None
) -> Claim:
    path = warm_claim_route(slot_id)
    headers = {"Authorization": f"Bearer {secret}", "Connection": "keep-alive"}
    connection: http.client.HTTPConnection | None = None
    while True:
        try:
            if connection is None:
                timeout = WARM_CLAIM_POLL_S + _READ_MARGIN_S
                connection = (
                    http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
                    if tls is not None
                    else http.client.HTTPConnection(host, port, timeout=timeout)
                )
                connection.connect()
                # The claim is a few hundred bytes: no Nagle delay on either side.
                sock = connection.sock
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            log.debug("claim poll failed (%s); retrying", type(exc).__name__)
            if connection is not None:
                connection.close()
                connection = None
            time.sleep(RETRY_PAUSE_S)
            continue
        if response.status == 200:
            connection.close()
            return _parse_claim(body)
        if response.status == 204:
            continue
        if response.status == 401:
            connection.close()
            raise ClaimRefused(f"warm slot {slot_id} is not known to the orchestrator")
        # 5xx, 429: the orchestrator is busy or starting; the slot waits on.
        log.warning("claim poll answered %s; retrying", response.status)
        time.sleep(RETRY_PAUSE_S)


def _parse_claim(body: bytes) -> Claim:
    try:
        data = json.loads(body)
        job_id, token = str(data["job_id"]), str(data["token"])
    except (ValueError, KeyError, TypeError):
        raise ClaimRefused("the claim answer is not {job_id, token}") from None
    if not job_id or not token:
        raise ClaimRefused("the claim answer is empty")
    return Claim(job_id=job_id, token=token)


def claim_from_environment(env: MutableMapping[str, str] | None = None) -> int | None:
    """What ``--await-claim`` does before the entry point reads its environment: None once
    the job id and token are set, or the exit code to end with (2: not a slot; 3: refused)."""
    env = os.environ if env is None else env
    try:
        await_claim(env)
    except ValueError as exc:
        print(f"ironclaw: {exc}", file=sys.stderr, flush=True)
        return 2
    except ClaimRefused as exc:
        print(f"ironclaw: {exc}", file=sys.stderr, flush=True)
        return 3
    return None
