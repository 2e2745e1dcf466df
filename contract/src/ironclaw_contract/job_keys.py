"""The keys a job's agent side holds instead of its worker token.

Each is derived from the job's worker token, one way, under a context of its own: the bridge or
worker, which holds the token, computes a key and gives only the key to what it runs; the
orchestrator keeps each key's digest from the job's creation. So a key never travels, survives
an orchestrator restart without being stored in clear, reveals nothing of the token to an agent
that reads it, and opens one thing of its job only:

* the **LLM key** (``ircl_``): the job's Anthropic route, what the Claude Code CLI presents;
* the **egress key** (``irce_``): the job's identity at the egress gateway, the password of the
  proxy URL the tools' ``HTTPS_PROXY`` names (``ironclaw_contract.egress``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

LLM_KEY_PREFIX: Final = "ircl_"
EGRESS_KEY_PREFIX: Final = "irce_"
_LLM_CONTEXT: Final = b"ironclaw llm key\x00"
_EGRESS_CONTEXT: Final = b"ironclaw egress key\x00"


def _derive(worker_token: str, job_id: str, context: bytes, prefix: str) -> str:
    mac = hmac.new(
        worker_token.encode("utf-8", "surrogatepass"), context + job_id.encode(), hashlib.sha256
    ).digest()
    return prefix + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def llm_key_for(worker_token: str, job_id: str) -> str:
    """The LLM key of job ``job_id`` whose worker token is ``worker_token``."""
    return _derive(worker_token, job_id, _LLM_CONTEXT, LLM_KEY_PREFIX)


def egress_key_for(worker_token: str, job_id: str) -> str:
    """The egress key of job ``job_id`` whose worker token is ``worker_token``."""
    return _derive(worker_token, job_id, _EGRESS_CONTEXT, EGRESS_KEY_PREFIX)
