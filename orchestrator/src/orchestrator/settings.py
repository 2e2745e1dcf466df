"""Orchestrator settings: read once from the environment, validated, frozen, passed explicitly.

Every variable has a documented default; a bad value is a :class:`ConfigError` naming the
variable, never a silent fallback.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ironclaw_contract.claude import CLAUDE_TOOL_NAMES
from orchestrator.errors import ConfigError
from orchestrator.secrets import Secret

T = TypeVar("T")

# The seed's lowercase tool names → the Claude Code CLI's: one table, kept with the bridge.

# What Claude Code 2.1.327 itself sends for each alias; CLAUDE_CODE_MODEL_MAP overrides entries.
CLAUDE_MODEL_MAP_DEFAULT: tuple[tuple[str, str], ...] = (
    ("sonnet", "claude-sonnet-5-5"),
    ("opus", "claude-opus-5-5"),
    ("haiku", "claude-haiku-5-5"),
)
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-\[\]/@]{0,127}")

LLM_PROVIDERS = ("anthropic", "openai", "scripted", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("auto", "json", "console")
JOB_NETWORK_MODES = ("bridge", "isolated")


@dataclass(frozen=True)
class Settings:
    """All orchestrator configuration. Build it with :meth:`from_env`."""

    grpc_port: int = 50051
    grpc_bind: str = "127.0.0.1"
    http_port: int = 50052
    http_bind: str | None = None  # None: the Docker bridge gateway, read from the engine
    admin_token: Secret | None = None
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    instance: str = ""
    base_dir: Path = field(default_factory=lambda: Path("~/.ironclaw").expanduser())
    orchestrator_url: str | None = None  # what containers use; None: derived from http_port

    worker_image: str = "ironclaw-worker:latest"
    worker_memory_mb: int = 2048
    worker_cpu_shares: int = 1024
    worker_pids_limit: int = 1024
    worker_timeout_s: int = 3600
    worker_max_iterations: int = 50
    worker_network: str = "bridge"
    worker_runtime: str | None = None
    # "bridge": the seed's behaviour (host.docker.internal, the internet reachable); "isolated":
    # a per-job internal network whose only peer is a relay to the worker API.
    job_network: str = "bridge"
    job_network_pool: str = "10.213.0.0/16"  # per-job subnets (/28) come from here
    job_relay_image: str | None = None  # None: the worker image (it has python3)
    # Connections one job may hold open through its relay (containers/relay_script.py).
    job_relay_max_connections: int = 64
    state_dir: Path | None = None  # ORCHESTRATOR_STATE_DIR; None: the base dir
    stop_grace_s: int = 10

    claude_image: str = "ironclaw-claude:latest"
    claude_memory_mb: int = 4096
    claude_max_turns: int = 50
    claude_model: str = "sonnet"
    claude_allowed_tools: tuple[str, ...] = ("Bash", "Read", "Write")
    claude_timeout_s: int = 3600
    # A Claude Code job that waits for prompts ends after this long without one.
    claude_idle_timeout_s: float = 600.0
    # Model aliases the Claude Code CLI accepts (--model sonnet) → the model ids sent upstream.
    claude_model_map: tuple[tuple[str, str], ...] = CLAUDE_MODEL_MAP_DEFAULT
    # Opt-in: the real Anthropic credential goes into the container (see README, "Claude Code").
    claude_key_in_container: bool = False
    anthropic_api_key: Secret | None = None
    claude_oauth_token: Secret | None = None
    anthropic_base_url: str | None = None

    llm_provider: str = "none"
    llm_model: str = ""
    llm_base_url: str | None = None
    openai_api_key: Secret | None = None
    llm_script: Path | None = None
    llm_timeout_s: float = 120.0
    llm_max_retries: int = 2

    job_llm_max_tokens_per_call: int = 8192
    job_llm_token_budget: int = 2_000_000
    job_llm_call_budget: int = 500
    llm_model_allowlist: tuple[str, ...] = ()

    secrets_key: Secret | None = None
    persist: bool = True

    http_max_body_bytes: int = 32 * 1024 * 1024
    # Status lines and events a job may send: a token bucket per job (rate 0: unlimited).
    job_event_rate: float = 50.0
    job_event_burst: int = 500
    # What a job's history (events, status lines) may hold, in memory and in the store.
    job_history_max_bytes: int = 4 * 1024 * 1024
    # Worker-API connections: None follows the descriptor limit (http_api/connection_limits.py).
    http_max_connections: int | None = None
    http_max_connections_per_source: int = 64
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_idle_timeout_s: float = 60.0
    log_tail_lines: int = 200
    log_level: str = "INFO"
    log_format: str = "auto"
    # Prometheus /metrics on its own port, loopback by default (job containers must not reach it).
    metrics_enabled: bool = True
    metrics_port: int = 9464
    metrics_bind: str = "127.0.0.1"

    @property
    def projects_dir(self) -> Path:
        return self.base_dir / "projects"

    @property
    def store_path(self) -> Path:
        return (self.state_dir or self.base_dir) / "orchestrator.db"

    @property
    def claude_auth_configured(self) -> bool:
        return bool(self.anthropic_api_key) or bool(self.claude_oauth_token)

    @property
    def claude_model_aliases(self) -> dict[str, str]:
        """``CLAUDE_CODE_MODEL_MAP`` as a dict: alias → model id."""
        return dict(self.claude_model_map)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads and validates every variable; raises ConfigError naming the bad one."""
        env = os.environ if env is None else env
        r = _Reader(env)
        base_dir = r.get("IRONCLAW_BASE_DIR", _path, Path("~/.ironclaw").expanduser())
        base_dir = base_dir.expanduser().resolve()
        grpc_bind = r.get("ORCHESTRATOR_BIND", _nonempty, "127.0.0.1")
        admin_token = r.get("ORCHESTRATOR_ADMIN_TOKEN", _secret, None)
        insecure = r.get("ORCHESTRATOR_INSECURE", _bool, False)
        tls_cert = r.get("ORCHESTRATOR_TLS_CERT", _existing_file, None)
        tls_key = r.get("ORCHESTRATOR_TLS_KEY", _existing_file, None)
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("ORCHESTRATOR_TLS_CERT and ORCHESTRATOR_TLS_KEY must be set together")
        if not _is_loopback(grpc_bind):
            if admin_token is None:
                raise ConfigError(
                    f"ORCHESTRATOR_BIND={grpc_bind} is not loopback: set ORCHESTRATOR_ADMIN_TOKEN "
                    "so the control plane is not open to anyone who can reach it"
                )
            if tls_cert is None and not insecure:
                raise ConfigError(
                    f"ORCHESTRATOR_BIND={grpc_bind} is not loopback: set ORCHESTRATOR_TLS_CERT and "
                    "ORCHESTRATOR_TLS_KEY, or ORCHESTRATOR_INSECURE=1 to accept plaintext"
                )
        llm_provider = r.get("LLM_PROVIDER", _choice(LLM_PROVIDERS), "")
        anthropic_key = r.get("ANTHROPIC_API_KEY", _secret, None)
        openai_key = r.get("OPENAI_API_KEY", _secret, None)
        llm_script = r.get("LLM_SCRIPT", _existing_file, None)
        llm_base_url = r.get("LLM_BASE_URL", _url, None)
        if not llm_provider:
            # Pick the provider the operator evidently configured; never guess a network one.
            if llm_script is not None:
                llm_provider = "scripted"
            elif anthropic_key is not None:
                llm_provider = "anthropic"
            elif openai_key is not None or llm_base_url is not None:
                llm_provider = "openai"
            else:
                llm_provider = "none"
        if llm_provider == "scripted" and llm_script is None:
            raise ConfigError("LLM_PROVIDER=scripted needs LLM_SCRIPT (a response file)")
        if llm_provider == "anthropic" and anthropic_key is None:
            raise ConfigError("LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
        if llm_provider == "openai" and openai_key is None and llm_base_url is None:
            raise ConfigError("LLM_PROVIDER=openai needs OPENAI_API_KEY or LLM_BASE_URL")
        default_model = {
            "anthropic": "claude-sonnet-5-5",
            "openai": "gpt-4o-mini",
            "scripted": "scripted",
        }.get(llm_provider, "")
        default_tools: tuple[str, ...] = ("Bash", "Read", "Write")
        tools = r.get("CLAUDE_CODE_ALLOWED_TOOLS", _claude_tools, default_tools)
        instance = r.get("ORCHESTRATOR_INSTANCE", _label_value, None) or _derive_instance(base_dir)
        return cls(
            grpc_port=r.get("ORCHESTRATOR_PORT", _port, 50051),
            grpc_bind=grpc_bind,
            http_port=r.get("ORCHESTRATOR_HTTP_PORT", _port, 50052),
            http_bind=r.get("ORCHESTRATOR_HTTP_BIND", _nonempty, None),
            admin_token=admin_token,
            insecure=insecure,
            tls_cert=tls_cert,
            tls_key=tls_key,
            instance=instance,
            base_dir=base_dir,
            orchestrator_url=r.get("IRONCLAW_ORCHESTRATOR_URL_FOR_JOBS", _url, None),
            worker_image=r.get("WORKER_IMAGE", _nonempty, "ironclaw-worker:latest"),
            worker_memory_mb=r.get("WORKER_MEMORY_MB", _int_range(64, 1 << 20), 2048),
            worker_cpu_shares=r.get("WORKER_CPU_SHARES", _int_range(2, 262144), 1024),
            worker_pids_limit=r.get("WORKER_PIDS_LIMIT", _int_range(16, 1 << 22), 1024),
            worker_timeout_s=r.get("WORKER_TIMEOUT_S", _int_range(1, 7 * 86400), 3600),
            worker_max_iterations=r.get("WORKER_MAX_ITERATIONS", _int_range(1, 10000), 50),
            worker_network=r.get("WORKER_NETWORK", _nonempty, "bridge"),
            worker_runtime=r.get("WORKER_RUNTIME", _nonempty, None),
            job_network=r.get("JOB_NETWORK", _choice(JOB_NETWORK_MODES), "bridge"),
            job_network_pool=r.get("JOB_NETWORK_POOL", _ipv4_pool, "10.213.0.0/16"),
            job_relay_image=r.get("JOB_RELAY_IMAGE", _nonempty, None),
            job_relay_max_connections=r.get(
                "JOB_RELAY_MAX_CONNECTIONS", _int_range(1, 100_000), 64
            ),
            state_dir=r.get("ORCHESTRATOR_STATE_DIR", _path, None),
            stop_grace_s=r.get("STOP_GRACE_S", _int_range(0, 600), 10),
            claude_image=r.get("CLAUDE_CODE_IMAGE", _nonempty, "ironclaw-claude:latest"),
            claude_memory_mb=r.get("CLAUDE_CODE_MEMORY_MB", _int_range(64, 1 << 20), 4096),
            claude_max_turns=r.get("CLAUDE_CODE_MAX_TURNS", _int_range(1, 10000), 50),
            claude_model=r.get("CLAUDE_CODE_MODEL", _nonempty, "sonnet"),
            claude_allowed_tools=tools,
            claude_timeout_s=r.get("CLAUDE_CODE_TIMEOUT_S", _int_range(1, 7 * 86400), 3600),
            claude_idle_timeout_s=r.get(
                "CLAUDE_CODE_IDLE_TIMEOUT_S", _float_range(1.0, 7 * 86400.0), 600.0
            ),
            claude_model_map=r.get("CLAUDE_CODE_MODEL_MAP", _model_map, CLAUDE_MODEL_MAP_DEFAULT),
            claude_key_in_container=r.get("CLAUDE_CODE_KEY_IN_CONTAINER", _bool, False),
            anthropic_api_key=anthropic_key,
            claude_oauth_token=r.get("CLAUDE_CODE_OAUTH_TOKEN", _secret, None),
            anthropic_base_url=r.get("ANTHROPIC_BASE_URL", _url, None),
            llm_provider=llm_provider,
            llm_model=r.get("LLM_MODEL", _nonempty, default_model),
            llm_base_url=llm_base_url,
            openai_api_key=openai_key,
            llm_script=llm_script,
            llm_timeout_s=r.get("LLM_TIMEOUT_S", _float_range(0.1, 3600.0), 120.0),
            llm_max_retries=r.get("LLM_MAX_RETRIES", _int_range(0, 10), 2),
            job_llm_max_tokens_per_call=r.get(
                "JOB_LLM_MAX_TOKENS_PER_CALL", _int_range(1, 1_000_000), 8192
            ),
            job_llm_token_budget=r.get("JOB_LLM_TOKEN_BUDGET", _int_range(0, 1 << 40), 2_000_000),
            job_llm_call_budget=r.get("JOB_LLM_CALL_BUDGET", _int_range(0, 1 << 30), 500),
            llm_model_allowlist=r.get("LLM_MODEL_ALLOWLIST", _csv, ()),
            secrets_key=r.get("ORCHESTRATOR_SECRETS_KEY", _secret, None),
            persist=r.get("ORCHESTRATOR_PERSIST", _bool, True),
            http_max_body_bytes=r.get("ORCHESTRATOR_HTTP_MAX_BODY_MB", _int_range(16, 1024), 32)
            * 1024
            * 1024,
            job_event_rate=r.get("JOB_EVENT_RATE", _float_range(0.0, 100_000.0), 50.0),
            job_event_burst=r.get("JOB_EVENT_BURST", _int_range(1, 1_000_000), 500),
            job_history_max_bytes=r.get("JOB_HISTORY_MAX_MB", _int_range(1, 1024), 4) * 1024 * 1024,
            http_max_connections=r.get(
                "ORCHESTRATOR_HTTP_MAX_CONNECTIONS", _int_range(16, 1_000_000), None
            ),
            http_max_connections_per_source=r.get(
                "ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE", _int_range(1, 1_000_000), 64
            ),
            http_header_timeout_s=r.get(
                "ORCHESTRATOR_HTTP_HEADER_TIMEOUT_S", _float_range(0.1, 3600.0), 10.0
            ),
            http_body_timeout_s=r.get(
                "ORCHESTRATOR_HTTP_BODY_TIMEOUT_S", _float_range(0.1, 3600.0), 60.0
            ),
            http_idle_timeout_s=r.get(
                "ORCHESTRATOR_HTTP_IDLE_TIMEOUT_S", _float_range(0.1, 86400.0), 60.0
            ),
            log_tail_lines=r.get("JOB_LOG_TAIL_LINES", _int_range(0, 100_000), 200),
            log_level=r.get("LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "INFO"),
            log_format=r.get("LOG_FORMAT", _choice(LOG_FORMATS), "auto"),
            metrics_enabled=r.get("METRICS_ENABLED", _bool, True),
            metrics_port=r.get("METRICS_PORT", _port, 9464),
            metrics_bind=r.get("METRICS_BIND", _nonempty, "127.0.0.1"),
        )


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str, str], T], default: T) -> T:
        raw = self._env.get(name)
        if raw is None or raw.strip() == "":
            return default
        return parse(name, raw.strip())


def _nonempty(name: str, raw: str) -> str:
    return raw


def _secret(name: str, raw: str) -> Secret:
    return Secret(raw)


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _existing_file(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}={raw}: no such file")
    return path.resolve()


def _url(name: str, raw: str) -> str:
    if not re.match(r"^https?://[^\s/]+", raw):
        raise ConfigError(f"{name}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")


def _ipv4_pool(name: str, raw: str) -> str:
    import ipaddress

    try:
        pool = ipaddress.IPv4Network(raw, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not an IPv4 network (e.g. 10.213.0.0/16)") from exc
    if pool.prefixlen > 24:
        raise ConfigError(f"{name}={raw} is too small: give a /24 or larger")
    return str(pool)


def _bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use 1/0, true/false)")


def _port(name: str, raw: str) -> int:
    return _int_range(0, 65535)(name, raw)


def _int_range(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    return parse


def _float_range(low: float, high: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    return parse


def _choice(choices: tuple[str, ...], upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return value

    return parse


def _csv(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _claude_tools(name: str, raw: str) -> tuple[str, ...]:
    tools = []
    for part in _csv(name, raw):
        mapped = CLAUDE_TOOL_NAMES.get(part.lower())
        if mapped is None:
            known = ", ".join(sorted(CLAUDE_TOOL_NAMES))
            raise ConfigError(f"{name}: unknown tool {part!r} (known: {known})")
        tools.append(mapped)
    if not tools:
        raise ConfigError(f"{name} names no tool")
    return tuple(dict.fromkeys(tools))


def _model_map(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``alias=model,...`` merged over the defaults (an entry replaces that alias only)."""
    merged = dict(CLAUDE_MODEL_MAP_DEFAULT)
    for part in _csv(name, raw):
        alias, sep, model = (piece.strip() for piece in part.partition("="))
        if not sep or not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", alias.lower()):
            raise ConfigError(f"{name}: {part!r} is not alias=model (sonnet=claude-sonnet-5-5)")
        if not _MODEL_ID.fullmatch(model):
            raise ConfigError(f"{name}: {model!r} is not a model id")
        merged[alias.lower()] = model
    return tuple(merged.items())


def _label_value(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", raw):
        raise ConfigError(f"{name}={raw!r}: use letters, digits, '.', '_' or '-' (max 63)")
    return raw


def _derive_instance(base_dir: Path) -> str:
    # Orchestrators sharing one engine are told apart by their base dir: two that share a base
    # dir share projects and state, so they are the same instance.
    return "ic-" + hashlib.sha256(str(base_dir).encode()).hexdigest()[:12]


def _is_loopback(address: str) -> bool:
    return address in ("localhost", "::1", "[::1]") or address.startswith("127.")
