"""Which environment variable a credential (or a catalogue entry) may set.

One rule for both sides: the orchestrator refuses a grant whose env name breaks it with
``INVALID_ARGUMENT`` at ``CreateJob``, and the worker checks again before exporting anything,
so a name is never accepted by one side and dropped silently by the other.

Reserved are the variables that decide which code runs, how a shell or an interpreter
behaves, where network traffic goes or which certificates are trusted, and the namespaces of
the orchestrator and of the Claude Code CLI. A credential is a value handed to the tools, never
a way to change what they execute.
"""

from __future__ import annotations

import re
from typing import Final

ENV_NAME_PATTERN: Final = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
GRANT_NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")

RESERVED_ENV_NAMES: Final = frozenset(
    {
        # The process's identity and shell behaviour.
        "BASH_ENV",
        "BASHOPTS",
        "CDPATH",
        "ENV",
        "GLOBIGNORE",
        "HOME",
        "IFS",
        "LANG",
        "LC_ALL",
        "LOGNAME",
        "OLDPWD",
        "PATH",
        "PROMPT_COMMAND",
        "PS1",
        "PS2",
        "PS4",
        "PWD",
        "SHELL",
        "SHELLOPTS",
        "TERM",
        "TMPDIR",
        "TZ",
        "USER",
        # Interpreters and runtimes that load code named by a variable.
        "CLASSPATH",
        "JAVA_TOOL_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "_JAVA_OPTIONS",
        "NODE_OPTIONS",
        "NODE_PATH",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "PYTHONBREAKPOINT",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONUSERBASE",
        "PYTHONWARNINGS",
        "RUBYLIB",
        "RUBYOPT",
        # Programs that tools start by a variable's value.
        "EDITOR",
        "GIT_ASKPASS",
        "GIT_DIR",
        "GIT_EXEC_PATH",
        "GIT_PAGER",
        "GIT_PROXY_COMMAND",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_TEMPLATE_DIR",
        "GIT_WORK_TREE",
        "LESSOPEN",
        "MANPAGER",
        "PAGER",
        "SSH_ASKPASS",
        "VISUAL",
        # Where traffic goes and which certificates are trusted.
        "ALL_PROXY",
        "CURL_CA_BUNDLE",
        "FTP_PROXY",
        "GIT_SSL_CAINFO",
        "GIT_SSL_NO_VERIFY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NODE_EXTRA_CA_CERTS",
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "NO_PROXY",
        "PIP_CERT",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_DIR",
        "SSL_CERT_FILE",
    }
)
RESERVED_ENV_PREFIXES: Final = (
    "IRONCLAW_",  # the orchestrator's own (the worker token above all)
    "LD_",  # the dynamic loader
    "DYLD_",
    "BASH_FUNC_",  # exported shell functions
    "GIT_CONFIG_",  # GIT_CONFIG_PARAMETERS, GIT_CONFIG_COUNT/KEY_n/VALUE_n, GIT_CONFIG_GLOBAL
    "ANTHROPIC_",  # the Claude Code CLI's route to the orchestrator
    "CLAUDE_",  # and its settings
)


def default_env_name(grant_name: str) -> str:
    """The env var a grant gets unless it names one: ``github`` → ``GITHUB_TOKEN``,
    ``my-api`` → ``MY_API_TOKEN``, ``a__b`` → ``A__B_TOKEN``: upper case, and every character
    that cannot be in an env name becomes ``_`` (one for one, so distinct names stay apart)."""
    return re.sub(r"[^A-Z0-9_]", "_", grant_name.upper()) + "_TOKEN"


def env_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be set by a credential, or ``None`` when it can."""
    if not ENV_NAME_PATTERN.fullmatch(name):
        return "must be 1-128 characters of [A-Z0-9_], not starting with a digit"
    if name in RESERVED_ENV_NAMES or name.startswith(RESERVED_ENV_PREFIXES):
        return "is reserved: it would change what the tools run, not hand them a secret"
    return None


def is_allowed_env_name(name: str) -> bool:
    """Whether a credential may be exposed to the tools under ``name``."""
    return env_name_problem(name) is None


def is_reserved_env_key(key: str) -> bool:
    """Whether a catalogue entry may not set ``key`` in a server's environment (compared in
    upper case: a process's environment is case-sensitive, but the shells and runtimes that
    read these names are not all)."""
    upper = key.upper()
    return upper in RESERVED_ENV_NAMES or upper.startswith(RESERVED_ENV_PREFIXES)
