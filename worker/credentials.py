"""Turns the job's granted credentials into environment variables for the tools.

Credentials live only in the tools' environment: never on disk, never in a log line (grant names
are logged, values never).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]*")

# Variables that decide which code runs or how a shell behaves: a credential must never set them,
# whatever the grant says. The orchestrator refuses them too; this is the container's own check.
RESERVED_ENV_NAMES = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "HOME",
        "IFS",
        "LANG",
        "LC_ALL",
        "LOGNAME",
        "NODE_OPTIONS",
        "PATH",
        "PERL5OPT",
        "PROMPT_COMMAND",
        "PS4",
        "PWD",
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "RUBYOPT",
        "SHELL",
        "SHELLOPTS",
        "TERM",
        "TZ",
        "USER",
    }
)
RESERVED_ENV_PREFIXES = ("IRONCLAW_", "LD_", "DYLD_", "BASH_FUNC_")


def default_env_name(grant_name: str) -> str:
    """The env var a grant gets unless it names one: ``github`` → ``GITHUB_TOKEN``."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", grant_name).strip("_").upper()
    return f"{stem}_TOKEN"


def is_allowed_env_name(name: str) -> bool:
    """Whether a credential may be exposed under ``name``."""
    return (
        _ENV_NAME_RE.fullmatch(name) is not None
        and name not in RESERVED_ENV_NAMES
        and not name.startswith(RESERVED_ENV_PREFIXES)
    )


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
