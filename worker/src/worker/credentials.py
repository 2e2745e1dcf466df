"""Turns the job's granted credentials into environment variables for the tools.

Credentials live only in the tools' environment: never on disk, never in a log line (grant names
are logged, values never).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

# One rule for both sides of the container boundary: the orchestrator refuses these names at
# CreateJob, and this is the container's own check of what it receives.
from ironclaw_contract.env_names import default_env_name, is_allowed_env_name

log = logging.getLogger(__name__)

__all__ = ["credential_env", "default_env_name", "is_allowed_env_name", "with_env_names"]


def with_env_names(creds: Mapping[str, Any], env_names: Any) -> dict[str, Any]:
    """Attaches the env names the orchestrator announced in ``GET /job`` (``credential_env``)
    to the ``{name: value}`` body of ``GET /credentials``."""
    if not isinstance(env_names, Mapping):
        return dict(creds)
    return {
        name: {"value": value, "env_name": env_names[name]}
        if isinstance(value, str) and isinstance(env_names.get(name), str)
        else value
        for name, value in creds.items()
    }


def credential_env(creds: Mapping[str, Any]) -> dict[str, str]:
    """Maps the body of ``GET /credentials`` to environment variables.

    Each entry is either ``name → value`` (the env name is derived, ``github`` → ``GITHUB_TOKEN``)
    or ``name → {"value": ..., "env_name": ...}`` when the grant chose its own env name. An entry
    that is malformed, would set a reserved variable or repeats an env name already taken is
    skipped with a warning that names the grant, never the value.
    """
    env: dict[str, str] = {}
    for grant, entry in creds.items():
        if isinstance(entry, str):
            value, env_name = entry, default_env_name(grant)
        elif isinstance(entry, Mapping) and isinstance(entry.get("value"), str):
            value = entry["value"]
            named = entry.get("env_name")
            env_name = named if isinstance(named, str) and named else default_env_name(grant)
        else:
            log.warning("credential %r skipped: expected a string or {value, env_name}", grant)
            continue
        if "\0" in value:
            log.warning("credential %r skipped: its value contains a NUL byte", grant)
            continue
        if not is_allowed_env_name(env_name):
            log.warning("credential %r skipped: env name %r is not allowed", grant, env_name)
            continue
        if env_name in env:
            log.warning("credential %r skipped: env name %s is already taken", grant, env_name)
            continue
        env[env_name] = value
    return env
