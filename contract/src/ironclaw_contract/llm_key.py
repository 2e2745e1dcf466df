"""A Claude Code job's LLM key: what its CLI presents on the job's Anthropic route.

Derived from the job's worker token, one way: the bridge, which holds the token, computes the
key and gives only the key to the CLI; the orchestrator keeps the key's digest from the job's
creation. So the key never travels, survives an orchestrator restart without being stored in
clear, and reveals nothing of the token to an agent that reads it (it opens the job's LLM
route and nothing else).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Final

LLM_KEY_PREFIX: Final = "ircl_"
_CONTEXT: Final = b"ironclaw llm key\x00"


def llm_key_for(worker_token: str, job_id: str) -> str:
    """The LLM key of job ``job_id`` whose worker token is ``worker_token``."""
    mac = hmac.new(
        worker_token.encode("utf-8", "surrogatepass"), _CONTEXT + job_id.encode(), hashlib.sha256
    ).digest()
    return LLM_KEY_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
