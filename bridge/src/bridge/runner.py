"""The bridge's job loop: one ``claude -p`` session, follow-ups that resume it, one result.

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
model call: budget or model allowlist), ``deadline``, ``claude_error`` (the CLI reported an
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
from ironclaw_contract.claude import (
    DEFAULT_ALLOWED_TOOLS,
    UnknownToolError,
    map_tool_names,
    parse_tool_list,
)
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
from worker.tools import tool_environment

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sonnet"
DEFAULT_MAX_TURNS = 50
DEFAULT_IDLE_TIMEOUT_S = 600.0
# Environment of the CLI besides the tools' safe set: its own settings (ANTHROPIC_BASE_URL, the
# job token as ANTHROPIC_API_KEY, model aliases, CLAUDE_CODE_*). Credentials may not set them.
CLAUDE_ENV_PREFIXES = ("ANTHROPIC_", "CLAUDE_")
# The orchestrator's per-job route words its policy refusals so (see anthropic_route): a 429
# "... budget exhausted: ..." or a 403 "... is not allowed for this job ...".
_BUDGET_PHRASES = ("budget exhausted", "not allowed for this job")
MAX_STDERR_EVENTS = 200
STDERR_TAIL_CHARS = 2000


class BridgeConfigError(Exception):
    """A setting the bridge cannot run with; the message names it."""


@dataclass(frozen=True)
class BridgeConfig:
    """How the bridge runs a job. ``None`` means: take it from ``GET /job`` (then the
    environment, then the default)."""

    workspace: Path = Path("/workspace")
    claude_bin: str = "claude"
    model: str | None = None
    max_turns: int | None = None
    allowed_tools: str | None = None
    wait_for_prompts: bool | None = None
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    poll_interval_s: float = 1.0
    # The bridge reports a passed deadline itself, a little before the orchestrator's reaper
    # would end the job without its result.
    deadline_margin_s: float = 5.0
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


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
    base_env: Mapping[str, str], credentials: Mapping[str, str], home: Path
) -> dict[str, str]:
    """The CLI's environment: the tools' safe variables, the granted credentials, the Claude
    settings, a writable ``HOME``. Never ``IRONCLAW_*`` (the worker token above all): the CLI
    has the job token only as ``ANTHROPIC_API_KEY``, which the orchestrator's route accepts."""
    granted = {}
    for name, value in credentials.items():
        if name.startswith(CLAUDE_ENV_PREFIXES):
            log.warning("credential env name %s skipped: it would change Claude's settings", name)
            continue
        granted[name] = value
    env = tool_environment(base_env, granted)
    env.update(
        (name, value)
        for name, value in base_env.items()
        if name.startswith(CLAUDE_ENV_PREFIXES) and not name.startswith("IRONCLAW_")
    )
    env["HOME"] = str(home)
    env.setdefault("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
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


def is_budget_refusal(result: SessionResult) -> bool:
    """Whether the CLI stopped because the orchestrator refused a call by the job's policy."""
    if result.api_error_status not in (403, 429):
        return False
    text = " ".join((result.text, *result.errors)).lower()
    return any(phrase in text for phrase in _BUDGET_PHRASES)


def run_failure(run: RunOutcome, max_turns: int) -> tuple[str, str] | None:
    """``(reason, message)`` when a run failed, ``None`` when it succeeded."""
    if run.timed_out:
        return "deadline", "the job's deadline passed while Claude Code was working"
    result = run.result
    if result is not None:
        if result.subtype == "error_max_turns":
            turns = f"{max_turns} turn{'' if max_turns == 1 else 's'}"
            return "max_turns", f"Claude Code reached its maximum of {turns}"
        if not result.succeeded:
            text = result.text or "; ".join(result.errors) or result.subtype
            if is_budget_refusal(result):
                return "budget_exceeded", text
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
        task = job.get("task_description")
        if not isinstance(task, str) or not task.strip():
            raise BridgeConfigError("GET /job returned no task_description")
        model = self._setting(self._config.model, job.get("claude_model"), "CLAUDE_CODE_MODEL")
        model = model or DEFAULT_MODEL
        max_turns = self._max_turns(job.get("claude_max_turns"))
        tools = self._tools(job.get("claude_allowed_tools"))
        wait = self._config.wait_for_prompts or bool(job.get("wait_for_prompts", False))
        deadline = parse_deadline(job.get("deadline"))
        if deadline is not None:
            deadline -= timedelta(seconds=self._config.deadline_margin_s)
        credentials = credential_env(
            with_env_names(self._client.get_credentials(), job.get("credential_env"))
        )
        home = writable_home(self._config.base_env)
        env = child_environment(self._config.base_env, credentials, home)
        log.info(
            "job %s: model %s, max %d turns, tools %s, %s, credentials: %s",
            self._client.job_id,
            model,
            max_turns,
            ",".join(tools),
            "waits for follow-ups" if wait else "one session",
            ", ".join(sorted(credentials)) or "none",
        )

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
        return self._follow_ups(run, max_turns, deadline)

    def _follow_ups(
        self,
        run: Callable[[str, str | None], RunOutcome],
        max_turns: int,
        deadline: datetime | None,
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
                if self._monotonic() - idle_since >= self._config.idle_timeout_s:
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

    # -- settings ----------------------------------------------------------------------------

    def _setting(self, flag: str | None, from_job: Any, env_name: str) -> str:
        if flag:
            return flag
        if isinstance(from_job, str) and from_job.strip():
            return from_job.strip()
        return self._config.base_env.get(env_name, "").strip()

    def _max_turns(self, from_job: Any) -> int:
        value = self._config.max_turns
        if value is None and isinstance(from_job, int) and not isinstance(from_job, bool):
            value = from_job
        if value is None:
            raw = self._config.base_env.get("CLAUDE_CODE_MAX_TURNS", "").strip()
            try:
                value = int(raw) if raw else DEFAULT_MAX_TURNS
            except ValueError:
                raise BridgeConfigError(
                    f"CLAUDE_CODE_MAX_TURNS={raw!r} is not an integer"
                ) from None
        if value < 1:
            raise BridgeConfigError(f"max turns must be a positive integer, got {value}")
        return value

    def _tools(self, from_job: Any) -> tuple[str, ...]:
        try:
            if self._config.allowed_tools:
                return parse_tool_list(self._config.allowed_tools)
            if isinstance(from_job, list) and from_job:
                return map_tool_names(str(name) for name in from_job)
            raw = self._config.base_env.get("CLAUDE_CODE_ALLOWED_TOOLS", "")
            return parse_tool_list(raw) if raw.strip() else DEFAULT_ALLOWED_TOOLS
        except UnknownToolError as exc:
            raise BridgeConfigError(f"CLAUDE_CODE_ALLOWED_TOOLS: {exc}") from None

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
        result = outcome.result
        return self._failure(
            reason,
            message,
            exit_code=outcome.exit_code,
            stderr_tail=outcome.stderr_tail or None,
            subtype=result.subtype if result else None,
            terminal_reason=(result.terminal_reason or None) if result else None,
            api_error_status=result.api_error_status if result else None,
        )

    def _report(self, outcome: JobOutcome, exit_code: int) -> int:
        failed = report_result(
            self._client, outcome.success, outcome.message, outcome.iterations, outcome.details
        )
        return exit_code if failed is None else failed

    # -- worker API, best effort ----------------------------------------------------------

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
