"""Agent entries: the operator's catalogue of coding agents a job may run, checked the same way on
both sides of the container boundary.

The orchestrator reads ``<IRONCLAW_BASE_DIR>/agents.json``::

    {"agents": {"mini": {
        "image": "ironclaw-agent-mini:latest",
        "command": ["mini", "-y", "--exit-immediately", "-m", "anthropic/{model}", "-t", "{task}"],
        "api": "anthropic",
        "key_env": "ANTHROPIC_API_KEY",
        "base_url_env": ["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
        "model": "claude-sonnet-5-5",
        "env": {"MSWEA_CONFIGURED": "true"}}}}

with :func:`parse_agent_catalog`, keeps the entry a job names with the job, and serves it in
``GET /job``'s ``agent`` section (:meth:`AgentEntry.to_wire`); ``ironclaw-agent-run`` in the
container checks it again with :meth:`AgentEntry.from_wire` and runs
:func:`render_command` in ``/workspace``. A job names an entry, never an image or a command.

Secrets never sit in the catalogue: the variables in ``key_env`` receive the job's LLM key (which
opens only the job's own model route, ``ironclaw_contract.job_keys``), those in
``base_url_env`` the URL of that route; ``env`` holds settings only, and a name or value that
looks like a secret there is refused. Standard library only.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ironclaw_contract.env_names import ENV_NAME_PATTERN, RESERVED_ENV_NAMES
from ironclaw_contract.secret_patterns import is_secret_name, value_secret_problem
from ironclaw_contract.worker_api import ANTHROPIC, OPENAI

AgentApi = Literal["anthropic", "openai"]
AGENT_APIS: Final[tuple[AgentApi, ...]] = ("anthropic", "openai")
# The job route (``worker_api.job_route``) each API is served on: what the agent's base URL
# points at. An SDK appends ``/v1/messages`` to the Anthropic one, ``/chat/completions`` (or
# ``/responses``) to the OpenAI one, as they do to the providers' own base URLs.
API_ROUTES: Final[Mapping[AgentApi, str]] = {"anthropic": ANTHROPIC, "openai": OPENAI}

AGENT_NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
TASK_PLACEHOLDER: Final = "{task}"
MODEL_PLACEHOLDER: Final = "{model}"
# What a Docker image reference may look like: registry/name:tag or @sha256:digest.
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/:@-]{0,254}", re.IGNORECASE)
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
# The agent's environment may not take the orchestrator's own names or those that change what
# runs (the loader, exported shell functions, git's config injection). The ANTHROPIC_ and
# CLAUDE_ names that credentials may not set are what an agent's entry is for.
_RESERVED_PREFIXES: Final = ("IRONCLAW_", "LD_", "DYLD_", "BASH_FUNC_", "GIT_CONFIG_")
MAX_COMMAND_ARGS: Final = 64
MAX_ARG_CHARS: Final = 4096
MAX_ENV_ENTRIES: Final = 32
MAX_ENV_VALUE_CHARS: Final = 4096
MAX_ENV_NAMES: Final = 4
MAX_AGENTS: Final = 64
_ENTRY_KEYS: Final = frozenset(
    {
        "image",
        "command",
        "api",
        "key_env",
        "base_url_env",
        "model",
        "model_env",
        "env",
        "description",
    }
)


class AgentConfigError(ValueError):
    """An agent entry (or the catalogue) that breaks a rule; the message names the entry."""


@dataclass(frozen=True)
class AgentEntry:
    """One agent of the catalogue, validated."""

    name: str
    image: str
    command: tuple[str, ...]  # argv; {task} and {model} are replaced in each argument
    api: AgentApi
    key_env: tuple[str, ...]  # receive the job's LLM key
    base_url_env: tuple[str, ...]  # receive the URL of the job's route for ``api``
    model: str  # the default model (CreateJob's limits.claude_model overrides it)
    model_env: tuple[str, ...] = ()  # receive the job's model
    env: Mapping[str, str] = field(default_factory=dict)  # settings, never secrets
    description: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The entry as JSON (the store and ``GET /job`` keep it in this shape)."""
        return {
            "name": self.name,
            "image": self.image,
            "command": list(self.command),
            "api": self.api,
            "key_env": list(self.key_env),
            "base_url_env": list(self.base_url_env),
            "model": self.model,
            "model_env": list(self.model_env),
            "env": dict(self.env),
            "description": self.description,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> AgentEntry:
        """An entry back from :meth:`to_wire`'s shape, checked again (AgentConfigError)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise AgentConfigError("agent entry: expected an object with a name")
        body = {key: value for key, value in data.items() if key != "name"}
        return parse_agent_entry(data["name"], body)


def parse_agent_catalog(document: Any, source: str = "agents.json") -> dict[str, AgentEntry]:
    """The entries of a catalogue document ``{"agents": {name: entry}}``; AgentConfigError
    naming ``source`` and the bad entry otherwise."""
    if not isinstance(document, Mapping) or set(document) - {"agents"}:
        raise AgentConfigError(f'{source}: expected {{"agents": {{name: entry, ...}}}}')
    agents = document.get("agents", {})
    if not isinstance(agents, Mapping):
        raise AgentConfigError(f'{source}: "agents" must be an object of name → entry')
    if len(agents) > MAX_AGENTS:
        raise AgentConfigError(f"{source}: {len(agents)} agents; at most {MAX_AGENTS}")
    entries: dict[str, AgentEntry] = {}
    for name, body in agents.items():
        try:
            entries[name] = parse_agent_entry(name, body)
        except AgentConfigError as exc:
            raise AgentConfigError(f"{source}: {exc}") from None
    return entries


def parse_agent_entry(name: Any, body: Any) -> AgentEntry:
    """One entry; AgentConfigError whose message starts with ``agent '<name>'``."""
    if not isinstance(name, str) or not AGENT_NAME_PATTERN.fullmatch(name):
        raise AgentConfigError(
            f"agent name {str(name)[:40]!r} is invalid: 1-32 of [a-z0-9_-], starting with a "
            "letter or digit"
        )

    def bad(problem: str) -> AgentConfigError:
        return AgentConfigError(f"agent {name!r}: {problem}")

    if not isinstance(body, Mapping):
        raise bad("expected an object")
    unknown = sorted(set(body) - _ENTRY_KEYS)
    if unknown:
        raise bad(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_ENTRY_KEYS))})")
    image = body.get("image")
    if not isinstance(image, str) or not _IMAGE.fullmatch(image):
        raise bad("image must be an image reference such as ironclaw-agent-mini:latest")
    api = body.get("api")
    if api not in AGENT_APIS:
        raise bad(f"api must be one of {', '.join(AGENT_APIS)}, not {api!r}")
    model = body.get("model")
    if not isinstance(model, str) or not _MODEL.fullmatch(model):
        raise bad("model must be a model id such as claude-sonnet-5-5")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 500:
        raise bad("description must be a string of at most 500 characters")
    return AgentEntry(
        name=name,
        image=image,
        command=_command(body.get("command"), bad),
        api=api,
        key_env=_env_names(body.get("key_env"), "key_env", bad, required=True),
        base_url_env=_env_names(body.get("base_url_env"), "base_url_env", bad, required=True),
        model=model,
        model_env=_env_names(body.get("model_env", []), "model_env", bad, required=False),
        env=_static_env(body.get("env", {}), bad),
        description=description,
    )


def render_command(command: tuple[str, ...] | list[str], task: str, model: str) -> list[str]:
    """The argv to run: ``{task}`` and ``{model}`` replaced in each argument (no shell ever
    sees the task, so nothing in it is interpreted)."""
    return [
        arg.replace(TASK_PLACEHOLDER, task).replace(MODEL_PLACEHOLDER, model) for arg in command
    ]


def _command(raw: Any, bad: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        try:
            raw = shlex.split(raw)
        except ValueError as exc:
            raise bad(f"command does not parse as a command line: {exc}") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(arg, str) for arg in raw):
        raise bad("command must be a non-empty list of strings (or one command line)")
    if len(raw) > MAX_COMMAND_ARGS or any(len(arg) > MAX_ARG_CHARS for arg in raw):
        raise bad(f"command: at most {MAX_COMMAND_ARGS} arguments of {MAX_ARG_CHARS} characters")
    if any("\0" in arg for arg in raw):
        raise bad("command holds a NUL character")
    if not any(TASK_PLACEHOLDER in arg for arg in raw):
        raise bad("command must hold {task} where the job's task goes")
    if TASK_PLACEHOLDER in raw[0] or MODEL_PLACEHOLDER in raw[0]:
        raise bad("command[0] is the program: it cannot be a placeholder")
    problem = _secret_in_args(raw)
    if problem:
        raise bad(f"command {problem}: secrets never sit in the catalogue")
    return tuple(raw)


def _secret_in_args(args: list[str]) -> str | None:
    for index, arg in enumerate(args):
        problem = value_secret_problem(arg)
        if problem:
            return f"args[{index}] {problem}"
    return None


def env_name_problem(name: str) -> str | None:
    """Why an agent's entry may not set ``name``, or None."""
    if not ENV_NAME_PATTERN.fullmatch(name):
        return "must be 1-128 characters of [A-Z0-9_], not starting with a digit"
    if name in RESERVED_ENV_NAMES or name.startswith(_RESERVED_PREFIXES):
        return "is reserved"
    return None


def _env_names(raw: Any, key: str, bad: Any, *, required: bool) -> tuple[str, ...]:
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad(f"{key} must be an env name or a list of them")
    if required and not names:
        raise bad(f"{key} must name at least one variable")
    if len(names) > MAX_ENV_NAMES:
        raise bad(f"{key}: at most {MAX_ENV_NAMES} names")
    for name in names:
        problem = env_name_problem(name)
        if problem:
            raise bad(f"{key}: {name[:64]!r} {problem}")
    return tuple(dict.fromkeys(names))


def _static_env(raw: Any, bad: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping) or len(raw) > MAX_ENV_ENTRIES:
        raise bad(f"env must be an object of at most {MAX_ENV_ENTRIES} name → string")
    env: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise bad("env must map names to strings")
        problem = env_name_problem(name)
        if problem:
            raise bad(f"env: {name[:64]!r} {problem}")
        if len(value) > MAX_ENV_VALUE_CHARS or "\0" in value:
            raise bad(f"env: {name} must be at most {MAX_ENV_VALUE_CHARS} characters, no NUL")
        if is_secret_name(name) or value_secret_problem(value):
            raise bad(
                f"env: {name} looks like a secret: secrets never sit in the catalogue (the "
                "job's LLM key goes to key_env; grant other credentials to the job)"
            )
        env[name] = value
    return env
