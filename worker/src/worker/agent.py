"""The worker's agent loop: ask the model, run the tools it calls, feed the results back.

The job ends with exactly one ``POST /complete``: the model's final answer (success), or a failure
with a typed ``details.reason`` (``max_iterations``, ``deadline``, ``budget_exceeded``,
``llm_error``, ``crash``). A rejected token ends the run without reporting: the job is already
over, so there is no one to report to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.client import (
    BudgetExhausted,
    FollowUpPrompt,
    TokenRejected,
    WorkerApiClient,
    WorkerApiError,
    WorkerClientError,
    truncate_text,
)
from worker.credentials import credential_env, with_env_names
from worker.egress_env import egress_env
from worker.tools import ToolContext, ToolRegistry, default_tools, tool_environment
from worker.tools.custom import load_custom_tools
from worker.workspace_sync import WorkspaceNotReady, prepare_workspace, push_workspace

log = logging.getLogger(__name__)

DEFAULT_MAX_ITERATIONS = 50

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_TOKEN_REJECTED = 3
EXIT_CRASHED = 4
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process killed by it

# Keys of a completion answer that describe the call rather than the message; every other key is
# a provider extra (e.g. "reasoning") and goes back into the conversation untouched.
_ANSWER_META_KEYS = frozenset(
    {"content", "tool_calls", "finish_reason", "input_tokens", "output_tokens", "role"}
)


@dataclass(frozen=True)
class JobSpec:
    """What ``GET /job`` says about the job, validated."""

    job_id: str
    task: str
    max_iterations: int | None = None
    deadline: datetime | None = None

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> JobSpec:
        """Reads ``task_description`` (required), ``max_iterations`` and ``deadline`` (optional)."""
        task = body.get("task_description")
        if not isinstance(task, str) or not task.strip():
            raise ValueError("GET /job returned no task_description")
        limit = body.get("max_iterations")
        valid_limit = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
        job_id = body.get("job_id")
        return cls(
            job_id=job_id if isinstance(job_id, str) else "",
            task=task,
            max_iterations=limit if valid_limit else None,
            deadline=parse_deadline(body.get("deadline")),
        )


def parse_deadline(value: Any) -> datetime | None:
    """An ISO-8601 deadline as an aware datetime (UTC assumed when no offset is given)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"deadline must be an ISO-8601 string, got {value!r}")
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class JobResult:
    """The one result reported on ``POST /complete``."""

    success: bool
    message: str
    iterations: int
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AgentConfig:
    """How the agent runs. ``max_iterations`` applies when ``GET /job`` sets none (the
    orchestrator always does; a manual run against another server may not); ``base_env`` is the
    environment tool commands may inherit from (filtered by an allowlist)."""

    workspace: Path = Path("/workspace")
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    # The job's egress key (ironclaw_contract.job_keys): its commands' identity at the egress
    # gateway, in their HTTPS_PROXY when GET /job says the job goes out through it.
    egress_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class _Call:
    id: str
    name: str
    arguments: Any  # as the model sent it: an object or its JSON text


def build_system_prompt(workspace: Path, registry: ToolRegistry, credentials: list[str]) -> str:
    """The system message: where the agent works, its tools, and how to finish."""
    tools = "\n".join(
        f"- {spec['name']}: {_summary(spec['description'])}" for spec in registry.specs()
    )
    granted = (
        "Credentials granted to this job are set as environment variables for shell commands: "
        f"{', '.join(sorted(credentials))}. Use them through the environment; never print them.\n"
        if credentials
        else ""
    )
    return (
        "You are an autonomous software engineer working alone inside an isolated container. "
        f"The project is in {workspace}, your working directory; paths are relative to it, and "
        "absolute paths must stay inside it.\n\n"
        f"Tools:\n{tools}\n\n"
        f"{granted}"
        "Work in small verified steps: look before you change, then build and run the tests to "
        "check. Be concise. Nobody answers questions while you work: decide and proceed.\n"
        "When the task is done (or cannot be done), reply without calling any tool: a short "
        "summary of what you did and the outcome. That reply ends the job."
    )


def _summary(description: str, limit: int = 200) -> str:
    """The first line of a tool's description, short: the full text is in the tool's spec."""
    lines = description.strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def report_result(
    client: WorkerApiClient,
    success: bool,
    message: str,
    iterations: int | None,
    details: Mapping[str, Any] | None,
) -> int | None:
    """Sends the job's one result (``/complete``); None when it was accepted, else the exit
    code to end with. Shared by the worker and the Claude bridge."""
    log.info(
        "reporting %s after %s iteration(s): %s",
        "success" if success else "failure",
        iterations if iterations is not None else "?",
        truncate_text(message, 200),
    )
    try:
        client.complete_job(success, message, iterations, details)
    except TokenRejected as exc:
        log.error("result not accepted: %s", exc)
        return EXIT_TOKEN_REJECTED
    except WorkerClientError as exc:
        log.error("could not report the result: %s", exc)
        return EXIT_CRASHED
    return None


class Agent:
    """Runs one job to its single reported result.

    :meth:`run` returns the process exit code and never raises, except for
    :class:`~worker.termination.Terminated` and other BaseExceptions, which must stop the process
    without a report.
    """

    def __init__(
        self,
        client: WorkerApiClient,
        config: AgentConfig,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._client = client
        self._config = config
        self._clock = clock
        self._iterations = 0
        self._job: dict[str, Any] | None = None  # GET /job, once read

    def run(self) -> int:
        """Runs the job and reports its result once; returns the exit code."""
        crashed = False
        try:
            result = self._execute()
        except TokenRejected as exc:
            log.error("stopping without a report: %s", exc)
            return EXIT_TOKEN_REJECTED
        except Exception as exc:
            log.exception("worker crashed")
            crashed = True
            result = JobResult(
                success=False,
                message=f"worker crashed: {type(exc).__name__}: {exc}",
                iterations=self._iterations,
                details={"reason": "crash"},
            )
        return self._report(result, crashed=crashed)

    def _report(self, result: JobResult, *, crashed: bool) -> int:
        if self._job is not None:
            push_workspace(self._client, self._job, self._config.workspace)
        failed = report_result(
            self._client, result.success, result.message, result.iterations, result.details
        )
        if failed is not None:
            return failed
        if result.success:
            return EXIT_OK
        return EXIT_CRASHED if crashed else EXIT_JOB_FAILED

    def _execute(self) -> JobResult:
        raw_job = self._client.get_job()
        job = JobSpec.from_api(raw_job)
        granted = self._client.get_credentials()
        credentials = credential_env(with_env_names(granted, raw_job.get("credential_env")))
        context = ToolContext(
            workspace=self._config.workspace,
            env=tool_environment(self._config.base_env, credentials)
            | egress_env(
                raw_job,
                self._client.job_id,
                self._config.egress_key,
                self._config.base_env.get("HOME"),
            ),
            # The egress key sits in the commands' HTTPS_PROXY: an `env` must not report it.
            secrets=(*credentials.values(), self._config.egress_key),
        )
        self._job = raw_job
        try:
            prepared = prepare_workspace(
                self._client, raw_job, context.workspace, context.env, context.secrets
            )
        except WorkspaceNotReady as exc:
            return JobResult(
                success=False,
                message=str(exc),
                iterations=0,
                details={"reason": exc.reason},
            )
        if prepared is not None:
            log.info("%s", prepared)
            self._event("status", {"message": prepared})
        builtin = default_tools()
        custom = load_custom_tools(
            self._client.get_tools(),
            context.workspace,
            {name: value for name, value in granted.items() if isinstance(value, str)},
            reserved_names=[tool.name for tool in builtin],
        )
        try:
            for note in custom.notes:
                self._event("status", {"message": note})
            registry = ToolRegistry(context, [*builtin, *custom.tools])
            return self._converse(job, registry, list(credentials))
        finally:
            custom.close()

    def _converse(self, job: JobSpec, registry: ToolRegistry, credentials: list[str]) -> JobResult:
        """The model ↔ tools loop, until a final answer or a limit."""
        limit = job.max_iterations or self._config.max_iterations
        specs = registry.specs()
        log.info(
            "job %s: at most %d iterations, deadline %s, credentials: %s, tools: %s",
            job.job_id or self._client.job_id,
            limit,
            job.deadline.isoformat() if job.deadline else "none",
            ", ".join(sorted(credentials)) or "none",
            ", ".join(registry.names),
        )
        messages: list[dict[str, Any]] = [
            {
                "role": "system",
                "content": build_system_prompt(registry.context.workspace, registry, credentials),
            },
            {"role": "user", "content": job.task},
        ]
        finishing = False  # a follow-up said done: finish at the next final answer
        poll_first = False  # tools just ran: look for a follow-up before the next call
        while True:
            if job.deadline is not None and self._clock() >= job.deadline:
                return JobResult(
                    success=False,
                    message=f"deadline {job.deadline.isoformat()} passed after "
                    f"{self._iterations} iteration(s) without a final answer",
                    iterations=self._iterations,
                    details={"reason": "deadline"},
                )
            if self._iterations >= limit:
                return JobResult(
                    success=False,
                    message=f"max iterations ({limit}) reached without a final answer",
                    iterations=self._iterations,
                    details={"reason": "max_iterations"},
                )
            if poll_first and not finishing:
                finishing = self._take_follow_up(messages)
            self._iterations += 1
            iteration = self._iterations
            self._status(f"iteration {iteration}", iteration)
            try:
                answer = self._client.complete_with_tools(messages, specs)
            except BudgetExhausted as exc:
                # The orchestrator refused the call by the job's policy (its refusal code says
                # which): no later call can succeed, so the job ends here, typed.
                return JobResult(
                    success=False,
                    message=f"LLM call refused: {exc.message}",
                    iterations=iteration,
                    details={"reason": "budget_exceeded", "refusal": exc.refusal},
                )
            except WorkerApiError as exc:
                return JobResult(
                    success=False,
                    message=f"LLM call failed: {exc}",
                    iterations=iteration,
                    details={"reason": "llm_error", "status": exc.status},
                )
            content = answer.get("content") if isinstance(answer.get("content"), str) else None
            calls = _tool_calls(answer, iteration)
            messages.append(_assistant_message(answer, content, calls))
            reasoning = answer.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self._event("reasoning", {"text": reasoning})
            if content:
                self._event("message", {"role": "assistant", "content": content})
            if calls:
                for call in calls:
                    messages.append(self._run_tool(registry, call))
                poll_first = True
                continue
            if not finishing:
                prompt = self._poll_prompt()
                if prompt is not None and prompt.content:
                    messages.append({"role": "user", "content": prompt.content})
                    finishing = prompt.done
                    poll_first = False
                    continue
            return JobResult(
                success=True,
                message=content or "(finished without a summary)",
                iterations=iteration,
            )

    def _run_tool(self, registry: ToolRegistry, call: _Call) -> dict[str, Any]:
        self._event(
            "tool_use",
            {"tool_name": call.name, "tool_use_id": call.id, "input": call.arguments},
        )
        result = registry.call(call.name, call.arguments)
        log.info("tool %s (%s)%s", call.name, call.id, " failed" if result.is_error else "")
        self._event(
            "tool_result",
            {
                "tool_name": call.name,
                "tool_use_id": call.id,
                "output": result.output,
                "is_error": result.is_error,
            },
        )
        return {"role": "tool", "tool_call_id": call.id, "content": result.output}

    def _take_follow_up(self, messages: list[dict[str, Any]]) -> bool:
        """Appends a queued follow-up before the next LLM call; returns whether it said done."""
        prompt = self._poll_prompt()
        if prompt is None:
            return False
        if prompt.content:
            messages.append({"role": "user", "content": prompt.content})
        return prompt.done

    def _poll_prompt(self) -> FollowUpPrompt | None:
        try:
            prompt = self._client.get_prompt()
        except WorkerApiError as exc:
            log.warning("could not poll for a follow-up prompt: %s", exc)
            return None
        if prompt is not None:
            log.info("follow-up prompt received (done=%s)", prompt.done)
        return prompt

    def _status(self, message: str, iteration: int) -> None:
        # Progress reports are best effort: a rejected one must not end the job. A 401 is not a
        # WorkerApiError and still stops everything.
        try:
            self._client.post_status(message, iteration)
        except WorkerApiError as exc:
            log.warning("status not accepted: %s", exc)

    def _event(self, event_type: str, data: Mapping[str, Any]) -> None:
        try:
            self._client.post_event(event_type, data)
        except WorkerApiError as exc:
            log.warning("%s event not accepted: %s", event_type, exc)


def _tool_calls(answer: Mapping[str, Any], iteration: int) -> list[_Call]:
    raw_calls = answer.get("tool_calls")
    if not isinstance(raw_calls, list):
        return []
    calls: list[_Call] = []
    for index, raw in enumerate(raw_calls):
        if not isinstance(raw, Mapping):
            continue
        call_id = raw.get("id")
        name = raw.get("name")
        calls.append(
            _Call(
                # An id is needed to pair the result with the call; providers normally send one.
                id=call_id if isinstance(call_id, str) and call_id else f"call_{iteration}_{index}",
                name=name if isinstance(name, str) else "",
                arguments=raw.get("arguments", {}),
            )
        )
    return calls


def _assistant_message(
    answer: Mapping[str, Any], content: str | None, calls: list[_Call]
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": call.id, "name": call.name, "arguments": call.arguments} for call in calls
        ]
    message.update((k, v) for k, v in answer.items() if k not in _ANSWER_META_KEYS)
    return message
