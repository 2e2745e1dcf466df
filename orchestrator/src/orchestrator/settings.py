"""Orchestrator settings: read once from the environment, validated, frozen, passed explicitly.

Each setting is declared once, as a field of :class:`Settings` made by :func:`setting`: its
environment variable, its parser, its default (as the text an operator would write) and a
one-line meaning. The dataclass default, :meth:`Settings.from_env` and the README's
configuration table (checked by a test, printable with ``python -m orchestrator.settings``) all
come from that declaration. A bad value is a :class:`ConfigError` naming the variable, never a
silent fallback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar, overload

from ironclaw_contract.claude import CLAUDE_TOOL_NAMES
from orchestrator.egress.policy import EgressPolicy, PolicyError
from orchestrator.egress.resolve import ResolveOverride, parse_overrides
from orchestrator.errors import ConfigError
from orchestrator.model_names import model_name_problem
from orchestrator.secrets import Secret

T = TypeVar("T")
Parser = Callable[[str, str], T]

# What Claude Code 2.1.327 itself sends for each alias; CLAUDE_CODE_MODEL_MAP overrides entries.
CLAUDE_MODEL_MAP_DEFAULT: tuple[tuple[str, str], ...] = (
    ("sonnet", "claude-sonnet-5-5"),
    ("opus", "claude-opus-5-5"),
    ("haiku", "claude-haiku-5-5"),
)

LLM_PROVIDERS = ("anthropic", "openai", "scripted", "none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("auto", "json", "console")
JOB_NETWORK_MODES = ("bridge", "isolated")
CONTAINER_BACKENDS = ("docker", "swarm", "kubernetes")
_PROVIDER_DEFAULT_MODELS = {
    "anthropic": "claude-sonnet-5-5",
    "openai": "gpt-4o-mini",
    "scripted": "scripted",
}
_METADATA_KEY: Final = "ironclaw.setting"
NOT_SET: Final = "—"


# --------------------------------------------------------------------------- parsers
# Each takes the variable's name (for the error) and its stripped, non-empty value.


def _nonempty(name: str, raw: str) -> str:
    return raw


def _secret(name: str, raw: str) -> Secret:
    return Secret(raw)


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _directory(name: str, raw: str) -> Path:
    return Path(raw).expanduser().resolve()


def _existing_file(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name}={raw}: no such file")
    return path.resolve()


def _url(name: str, raw: str) -> str:
    if not re.match(r"^https?://[^\s/]+", raw):
        raise ConfigError(f"{name}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")


def _proxy_url(name: str, raw: str) -> str:
    # What tools take as HTTPS_PROXY: plain http, a host and a port, nothing else.
    if not re.fullmatch(r"http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/?", raw):
        raise ConfigError(f"{name}={raw!r} is not http://host:port")
    return raw.rstrip("/")


def _ipv4_pool(name: str, raw: str) -> str:
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


def _int_range(low: int, high: int) -> Parser[int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    return parse


_port = _int_range(0, 65535)


def _float_range(low: float, high: float) -> Parser[float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={value} is out of range [{low}, {high}]")
        return value

    return parse


def _cpus(name: str, raw: str) -> float:
    # The engine's own bounds for --cpus (0.01 and up); 0 turns the quota off.
    value = _float_range(0.0, 1024.0)(name, raw)
    if 0 < value < 0.01:
        raise ConfigError(f"{name}={value}: give at least 0.01 CPUs, or 0 for no quota")
    return value


def _megabytes(low: int, high: int) -> Parser[int]:
    """A size given in MiB, kept in bytes."""
    in_range = _int_range(low, high)

    def parse(name: str, raw: str) -> int:
        return in_range(name, raw) * 1024 * 1024

    return parse


def _choice(choices: tuple[str, ...], upper: bool = False) -> Parser[str]:
    def parse(name: str, raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in choices:
            raise ConfigError(f"{name}={raw!r} must be one of {', '.join(choices)}")
        return value

    return parse


def _csv(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


# The pool names of WARM_POOL: one per job mode (its image).
WARM_POOL_MODES = {"worker": "worker", "claude": "claude-code", "claude-code": "claude-code"}
MAX_WARM_POOL_SIZE = 64


def _warm_pool(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    """``worker=4,claude=1``: how many started, unclaimed containers to keep per job mode (the
    mode's value, ``worker`` or ``claude-code``); "" or sizes of 0: no pool."""
    sizes: dict[str, int] = {}
    for part in _csv(name, raw):
        pool, sep, size = (piece.strip() for piece in part.partition("="))
        mode = WARM_POOL_MODES.get(pool.lower())
        if not sep or mode is None or not size.isdigit():
            raise ConfigError(
                f"{name}: {part!r} is not pool=size with pool one of worker, claude "
                "(e.g. WARM_POOL=worker=4,claude=1)"
            )
        if mode in sizes:
            raise ConfigError(f"{name}: the {pool} pool is named twice")
        if int(size) > MAX_WARM_POOL_SIZE:
            raise ConfigError(f"{name}: {part!r}: at most {MAX_WARM_POOL_SIZE} containers a pool")
        sizes[mode] = int(size)
    return tuple((mode, size) for mode, size in sizes.items() if size > 0)


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


def _model_name(name: str, raw: str) -> str:
    # The rule CreateJob applies to a job's own model: a default that passes here never fails
    # a job later.
    problem = model_name_problem(raw)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    return raw


def _model_map(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """``alias=model,...`` merged over the defaults (an entry replaces that alias only)."""
    merged = dict(CLAUDE_MODEL_MAP_DEFAULT)
    for part in _csv(name, raw):
        alias, sep, model = (piece.strip() for piece in part.partition("="))
        if not sep or not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", alias.lower()):
            raise ConfigError(f"{name}: {part!r} is not alias=model (sonnet=claude-sonnet-5-5)")
        problem = model_name_problem(model)
        if problem:
            raise ConfigError(f"{name}: {problem}")
        merged[alias.lower()] = model
    return tuple(merged.items())


def _egress_hosts(name: str, raw: str) -> EgressPolicy:
    try:
        return EgressPolicy.parse(raw)
    except PolicyError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _egress_resolve(name: str, raw: str) -> tuple[ResolveOverride, ...]:
    try:
        return parse_overrides(raw)
    except PolicyError as exc:
        raise ConfigError(f"{name}: {exc}") from None


# Docker's image reference grammar (distribution/reference): [host[:port]/]path[:tag][@digest].
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_DOMAIN = (
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
)
_IMAGE_REFERENCE = re.compile(
    rf"(?:{_REF_DOMAIN}/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,})?"
)
_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


def _image(name: str, raw: str) -> str:
    # The engine refuses a malformed reference on every create: refuse it here instead.
    if len(raw) > 255 or not (_IMAGE_REFERENCE.fullmatch(raw) or _IMAGE_ID.fullmatch(raw)):
        raise ConfigError(
            f"{name}={raw!r} is not an image reference (e.g. ironclaw-worker:latest; lower-case "
            "name, optional :tag)"
        )
    return raw


def _network_name(name: str, raw: str) -> str:
    # A network name, not a network mode: "container:<id>" would share another container's
    # network namespace, and the engine refuses anything malformed on every create.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", raw):
        raise ConfigError(f"{name}={raw!r} is not a Docker network name")
    return raw


def _swarm_constraints(name: str, raw: str) -> tuple[str, ...]:
    # What `docker service create --constraint` takes: node.<attribute>==|!=<value>.
    entries = _csv(name, raw)
    for entry in entries:
        if not re.fullmatch(r"(node|engine)\.[A-Za-z0-9_.-]+ *(==|!=) *[^\s,]+", entry):
            raise ConfigError(
                f"{name}: {entry!r} is not a placement constraint (e.g. node.labels.zone==a, "
                "node.role!=manager)"
            )
    return entries


def _dns_label(name: str, raw: str) -> str:
    # A namespace or RuntimeClass name: an RFC 1123 label.
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", raw):
        raise ConfigError(f"{name}={raw!r}: use lowercase letters, digits and '-' (max 63)")
    return raw


_K8S_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
_K8S_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def _label_selector(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    # ``app=ironclaw-orchestrator,tier=control``: equality only, as a NetworkPolicy's
    # matchLabels takes it.
    pairs: list[tuple[str, str]] = []
    for entry in _csv(name, raw):
        key, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or not _K8S_LABEL_KEY.fullmatch(key) or not _K8S_LABEL_VALUE.fullmatch(value):
            raise ConfigError(
                f"{name}: {entry!r} is not key=value with a Kubernetes label key and value "
                "(e.g. app=ironclaw-orchestrator)"
            )
        pairs.append((key, value))
    if not pairs:
        raise ConfigError(f"{name} is empty: give at least one key=value")
    return tuple(pairs)


def _cidr(name: str, raw: str) -> str:
    try:
        return str(ipaddress.ip_network(raw, strict=True))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an address block (e.g. 10.0.0.5/32)") from None


def _label_value(name: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", raw):
        raise ConfigError(f"{name}={raw!r}: use letters, digits, '.', '_' or '-' (max 63)")
    return raw


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class SettingSpec(Generic[T]):
    """One setting: where it comes from, how it is read, its default and what it means.

    ``default`` is the text an operator would write (``None``: unset); the field's value when
    the variable is unset is ``parse(env, default)``. ``shown`` is the README's default column
    when that is not the literal default (a value derived at start). ``derived``: when unset,
    :meth:`Settings.from_env` works the value out from other settings.
    """

    env: str
    parse: Parser[T]
    default: str | None
    meaning: str
    shown: str | None = None
    derived: bool = False

    @property
    def documented_default(self) -> str:
        """The README's default column, without backticks."""
        if self.shown is not None:
            return self.shown
        return self.default if self.default else NOT_SET

    def read(self, env: Mapping[str, str]) -> T | None:
        """The value ``env`` gives, its default when unset (``None`` for derived settings)."""
        raw = env.get(self.env)
        if raw is None or not raw.strip():
            if self.derived or self.default is None:
                return None
            return self.parse(self.env, self.default)
        return self.parse(self.env, raw.strip())


@overload
def setting(
    env: str,
    parse: Parser[T],
    default: str,
    meaning: str,
    *,
    shown: str | None = None,
    derived: bool = False,
) -> T: ...


@overload
def setting(
    env: str,
    parse: Parser[T],
    default: None,
    meaning: str,
    *,
    shown: str | None = None,
    derived: bool = False,
) -> T | None: ...


def setting(
    env: str,
    parse: Parser[T],
    default: str | None,
    meaning: str,
    *,
    shown: str | None = None,
    derived: bool = False,
) -> T | None:
    """A :class:`Settings` field read from ``env``; its default is ``parse(env, default)``."""
    spec = SettingSpec(env, parse, default, meaning, shown, derived)
    value = None if default is None else parse(env, default)
    # dataclasses.field returns the Field at run time; to a type checker it is the value.
    return dataclasses.field(default=value, metadata={_METADATA_KEY: spec})


def _derived(env: str, parse: Parser[T], value: T, meaning: str, shown: str) -> T:
    """A field whose value, when ``env`` is unset, :meth:`Settings.from_env` derives."""
    spec = SettingSpec(env, parse, None, meaning, shown, derived=True)
    return dataclasses.field(default=value, metadata={_METADATA_KEY: spec})


@dataclass(frozen=True)
class Settings:
    """All orchestrator configuration. Build it with :meth:`from_env`."""

    grpc_port: int = setting("ORCHESTRATOR_PORT", _port, "50051", "gRPC control plane port")
    grpc_bind: str = setting(
        "ORCHESTRATOR_BIND", _nonempty, "127.0.0.1", "control plane address (non-loopback: see TLS)"
    )
    admin_token: Secret | None = setting(
        "ORCHESTRATOR_ADMIN_TOKEN", _secret, None, "required on every RPC but health, when set"
    )
    tls_cert: Path | None = setting(
        "ORCHESTRATOR_TLS_CERT", _existing_file, None, "PEM certificate of the control plane"
    )
    tls_key: Path | None = setting(
        "ORCHESTRATOR_TLS_KEY", _existing_file, None, "PEM key of the control plane"
    )
    insecure: bool = setting(
        "ORCHESTRATOR_INSECURE", _bool, "0", "accept plaintext on a non-loopback bind"
    )
    http_port: int = setting("ORCHESTRATOR_HTTP_PORT", _port, "50052", "worker API port")
    # None: the Docker bridge gateway, read from the engine at start.
    http_bind: str | None = setting(
        "ORCHESTRATOR_HTTP_BIND", _nonempty, None, "worker API address", shown="bridge gateway"
    )
    # TLS of the worker API (http_api/worker_tls.py): required where it listens beyond loopback
    # and the Docker bridge; without the operator's files the orchestrator makes its own CA.
    worker_api_tls_cert: Path | None = setting(
        "WORKER_API_TLS_CERT",
        _existing_file,
        None,
        "PEM certificate of the worker API",
        shown="made under the state dir when needed",
    )
    worker_api_tls_key: Path | None = setting(
        "WORKER_API_TLS_KEY", _existing_file, None, "PEM key of the worker API"
    )
    worker_api_ca: Path | None = setting(
        "WORKER_API_CA", _existing_file, None, "PEM CA that signed it (given to jobs to trust)"
    )
    worker_api_insecure: bool = setting(
        "WORKER_API_INSECURE",
        _bool,
        "0",
        "serve the worker API in plaintext beyond loopback and the Docker bridge",
    )
    http_max_body_bytes: int = setting(
        "ORCHESTRATOR_HTTP_MAX_BODY_MB", _megabytes(16, 1024), "32", "worker API body limit"
    )
    # Worker-API connections: None follows the descriptor limit (http_api/connection_limits.py).
    http_max_connections: int | None = setting(
        "ORCHESTRATOR_HTTP_MAX_CONNECTIONS",
        _int_range(16, 1_000_000),
        None,
        "worker-API connections open at once",
        shown="(descriptor limit - 128) / 2, within 16-4,096: 448 under 1,024",
    )
    http_max_connections_per_source: int = setting(
        "ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE",
        _int_range(1, 1_000_000),
        "64",
        "worker-API connections open at once from one address",
    )
    http_header_timeout_s: float = setting(
        "ORCHESTRATOR_HTTP_HEADER_TIMEOUT_S",
        _float_range(0.1, 3600.0),
        "10",
        "the whole request head within this",
    )
    http_body_timeout_s: float = setting(
        "ORCHESTRATOR_HTTP_BODY_TIMEOUT_S",
        _float_range(0.1, 3600.0),
        "60",
        "the whole request body within this after its head",
    )
    http_idle_timeout_s: float = setting(
        "ORCHESTRATOR_HTTP_IDLE_TIMEOUT_S",
        _float_range(0.1, 86400.0),
        "60",
        "a keep-alive connection idle this long is closed",
    )
    instance: str = _derived(
        "ORCHESTRATOR_INSTANCE",
        _label_value,
        "",
        "label value separating orchestrators that share an engine",
        shown="derived from the base dir",
    )
    base_dir: Path = setting(
        "IRONCLAW_BASE_DIR", _directory, "~/.ironclaw", "state; projects under <base>/projects"
    )
    # What containers use to reach the worker API; None: derived from the bound port.
    orchestrator_url: str | None = setting(
        "IRONCLAW_ORCHESTRATOR_URL_FOR_JOBS",
        _url,
        None,
        "the worker API's URL as job containers reach it",
        shown="http://host.docker.internal:<worker API port>",
    )
    egress_url: str | None = setting(
        "IRONCLAW_EGRESS_URL_FOR_JOBS",
        _proxy_url,
        None,
        "the egress gateway's URL as job containers reach it",
        shown="http://host.docker.internal:<egress gateway port>",
    )

    worker_image: str = setting("WORKER_IMAGE", _image, "ironclaw-worker:latest", "worker image")
    worker_memory_mb: int = setting(
        "WORKER_MEMORY_MB", _int_range(64, 1 << 20), "2048", "memory limit (no swap)"
    )
    worker_cpus: float = setting(
        "WORKER_CPUS", _cpus, "1", "CPU quota of every job container, in CPUs (0: none)"
    )
    worker_cpu_shares: int = setting(
        "WORKER_CPU_SHARES", _int_range(2, 262144), "1024", "CPU shares"
    )
    worker_pids_limit: int = setting(
        "WORKER_PIDS_LIMIT", _int_range(16, 1 << 22), "1024", "pids limit"
    )
    worker_read_only_rootfs: bool = setting(
        "WORKER_READ_ONLY_ROOTFS", _bool, "1", "job containers' root filesystem is read-only"
    )
    worker_tmp_bytes: int = setting(
        "WORKER_TMP_MB", _megabytes(16, 1 << 20), "512", "size of the /tmp tmpfs"
    )
    worker_home_bytes: int = setting(
        "WORKER_HOME_MB", _megabytes(16, 1 << 20), "1024", "size of the $HOME tmpfs"
    )
    worker_disk_bytes: int = setting(
        "WORKER_DISK_MB",
        _megabytes(64, 1 << 24),
        "4096",
        "writable layer limit where the storage driver can enforce one",
    )
    worker_timeout_s: int = setting(
        "WORKER_TIMEOUT_S", _int_range(1, 7 * 86400), "3600", "worker job deadline"
    )
    worker_max_iterations: int = setting(
        "WORKER_MAX_ITERATIONS", _int_range(1, 10000), "50", "agent loop limit"
    )
    worker_network: str = setting(
        "WORKER_NETWORK", _network_name, "bridge", "Docker network of job containers"
    )
    worker_runtime: str | None = setting(
        "WORKER_RUNTIME", _nonempty, None, "OCI runtime of job containers"
    )
    # Started, hardened containers waiting to be claimed by a job (jobs/warm_pool.py).
    warm_pool: tuple[tuple[str, int], ...] = setting(
        "WARM_POOL", _warm_pool, "", "warm containers per job mode: worker=4,claude=1 (off)"
    )
    warm_pool_max_age_s: int = setting(
        "WARM_POOL_MAX_AGE_S", _int_range(10, 7 * 86400), "3600", "a warm slot is replaced after"
    )
    # "bridge": the seed's behaviour (host.docker.internal, the internet reachable); "isolated":
    # a per-job internal network whose only peer is a relay to the worker API.
    job_network: str = setting(
        "JOB_NETWORK", _choice(JOB_NETWORK_MODES), "isolated", "isolated or bridge"
    )
    job_network_pool: str = setting(
        "JOB_NETWORK_POOL", _ipv4_pool, "10.213.0.0/16", "where per-job /28 subnets come from"
    )
    # None: the worker image (it has python3).
    job_relay_image: str | None = setting(
        "JOB_RELAY_IMAGE", _image, None, "image of the per-job relay", shown="the worker image"
    )
    job_relay_max_connections: int = setting(
        "JOB_RELAY_MAX_CONNECTIONS",
        _int_range(1, 100_000),
        "64",
        "connections a job's relay forwards at once",
    )
    container_backend: str = setting(
        "CONTAINER_BACKEND",
        _choice(CONTAINER_BACKENDS),
        "docker",
        "docker (one host), swarm or kubernetes",
    )
    # None: DOCKER_HOST, else the local socket (the Docker backend's engine).
    swarm_manager_url: str | None = setting(
        "SWARM_MANAGER_URL", _nonempty, None, "a Swarm manager's engine API", shown="DOCKER_HOST"
    )
    swarm_constraints: tuple[str, ...] = setting(
        "SWARM_PLACEMENT_CONSTRAINTS",
        _swarm_constraints,
        "",
        "constraints of every job's service (node.labels.pool==jobs,...)",
    )
    swarm_reserve_cpus: float = setting(
        "SWARM_RESERVE_CPUS", _cpus, "0", "CPUs reserved on a node for each job (0: none)"
    )
    swarm_reserve_memory_bytes: int = setting(
        "SWARM_RESERVE_MEMORY_MB",
        _megabytes(0, 1 << 20),
        "0",
        "memory reserved on a node for each job (0: none)",
    )
    swarm_allow_new_privileges: bool = setting(
        "SWARM_ALLOW_NEW_PRIVILEGES",
        _bool,
        "0",
        "run jobs on nodes whose dockerd lacks no-new-privileges",
    )
    swarm_start_timeout_s: float = setting(
        "SWARM_START_TIMEOUT_S",
        _float_range(1.0, 3600.0),
        "60",
        "a job's task must be running within this (else START_FAILED)",
    )
    swarm_poll_interval_s: float = setting(
        "SWARM_POLL_INTERVAL_S",
        _float_range(0.1, 60.0),
        "0.5",
        "how often task and node states are read",
    )
    # CONTAINER_BACKEND=kubernetes (containers/kubernetes_*.py): one Pod per job in one namespace.
    kubernetes_namespace: str = setting(
        "KUBERNETES_NAMESPACE",
        _dns_label,
        "ironclaw",
        "namespace of the job pods (and the service)",
    )
    kubernetes_runtime_class: str | None = setting(
        "KUBERNETES_RUNTIME_CLASS", _dns_label, None, "runtimeClassName of job pods (gvisor, kata)"
    )
    kubernetes_orchestrator_selector: tuple[tuple[str, str], ...] = setting(
        "KUBERNETES_ORCHESTRATOR_SELECTOR",
        _label_selector,
        "app=ironclaw-orchestrator",
        "labels of the orchestrator's pods: the only peer a job's NetworkPolicy allows",
    )
    kubernetes_orchestrator_cidr: str | None = setting(
        "KUBERNETES_ORCHESTRATOR_CIDR",
        _cidr,
        None,
        "an orchestrator outside the cluster: the address block job pods may reach it at",
        shown="the selector's pods",
    )
    kubernetes_orchestrator_url: str | None = setting(
        "KUBERNETES_ORCHESTRATOR_URL",
        _url,
        None,
        "the worker API's URL as job pods reach it (required with kubernetes)",
        shown="http://ironclaw-orchestrator.<namespace>.svc:<worker API port>",
    )
    kubernetes_request_cpus: float = setting(
        "KUBERNETES_REQUEST_CPUS",
        _cpus,
        "0.25",
        "CPU request of a job pod (its limit: WORKER_CPUS)",
    )
    kubernetes_request_memory_bytes: int = setting(
        "KUBERNETES_REQUEST_MEMORY_MB",
        _megabytes(0, 1 << 20),
        "256",
        "memory request of a job pod (at most its limit)",
    )
    kubernetes_workspace_bytes: int = setting(
        "KUBERNETES_WORKSPACE_MB",
        _megabytes(16, 1 << 24),
        "4096",
        "sizeLimit of the job's /workspace emptyDir",
    )
    kubernetes_allow_host_path: bool = setting(
        "KUBERNETES_ALLOW_HOST_PATH",
        _bool,
        "0",
        "1: mount the project directory as a hostPath (one node, or a path shared by all)",
    )
    kubernetes_start_timeout_s: float = setting(
        "KUBERNETES_START_TIMEOUT_S",
        _float_range(1.0, 3600.0),
        "120",
        "a job's pod must be running within this (else START_FAILED with the reason)",
    )
    kubernetes_node_lost_s: int = setting(
        "KUBERNETES_NODE_LOST_S",
        _int_range(1, 86400),
        "60",
        "a job's pod leaves a NotReady/unreachable node after this (its job: NODE_LOST)",
    )
    kubernetes_watch_timeout_s: int = setting(
        "KUBERNETES_WATCH_TIMEOUT_S",
        _int_range(5, 3600),
        "300",
        "the pod watch is renewed (from its resourceVersion) this often",
    )
    # The egress gateway (orchestrator/egress/): deny by default, on the worker API's address.
    egress_port: int = setting("ORCHESTRATOR_EGRESS_PORT", _port, "50053", "egress gateway port")
    egress_allow_hosts: EgressPolicy = setting(
        "EGRESS_ALLOW_HOSTS",
        _egress_hosts,
        "",
        "names jobs may reach through the gateway",
        shown="nothing",
    )
    egress_job_may_widen: bool = setting(
        "EGRESS_JOB_MAY_WIDEN", _bool, "0", "a job's own list may go beyond the operator's"
    )
    egress_resolve: tuple[ResolveOverride, ...] = setting(
        "EGRESS_RESOLVE", _egress_resolve, "", "names answered without DNS", shown=NOT_SET
    )
    egress_upstream_ca: Path | None = setting(
        "EGRESS_UPSTREAM_CA", _existing_file, None, "extra CA bundle for upstreams"
    )
    egress_max_connections: int = setting(
        "EGRESS_MAX_CONNECTIONS",
        _int_range(1, 1_000_000),
        "256",
        "egress connections open at once",
    )
    egress_idle_timeout_s: float = setting(
        "EGRESS_IDLE_TIMEOUT_S",
        _float_range(0.1, 86400.0),
        "300",
        "an egress connection with no byte either way this long is closed",
    )
    state_dir: Path | None = setting(
        "ORCHESTRATOR_STATE_DIR", _path, None, "where orchestrator.db lives", shown="the base dir"
    )
    stop_grace_s: int = setting(
        "STOP_GRACE_S", _int_range(0, 600), "10", "SIGTERM → SIGKILL grace on stop"
    )

    claude_image: str = setting(
        "CLAUDE_CODE_IMAGE", _image, "ironclaw-claude:latest", "Claude Code mode image"
    )
    claude_memory_mb: int = setting(
        "CLAUDE_CODE_MEMORY_MB", _int_range(64, 1 << 20), "4096", "its memory limit"
    )
    claude_max_turns: int = setting(
        "CLAUDE_CODE_MAX_TURNS", _int_range(1, 10000), "50", "--max-turns"
    )
    claude_model: str = setting("CLAUDE_CODE_MODEL", _model_name, "sonnet", "--model")
    claude_allowed_tools: tuple[str, ...] = setting(
        "CLAUDE_CODE_ALLOWED_TOOLS", _claude_tools, "bash,read,write", "the CLI's tools"
    )
    claude_timeout_s: int = setting(
        "CLAUDE_CODE_TIMEOUT_S", _int_range(1, 7 * 86400), "3600", "Claude Code job deadline"
    )
    claude_idle_timeout_s: float = setting(
        "CLAUDE_CODE_IDLE_TIMEOUT_S",
        _float_range(1.0, 7 * 86400.0),
        "600",
        "a job waiting for prompts ends after this long without one",
    )
    # Model aliases the Claude Code CLI accepts (--model sonnet) → the model ids sent upstream.
    claude_model_map: tuple[tuple[str, str], ...] = setting(
        "CLAUDE_CODE_MODEL_MAP",
        _model_map,
        ",".join(f"{alias}={model}" for alias, model in CLAUDE_MODEL_MAP_DEFAULT),
        "model ids behind the CLI's aliases",
    )
    # Opt-in: the real Anthropic credential goes into the container (see README, "Claude Code").
    claude_key_in_container: bool = setting(
        "CLAUDE_CODE_KEY_IN_CONTAINER", _bool, "0", "put the real credential into containers"
    )
    anthropic_api_key: Secret | None = setting(
        "ANTHROPIC_API_KEY", _secret, None, "Anthropic API key"
    )
    claude_oauth_token: Secret | None = setting(
        "CLAUDE_CODE_OAUTH_TOKEN", _secret, None, "Claude Code OAuth token"
    )
    anthropic_base_url: str | None = setting(
        "ANTHROPIC_BASE_URL", _url, None, "upstream of the Anthropic provider"
    )

    llm_provider: str = _derived(
        "LLM_PROVIDER",
        _choice(LLM_PROVIDERS),
        "none",
        "anthropic, openai, scripted or none",
        shown="picked from what is configured",
    )
    llm_model: str = _derived(
        "LLM_MODEL", _nonempty, "", "default model of the proxy", shown="per provider"
    )
    llm_base_url: str | None = setting("LLM_BASE_URL", _url, None, "OpenAI-compatible server")
    openai_api_key: Secret | None = setting("OPENAI_API_KEY", _secret, None, "key for it")
    llm_script: Path | None = setting(
        "LLM_SCRIPT", _existing_file, None, "response file of the scripted provider"
    )
    llm_timeout_s: float = setting(
        "LLM_TIMEOUT_S", _float_range(0.1, 3600.0), "120", "upstream request timeout"
    )
    llm_max_retries: int = setting(
        "LLM_MAX_RETRIES", _int_range(0, 10), "2", "upstream request retries"
    )

    job_llm_max_tokens_per_call: int = setting(
        "JOB_LLM_MAX_TOKENS_PER_CALL", _int_range(1, 1_000_000), "8192", "cap on max_tokens"
    )
    job_llm_token_budget: int = setting(
        "JOB_LLM_TOKEN_BUDGET", _int_range(0, 1 << 40), "2000000", "tokens per job (0: unlimited)"
    )
    job_llm_call_budget: int = setting(
        "JOB_LLM_CALL_BUDGET", _int_range(0, 1 << 30), "500", "LLM calls per job (0: unlimited)"
    )
    llm_model_allowlist: tuple[str, ...] = setting(
        "LLM_MODEL_ALLOWLIST", _csv, "", "models a job may ask for besides the default"
    )

    # Status lines and events a job may send: a token bucket per job (rate 0: unlimited).
    job_event_rate: float = setting(
        "JOB_EVENT_RATE", _float_range(0.0, 100_000.0), "50", "status lines and events a second"
    )
    job_event_burst: int = setting(
        "JOB_EVENT_BURST", _int_range(1, 1_000_000), "500", "status lines and events at once"
    )
    # What a job's history (events, status lines) may hold, in memory and in the store.
    job_history_max_bytes: int = setting(
        "JOB_HISTORY_MAX_MB", _megabytes(1, 1024), "4", "bytes of a job's history kept"
    )

    secrets_key: Secret | None = setting(
        "ORCHESTRATOR_SECRETS_KEY", _secret, None, "seals credential grants in the store"
    )
    persist: bool = setting("ORCHESTRATOR_PERSIST", _bool, "1", "keep jobs in the store")

    # Workspaces uploaded as archives (workspaces/): <projects>/upload-<id>.
    workspace_upload_max_bytes: int = setting(
        "WORKSPACE_UPLOAD_MAX_MB",
        _megabytes(1, 1 << 20),
        "256",
        "an uploaded workspace's size unpacked",
    )
    workspace_uploads_at_once: int = setting(
        "WORKSPACE_UPLOADS_AT_ONCE",
        _int_range(1, 64),
        "4",
        "uploads (and, separately, downloads) in progress at once",
    )
    workspace_upload_timeout_s: float = setting(
        "WORKSPACE_UPLOAD_TIMEOUT_S",
        _float_range(1.0, 86400.0),
        "600",
        "an upload must be complete within this",
    )
    workspace_retain_s: int = setting(
        "WORKSPACE_RETAIN_S",
        _int_range(0, 366 * 86400),
        "86400",
        "a job's workspace can be downloaded this long after it ended",
    )
    workspace_unused_retain_s: int = setting(
        "WORKSPACE_UNUSED_RETAIN_S",
        _int_range(0, 366 * 86400),
        "3600",
        "an uploaded workspace no job used is removed after this",
    )
    log_tail_lines: int = setting(
        "JOB_LOG_TAIL_LINES", _int_range(0, 100_000), "200", "log lines kept from a dead container"
    )
    log_level: str = setting("LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "INFO", "log level")
    log_format: str = setting("LOG_FORMAT", _choice(LOG_FORMATS), "auto", "json, console or auto")
    # Prometheus /metrics on its own port, loopback by default (job containers must not reach it).
    metrics_enabled: bool = setting("METRICS_ENABLED", _bool, "1", "serve /metrics")
    metrics_port: int = setting("METRICS_PORT", _port, "9464", "Prometheus /metrics port")
    metrics_bind: str = setting("METRICS_BIND", _nonempty, "127.0.0.1", "metrics address")

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
        values: dict[str, Any] = {}
        for field_name, spec in setting_specs():
            value = spec.read(env)
            if value is not None or not spec.derived:
                values[field_name] = value
        read = cls(**values)
        return dataclasses.replace(read, **_derived_values(read, env))


def setting_specs() -> Iterator[tuple[str, SettingSpec[Any]]]:
    """Every setting as (field name, declaration), in declaration order."""
    for item in dataclasses.fields(Settings):
        spec = item.metadata.get(_METADATA_KEY)
        if isinstance(spec, SettingSpec):
            yield item.name, spec


def _derived_values(s: Settings, env: Mapping[str, str]) -> dict[str, Any]:
    """The settings that depend on others, and the checks that span several variables."""
    if (s.tls_cert is None) != (s.tls_key is None):
        raise ConfigError("ORCHESTRATOR_TLS_CERT and ORCHESTRATOR_TLS_KEY must be set together")
    if not _is_loopback(s.grpc_bind):
        if s.admin_token is None:
            raise ConfigError(
                f"ORCHESTRATOR_BIND={s.grpc_bind} is not loopback: set ORCHESTRATOR_ADMIN_TOKEN "
                "so the control plane is not open to anyone who can reach it"
            )
        if s.tls_cert is None and not s.insecure:
            raise ConfigError(
                f"ORCHESTRATOR_BIND={s.grpc_bind} is not loopback: set ORCHESTRATOR_TLS_CERT and "
                "ORCHESTRATOR_TLS_KEY, or ORCHESTRATOR_INSECURE=1 to accept plaintext"
            )
    worker_tls = (s.worker_api_tls_cert, s.worker_api_tls_key, s.worker_api_ca)
    if any(path is not None for path in worker_tls) and None in worker_tls:
        raise ConfigError(
            "WORKER_API_TLS_CERT, WORKER_API_TLS_KEY and WORKER_API_CA must be set together"
        )
    if s.worker_api_tls_cert is not None and s.worker_api_insecure:
        raise ConfigError("WORKER_API_INSECURE=1 contradicts WORKER_API_TLS_CERT: unset one")
    if s.container_backend == "swarm" and s.warm_pool:
        raise ConfigError(
            "CONTAINER_BACKEND=swarm: WARM_POOL is for one Docker host (a slot's container is "
            "started before its job's node is chosen); unset WARM_POOL"
        )
    if s.container_backend == "kubernetes":
        _check_kubernetes(s)
    derived: dict[str, Any] = {}
    provider = s.llm_provider if _is_set(env, "LLM_PROVIDER") else _pick_provider(s)
    if provider == "scripted" and s.llm_script is None:
        raise ConfigError("LLM_PROVIDER=scripted needs LLM_SCRIPT (a response file)")
    if provider == "anthropic" and s.anthropic_api_key is None:
        raise ConfigError("LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
    if provider == "openai" and s.openai_api_key is None and s.llm_base_url is None:
        raise ConfigError("LLM_PROVIDER=openai needs OPENAI_API_KEY or LLM_BASE_URL")
    derived["llm_provider"] = provider
    if not _is_set(env, "LLM_MODEL"):
        derived["llm_model"] = _PROVIDER_DEFAULT_MODELS.get(provider, "")
    if not _is_set(env, "ORCHESTRATOR_INSTANCE"):
        derived["instance"] = _derive_instance(s.base_dir)
    return derived


def _check_kubernetes(s: Settings) -> None:
    if s.job_network == "isolated":
        raise ConfigError(
            "CONTAINER_BACKEND=kubernetes: JOB_NETWORK=isolated (a relay per job) exists on one "
            "Docker host only; set JOB_NETWORK=bridge (each job pod gets a NetworkPolicy of its "
            "own instead: no ingress, egress only to the orchestrator's pods)"
        )
    if s.warm_pool:
        raise ConfigError(
            "CONTAINER_BACKEND=kubernetes: WARM_POOL is for one Docker host (a slot's pod "
            "would be scheduled before its job is known); unset WARM_POOL"
        )
    if s.worker_runtime:
        raise ConfigError(
            f"CONTAINER_BACKEND=kubernetes: WORKER_RUNTIME={s.worker_runtime} names a Docker "
            "runtime; unset it and set KUBERNETES_RUNTIME_CLASS to a RuntimeClass instead"
        )
    if s.kubernetes_orchestrator_url is None:
        raise ConfigError(
            "CONTAINER_BACKEND=kubernetes needs KUBERNETES_ORCHESTRATOR_URL, the worker API's "
            f"URL as job pods reach it (e.g. https://ironclaw-orchestrator."
            f"{s.kubernetes_namespace}.svc:{s.http_port})"
        )


def _pick_provider(s: Settings) -> str:
    # The provider the operator evidently configured; never a guessed network one.
    if s.llm_script is not None:
        return "scripted"
    if s.anthropic_api_key is not None:
        return "anthropic"
    if s.openai_api_key is not None or s.llm_base_url is not None:
        return "openai"
    return "none"


def _is_set(env: Mapping[str, str], name: str) -> bool:
    return bool(env.get(name, "").strip())


def _derive_instance(base_dir: Path) -> str:
    # Orchestrators sharing one engine are told apart by their base dir: two that share a base
    # dir share projects and state, so they are the same instance.
    return "ic-" + hashlib.sha256(str(base_dir).encode()).hexdigest()[:12]


def _is_loopback(address: str) -> bool:
    return address in ("localhost", "::1", "[::1]") or address.startswith("127.")


def configuration_table() -> str:
    """The README's configuration table rows (variable and default; the meaning is a start)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for _, spec in setting_specs():
        default = spec.documented_default
        shown = default if default == NOT_SET or spec.shown else f"`{default}`"
        rows.append(f"| `{spec.env}` | {shown} | {spec.meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(configuration_table())
