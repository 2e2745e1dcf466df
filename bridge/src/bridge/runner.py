"""The bridge's job loop: one ``claude -p`` session, follow-ups that resume it, one result.

Everything about the job comes from ``GET /job`` (the container's environment holds only its
identity): the task, the deadline, whether it waits for prompts, and under ``claude`` the CLI's
model, turns, tools, model aliases, idle timeout and the Anthropic endpoint and key it calls.
The CLI gets the job's LLM key as ``ANTHROPIC_API_KEY``, which opens only the job's Anthropic
route; the worker token stays with the bridge, out of reach of the commands the agent runs.

A job runs ``claude -p --output-format stream-json --verbose --max-turns N --model M --tools T
--allowedTools T`` in the workspace, the prompt on stdin (no shell, no length limit of argv,
no option injection from a task starting with ``-``, and the task is not shown by ``ps``).
Every output line becomes a job event as it arrives. By default the job then completes with
that session's result; a job that waits for prompts polls ``GET /prompt`` and resumes the same
session (``--resume <session_id>``) for each one until a prompt says ``done``, nothing arrives
for the idle timeout, or the deadline passes. Exactly one ``POST /complete`` ends it, with
``details`` = ``{session_id, num_turns, duration_ms, total_cost_usd, usage, runs, ended}`` and,
on failure, a typed ``reason``:

``max_turns`` (the CLI's ``error_max_turns``), ``budget_exceeded`` (the orchestrator refused a
model call: budget or model allowlist; the bridge asks ``GET /job``'s ``llm_refusal`` after a
failed run, never the CLI's wording), ``deadline``, ``claude_error`` (the CLI reported an
error), ``claude_exit`` (it exited non-zero or without a result; with the exit code and the tail
of its stderr), ``invalid_config`` and ``crash``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bridge.process import ClaudeProcess, reap_orphans
from bridge.stream import USAGE_KEYS, BridgeEvent, SessionResult, StreamJsonMapper
from ironclaw_contract import container_env
from ironclaw_contract.claude import (
    CLI_MODEL_ALIASES,
    UnknownToolError,
    map_tool_names,
    parse_tool_list,
)
from ironclaw_contract.worker_api import LLM_REFUSALS
from worker.agent import (
    EXIT_CRASHED,
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_TOKEN_REJECTED,
    EXIT_USAGE,
    parse_deadline,
    report_result,
)
from worker.client import (
    FollowUpPrompt,
    TokenRejected,
    WorkerApiClient,
    WorkerApiError,
    WorkerClientError,
    truncate_text,
)
from worker.credentials import credential_env, with_env_names
from worker.egress_env import egress_env
from worker.main import mask_in_logs
from worker.tools import tool_environment
from worker.workspace_sync import WorkspaceNotReady, prepare_workspace, push_workspace

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT_S = 600.0
# The CLI's own settings (ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, model aliases, CLAUDE_CODE_*):
# the bridge sets them from GET /job; a credential may not.
CLAUDE_ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE_")
# Run failures that a refusal of the orchestrator can be behind (the CLI stops on one).
_REFUSABLE = frozenset({"claude_error", "claude_exit"})
MAX_STDERR_EVENTS = 200
STDERR_TAIL_CHARS = 2000


class BridgeConfigError(Exception):
    """A setting the bridge cannot run with; the message names it."""


@dataclass(frozen=True)
class BridgeConfig:
    """How the bridge runs a job. ``None`` means: as ``GET /job`` says; a value overrides the
    job (the command line's flags, for manual use: the orchestrator passes none)."""

    workspace: Path = Path("/workspace")
    claude_bin: str = "claude"
    model: str | None = None
    max_turns: int | None = None
    allowed_tools: str | None = None
    wait_for_prompts: bool | None = None
    idle_timeout_s: float | None = None
    poll_interval_s: float = 1.0
    # The bridge reports a passed deadline itself, a little before the orchestrator's reaper
    # would end the job without its result.
    deadline_margin_s: float = 5.0
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    # The job's LLM key, derived from the worker token (ironclaw_contract.job_keys): the only
    # credential the CLI gets, unless the operator put the real one in GET /job.
    llm_key: str = field(default="", repr=False)
    # Its egress key: the identity of the CLI's commands at the egress gateway.
    egress_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class JobSettings:
    """How this job's CLI runs, from ``GET /job`` (and the overrides of :class:`BridgeConfig`).
    ``cli_env`` holds the key the CLI calls the model with: never in a repr."""

    task: str
    model: str
    max_turns: int
    tools: tuple[str, ...]
    wait_for_prompts: bool
    idle_timeout_s: float
    deadline: datetime | None
    cli_env: Mapping[str, str] = field(repr=False)


def job_settings(job: Mapping[str, Any], config: BridgeConfig) -> JobSettings:
    """Reads the body of ``GET /job``; raises :class:`BridgeConfigError` naming what is
    missing or wrong. The deadline is returned as the orchestrator set it."""
    task = job.get("task_description")
    if not isinstance(task, str) or not task.strip():
        raise BridgeConfigError("GET /job returned no task_description")
    claude = job.get("claude")
    if not isinstance(claude, Mapping):
        raise BridgeConfigError("GET /job has no claude settings: this is not a Claude Code job")
    model = config.model or claude.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BridgeConfigError("GET /job: claude.model is missing")
    max_turns = config.max_turns if config.max_turns is not None else claude.get("max_turns")
    if not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1:
        raise BridgeConfigError(f"max turns must be a positive integer, got {max_turns!r}")
    idle = config.idle_timeout_s
    if idle is None:
        idle = claude.get("idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or idle <= 0:
        raise BridgeConfigError(f"the idle timeout must be a positive number, got {idle!r}")
    try:
        deadline = parse_deadline(job.get("deadline"))
    except ValueError as exc:
        raise BridgeConfigError(f"GET /job: deadline: {exc}") from None
    return JobSettings(
        task=task,
        model=model.strip(),
        max_turns=max_turns,
        tools=_tools(config.allowed_tools, claude.get("allowed_tools")),
        wait_for_prompts=bool(config.wait_for_prompts or job.get("wait_for_prompts", False)),
        idle_timeout_s=float(idle),
        deadline=deadline,
        cli_env=cli_settings_env(claude, config.llm_key),
    )


def cli_settings_env(claude: Mapping[str, Any], llm_key: str = "") -> dict[str, str]:
    """The CLI's own settings from ``GET /job``'s ``claude``: where it calls the model
    (``ANTHROPIC_BASE_URL``), with which key (the job's ``llm_key`` as ``ANTHROPIC_API_KEY``,
    or, when the operator opted in, the real key or ``CLAUDE_CODE_OAUTH_TOKEN``), which ids its
    model aliases stand for, and no traffic but the model's."""
    env = {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    base_url = claude.get("base_url")
    if isinstance(base_url, str) and base_url:
        env["ANTHROPIC_BASE_URL"] = base_url
    api_key = claude.get("api_key")
    oauth_token = claude.get("oauth_token")
    if isinstance(api_key, str) and api_key:
        env["ANTHROPIC_API_KEY"] = api_key
    elif isinstance(oauth_token, str) and oauth_token:
        env["CLAUDE_CODE_OAUTH_TOKEN"] = oauth_token
    elif llm_key:
        env["ANTHROPIC_API_KEY"] = llm_key
    else:
        raise BridgeConfigError("the CLI has no Anthropic key: neither the job's nor GET /job's")
    aliases = claude.get("model_aliases")
    for alias, model in aliases.items() if isinstance(aliases, Mapping) else ():
        # Only the CLI's own aliases: anything else would be an arbitrary variable name.
        if alias in CLI_MODEL_ALIASES and isinstance(model, str) and model:
            env[f"ANTHROPIC_DEFAULT_{alias.upper()}_MODEL"] = model
    return env


def _tools(flag: str | None, from_job: Any) -> tuple[str, ...]:
    try:
        if flag:
            return parse_tool_list(flag)
        if isinstance(from_job, list):
            return map_tool_names(str(name) for name in from_job)
    except UnknownToolError as exc:
        raise BridgeConfigError(f"allowed tools: {exc}") from None
    raise BridgeConfigError("GET /job: claude.allowed_tools is missing")


@dataclass(frozen=True)
class RunOutcome:
    """How one ``claude`` run ended."""

    result: SessionResult | None
    exit_code: int
    stderr_tail: str = ""
    timed_out: bool = False


@dataclass(frozen=True)
class JobOutcome:
    """The one result the bridge reports."""

    success: bool
    message: str
    iterations: int
    details: Mapping[str, Any]


@dataclass
class SessionTotals:
    """The job's numbers over all its runs (a follow-up adds to them)."""

    session_id: str = ""
    num_turns: int = 0
    duration_ms: int = 0
    total_cost_usd: float = 0.0
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_KEYS, 0))
    runs: int = 0
    last_text: str = ""

    def add(self, result: SessionResult | None) -> None:
        self.runs += 1
        if result is None:
            return
        self.session_id = result.session_id or self.session_id
        self.num_turns += result.num_turns
        self.duration_ms += result.duration_ms
        self.total_cost_usd += result.total_cost_usd
        for key in USAGE_KEYS:
            self.usage[key] += result.usage.get(key, 0)
        if result.text:
            self.last_text = result.text

    def details(self, **extra: Any) -> dict[str, Any]:
        details: dict[str, Any] = {
            "session_id": self.session_id,
            "num_turns": self.num_turns,
            "duration_ms": self.duration_ms,
            "total_cost_usd": round(self.total_cost_usd, 6),
            "usage": dict(self.usage),
            "runs": self.runs,
        }
        details.update((key, value) for key, value in extra.items() if value is not None)
        return details


def claude_argv(
    claude_bin: str,
    *,
    model: str,
    max_turns: int,
    tools: tuple[str, ...],
    resume: str | None = None,
) -> list[str]:
    """The CLI's argv (the prompt goes to stdin). ``--tools`` limits the tools the model is
    offered to the granted ones, ``--allowedTools`` lets them run without a permission prompt."""
    names = ",".join(tools)
    argv = [
        claude_bin,
        "-p",
        "--output-format",
        "stream-json",
        "--verbose",
        "--max-turns",
        str(max_turns),
        "--model",
        model,
        "--tools",
        names,
        "--allowedTools",
        names,
    ]
    if resume:
        argv += ["--resume", resume]
    return argv


def child_environment(
    base_env: Mapping[str, str],
    credentials: Mapping[str, str],
    home: Path,
    cli_env: Mapping[str, str],
) -> dict[str, str]:
    """The CLI's environment: the tools' safe variables, the granted credentials, the CLI's
    settings from ``GET /job`` (:func:`cli_settings_env`), a writable ``HOME``. Nothing else
    of the bridge's own environment: never ``IRONCLAW_*``, the worker token above all. The CLI
    calls the model with the job's LLM key, which opens nothing but the job's Anthropic route."""
    granted = {}
    for name, value in credentials.items():
        if name.startswith(CLAUDE_ENV_PREFIXES):
            log.warning("credential env name %s skipped: it would change Claude's settings", name)
            continue
        granted[name] = value
    env = tool_environment(base_env, granted)
    env.update(cli_env)
    env["HOME"] = str(home)
    return env


def writable_home(env: Mapping[str, str]) -> Path:
    """``$HOME`` with a writable ``.claude`` (sessions live there), else a private directory
    under the temp dir. The project's own ``.claude`` is never touched."""
    candidates = [Path(env["HOME"])] if env.get("HOME") else []
    candidates.append(Path(tempfile.gettempdir()) / f"ironclaw-home-{os.getuid()}")
    for home in candidates:
        try:
            (home / ".claude").mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(home / ".claude", os.W_OK | os.X_OK) and os.access(home, os.W_OK):
            return home
    raise BridgeConfigError("no writable HOME for Claude Code: set HOME to a writable directory")


def refused_failure(refusal: str, run: RunOutcome) -> tuple[str, str]:
    """The ``budget_exceeded`` failure of a run that stopped after the orchestrator refused a
    model call by the job's policy (``refusal``, from ``GET /job``). The CLI's own words, when
    it has some, stay in the message for a person to read."""
    result = run.result
    said = (result.text or "; ".join(result.errors)) if result is not None else ""
    message = f"the job's LLM policy refused a model call ({refusal})"
    return "budget_exceeded", f"{message}: {said}" if said else message


def run_failure(run: RunOutcome, max_turns: int) -> tuple[str, str] | None:
    """``(reason, message)`` when a run failed, ``None`` when it succeeded. Whether a failure
    was a refusal of the orchestrator is not read from the CLI's output: see
    :func:`refused_failure`."""
    if run.timed_out:
        return "deadline", "the job's deadline passed while Claude Code was working"
    result = run.result
    if result is not None:
        if result.subtype == "error_max_turns":
            turns = f"{max_turns} turn{'' if max_turns == 1 else 's'}"
            return "max_turns", f"Claude Code reached its maximum of {turns}"
        if not result.succeeded:
            text = result.text or "; ".join(result.errors) or result.subtype
            return "claude_error", f"Claude Code failed ({result.subtype}): {text}"
        if run.exit_code != 0:
            return "claude_exit", f"claude reported success but exited with {_exit(run)}"
        return None
    tail = run.stderr_tail.strip().splitlines()
    said = f": {tail[-1]}" if tail else ""
    if run.exit_code != 0:
        return "claude_exit", f"claude exited with {_exit(run)} without a result{said}"
    return "claude_exit", f"claude exited without a result{said}"


def _exit(run: RunOutcome) -> str:
    if run.exit_code < 0:
        return f"signal {-run.exit_code}"
    return f"code {run.exit_code}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ClaudeBridge:
    """Runs one Claude Code job to its single reported result.

    :meth:`run` returns the process exit code and never raises, except for
    :class:`~worker.termination.Terminated` (SIGTERM: the child is stopped on the way out and
    nothing is reported; the orchestrator already ended the job).
    """

    def __init__(
        self,
        client: WorkerApiClient,
        config: BridgeConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._config = config
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._totals = SessionTotals()
        self._tool_names: dict[str, str] = {}
        self._stderr_events = 0
        self._stderr_lock = threading.Lock()
        self._job: dict[str, Any] | None = None  # GET /job, once read

    def run(self) -> int:
        """Runs the job and reports its result once; returns the exit code."""
        exit_code = EXIT_JOB_FAILED
        try:
            outcome = self._execute()
        except TokenRejected as exc:
            log.error("stopping without a report: %s", exc)
            return EXIT_TOKEN_REJECTED
        except BridgeConfigError as exc:
            log.error("cannot run: %s", exc)
            exit_code = EXIT_USAGE
            outcome = self._failure("invalid_config", str(exc))
        except Exception as exc:
            log.exception("bridge crashed")
            exit_code = EXIT_CRASHED
            outcome = self._failure("crash", f"bridge crashed: {type(exc).__name__}: {exc}")
        return self._report(outcome, EXIT_OK if outcome.success else exit_code)

    # -- the job -----------------------------------------------------------------------------

    def _execute(self) -> JobOutcome:
        job = self._client.get_job()
        settings = job_settings(job, self._config)
        for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"):
            mask_in_logs(settings.cli_env.get(name, ""))
        model, max_turns, tools = settings.model, settings.max_turns, settings.tools
        wait = settings.wait_for_prompts
        deadline = settings.deadline
        if deadline is not None:
            deadline -= timedelta(seconds=self._config.deadline_margin_s)
        credentials = credential_env(
            with_env_names(self._client.get_credentials(), job.get("credential_env"))
        )
        home = writable_home(self._config.base_env)
        env = child_environment(self._config.base_env, credentials, home, settings.cli_env)
        # The CLI (Node) calls the orchestrator's Anthropic route: NODE_EXTRA_CA_CERTS names a
        # bundle in the private $HOME tmpfs holding the orchestrator's CA.
        env |= egress_env(
            job,
            self._client.job_id,
            self._config.egress_key,
            str(home),
            orchestrator_ca_pem=self._config.base_env.get(container_env.ORCHESTRATOR_CA),
        )
        self._job = job
        secrets = (*credentials.values(), self._config.egress_key)
        try:
            prepared = prepare_workspace(self._client, job, self._config.workspace, env, secrets)
        except WorkspaceNotReady as exc:
            return self._failure(exc.reason, str(exc))
        if prepared is not None:
            self._status(prepared)
        log.info(
            "job %s: model %s, max %d turns, tools %s, %s, credentials: %s",
            self._client.job_id,
            model,
            max_turns,
            ",".join(tools),
            "waits for follow-ups" if wait else "one session",
            ", ".join(sorted(credentials)) or "none",
        )
        task = settings.task

        def run(prompt: str, resume: str | None) -> RunOutcome:
            argv = claude_argv(
                self._config.claude_bin,
                model=model,
                max_turns=max_turns,
                tools=tools,
                resume=resume,
            )
            return self._run_claude(argv, prompt, env, deadline)

        self._status(
            f"starting Claude Code: model {model}, at most {max_turns} turns, "
            f"tools {', '.join(tools)}"
        )
        outcome = run(task, None)
        failure = run_failure(outcome, max_turns)
        if failure is not None:
            return self._failed_run(failure, outcome)
        if not wait:
            return self._success("result")
        return self._follow_ups(run, max_turns, deadline, settings.idle_timeout_s)

    def _follow_ups(
        self,
        run: Callable[[str, str | None], RunOutcome],
        max_turns: int,
        deadline: datetime | None,
        idle_timeout_s: float,
    ) -> JobOutcome:
        idle_since = self._monotonic()
        self._status("waiting for a follow-up prompt")
        while True:
            if deadline is not None and self._clock() >= deadline:
                return self._failure(
                    "deadline", "the job's deadline passed while waiting for a follow-up prompt"
                )
            prompt = self._poll_prompt()
            if prompt is None:
                if self._monotonic() - idle_since >= idle_timeout_s:
                    return self._success("idle_timeout")
                self._sleep(self._config.poll_interval_s)
                continue
            if prompt.content.strip():
                self._status(f"follow-up prompt: resuming session {self._totals.session_id}")
                outcome = run(prompt.content, self._totals.session_id or None)
                failure = run_failure(outcome, max_turns)
                if failure is not None:
                    return self._failed_run(failure, outcome)
                idle_since = self._monotonic()
            if prompt.done:
                return self._success("done")
            self._status("waiting for a follow-up prompt")

    def _run_claude(
        self, argv: list[str], prompt: str, env: Mapping[str, str], deadline: datetime | None
    ) -> RunOutcome:
        if deadline is not None and self._clock() >= deadline:
            return RunOutcome(result=None, exit_code=0, timed_out=True)
        mapper = StreamJsonMapper(self._tool_names)
        process = ClaudeProcess(
            argv,
            cwd=self._config.workspace,
            env=env,
            stdin_text=prompt,
            on_stderr=self._stderr_line,
        )
        timer: threading.Timer | None = None
        try:
            if deadline is not None:
                remaining = max(0.0, (deadline - self._clock()).total_seconds())
                timer = threading.Timer(remaining, process.stop, args=("deadline passed",))
                timer.daemon = True
                timer.start()
            for line in process.lines():
                for event in mapper.feed(line):
                    self._event(event)
            exit_code = process.wait()
        finally:
            if timer is not None:
                timer.cancel()
            process.close()
            reap_orphans()
        self._tool_names = mapper.tool_names
        result = mapper.result
        self._totals.add(result)
        if result is not None:
            self._status(
                f"session {result.session_id} finished: {result.subtype}"
                f"{' (error)' if result.is_error else ''}, {result.num_turns} turn(s)"
            )
        return RunOutcome(
            result=result,
            exit_code=exit_code,
            stderr_tail=truncate_text(process.stderr_tail[-STDERR_TAIL_CHARS:], STDERR_TAIL_CHARS),
            timed_out=process.stopped_by == "deadline passed",
        )

    # -- results -----------------------------------------------------------------------------

    def _success(self, ended: str) -> JobOutcome:
        totals = self._totals
        return JobOutcome(
            success=True,
            message=totals.last_text or "(Claude Code finished without a summary)",
            iterations=totals.num_turns,
            details=totals.details(ended=ended),
        )

    def _failure(self, reason: str, message: str, **extra: Any) -> JobOutcome:
        return JobOutcome(
            success=False,
            message=message,
            iterations=self._totals.num_turns,
            details=self._totals.details(reason=reason, **extra),
        )

    def _failed_run(self, failure: tuple[str, str], outcome: RunOutcome) -> JobOutcome:
        reason, message = failure
        refusal = self._llm_refusal() if reason in _REFUSABLE else None
        if refusal is not None:
            reason, message = refused_failure(refusal, outcome)
        result = outcome.result
        return self._failure(
            reason,
            message,
            refusal=refusal,
            exit_code=outcome.exit_code,
            stderr_tail=outcome.stderr_tail or None,
            subtype=result.subtype if result else None,
            terminal_reason=(result.terminal_reason or None) if result else None,
            api_error_status=result.api_error_status if result else None,
        )

    def _report(self, outcome: JobOutcome, exit_code: int) -> int:
        if self._job is not None:
            push_workspace(self._client, self._job, self._config.workspace)
        failed = report_result(
            self._client, outcome.success, outcome.message, outcome.iterations, outcome.details
        )
        return exit_code if failed is None else failed

    # -- worker API, best effort ----------------------------------------------------------

    def _llm_refusal(self) -> str | None:
        """The job's LLM refusal as the orchestrator recorded it (``GET /job``), when it is one
        that ends the job's model calls: the CLI stops on such a refusal, and how it words it
        is its own business."""
        try:
            refusal = self._client.get_job().get("llm_refusal")
        except WorkerApiError as exc:
            log.warning("could not ask why the run failed: %s", exc)
            return None
        return refusal if isinstance(refusal, str) and refusal in LLM_REFUSALS else None

    def _poll_prompt(self) -> FollowUpPrompt | None:
        try:
            return self._client.get_prompt()
        except WorkerApiError as exc:
            log.warning("could not poll for a follow-up prompt: %s", exc)
            return None

    def _status(self, message: str) -> None:
        log.info("%s", message)
        try:
            self._client.post_status(message, self._totals.num_turns)
        except WorkerApiError as exc:
            log.warning("status not accepted: %s", exc)

    def _event(self, event: BridgeEvent) -> None:
        try:
            self._client.post_event(event.event_type, event.data)
        except WorkerApiError as exc:
            log.warning("%s event not accepted: %s", event.event_type, exc)

    def _stderr_line(self, line: str) -> None:
        # Called from the stderr reader thread; the client serialises its calls.
        log.info("claude stderr: %s", line)
        with self._stderr_lock:
            self._stderr_events += 1
            count = self._stderr_events
        if count > MAX_STDERR_EVENTS:
            return
        message = f"claude stderr: {line}"
        if count == MAX_STDERR_EVENTS:
            message = "claude stderr: (further lines are only in the container log)"
        with contextlib.suppress(WorkerClientError):
            self._event(BridgeEvent("status", {"message": message}))
