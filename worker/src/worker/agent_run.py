"""``ironclaw-agent-run``: the entrypoint of an agent-mode container.

The orchestrator starts it, whatever the image's own entrypoint, with the job's identity in the
environment (``ironclaw_contract.container_env``). It reads the job's catalogue entry from
``GET /job`` (``agent``), renders the entry's command with the task and the model, and runs it in
``/workspace`` with the variables the entry names: ``key_env`` = the job's LLM key (derived here
from the worker token; it opens only the job's own model route), ``base_url_env`` = that route,
``model_env`` = the model, plus the entry's settings, the job's credentials and, behind the
egress gateway, the proxy variables. The worker token never reaches the command.

The command's output (stdout and stderr, merged) goes to the container log line by line and to
the job's events in batches. When the command exits 0 the job completes with its last lines as
the message; any other exit code becomes the container's, and the orchestrator ends the job
EXITED with it (and keeps the log tail). A job that ended first (its deadline, an operator's
stop) is stopped from the outside: SIGTERM stops the command and everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ironclaw_contract import container_env
from ironclaw_contract.agent_catalog import env_name_problem, render_command
from ironclaw_contract.job_keys import egress_key_for, llm_key_for
from ironclaw_contract.secret_patterns import mask_secrets
from worker.agent import (
    EXIT_CRASHED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_TOKEN_REJECTED,
    EXIT_USAGE,
    report_result,
)
from worker.client import TokenRejected, WorkerApiClient, WorkerClientError
from worker.credentials import credential_env, with_env_names
from worker.egress_env import egress_env
from worker.main import (
    DEFAULT_WORKSPACE,
    JOB_ID_VAR,
    TOKEN_VAR,
    URL_VAR,
    WORKSPACE_VAR,
    UsageError,
    configure_logging,
    make_undumpable,
    mask_in_logs,
)
from worker.termination import Terminated, sigterm_raises_terminated, termination_deferred
from worker.workspace_sync import WorkspaceNotReady, prepare_workspace, push_workspace

log = logging.getLogger("agent-run")

# Output is sent as one event per batch: at most this often, or when this much has gathered.
EVENT_INTERVAL_S = 0.5
EVENT_MAX_CHARS = 8000
# The completion message: the command's last lines, at most this many and this long.
TAIL_LINES = 20
TAIL_MAX_CHARS = 4000
STOP_GRACE_S = 5.0
_POLL_S = 0.2
_READ_SIZE = 1 << 16
MAX_LINE_BYTES = 1 << 16


class AgentConfigProblem(Exception):
    """The ``agent`` section of GET /job cannot be run; the message says why."""


@dataclass(frozen=True)
class AgentCommand:
    """What to run: the rendered argv and its environment."""

    name: str
    argv: list[str]
    env: dict[str, str]


def agent_command(
    job: Mapping[str, Any],
    *,
    base_env: Mapping[str, str],
    llm_key: str,
    credentials: Mapping[str, str],
    egress: Mapping[str, str],
) -> AgentCommand:
    """The command of the job's ``agent`` section and its environment: the container's own
    (the image's settings; no IRONCLAW_ variable), the credentials, the egress variables, the
    entry's settings, then the model route's key, URL and model, which nothing overrides."""
    info = job.get("agent")
    if job.get("mode") != "agent" or not isinstance(info, Mapping):
        raise AgentConfigProblem("GET /job has no agent section: this is not an agent job")
    command = info.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise AgentConfigProblem("agent.command must be a non-empty list of strings")
    names: dict[str, list[str]] = {}
    for key in ("key_env", "base_url_env", "model_env"):
        value = info.get(key)
        if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
            raise AgentConfigProblem(f"agent.{key} must be a list of env names")
        names[key] = value
    settings = info.get("env")
    if not isinstance(settings, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in settings.items()
    ):
        raise AgentConfigProblem("agent.env must map names to strings")
    for name in (*names["key_env"], *names["base_url_env"], *names["model_env"], *settings):
        problem = env_name_problem(name)
        if problem:
            raise AgentConfigProblem(f"agent env name {name[:64]!r} {problem}")
    base_url, model, task = info.get("base_url"), info.get("model"), job.get("task_description")
    if not isinstance(base_url, str) or not isinstance(model, str) or not isinstance(task, str):
        raise AgentConfigProblem("agent.base_url, agent.model and the task must be strings")
    env = {k: v for k, v in base_env.items() if not k.startswith("IRONCLAW_")}
    env |= credentials
    env |= egress
    env |= settings
    env |= {name: llm_key for name in names["key_env"]}
    env |= {name: base_url for name in names["base_url_env"]}
    env |= {name: model for name in names["model_env"]}
    return AgentCommand(str(info.get("name", "agent")), render_command(command, task, model), env)


class OutputBatcher:
    """Gathers output lines into ``message`` events, and keeps the last lines."""

    def __init__(self, client: WorkerApiClient) -> None:
        self._client = client
        self._pending: list[str] = []
        self._chars = 0
        self._since = time.monotonic()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def add(self, line: str) -> None:
        if line.strip():
            self.tail.append(line)
        self._pending.append(line)
        self._chars += len(line) + 1
        if self._chars >= EVENT_MAX_CHARS:
            self.flush()

    def tick(self) -> None:
        """Sends what has gathered once it is old enough."""
        if self._pending and time.monotonic() - self._since >= EVENT_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        self._since = time.monotonic()
        if not self._pending:
            return
        text = "\n".join(self._pending)
        self._pending, self._chars = [], 0
        try:
            self._client.post_event("message", {"role": "assistant", "content": text})
        except TokenRejected:
            raise
        except WorkerClientError as exc:
            log.warning("output event not sent: %s", exc)

    def last_output(self) -> str:
        text = "\n".join(self.tail)
        return text[-TAIL_MAX_CHARS:]


class AgentRunner:
    """Runs one agent job's command to its end; :meth:`run` returns the exit code."""

    def __init__(
        self,
        client: WorkerApiClient,
        *,
        workspace: Path,
        base_env: Mapping[str, str],
        llm_key: str,
        egress_key: str,
    ) -> None:
        self._client = client
        self._workspace = workspace
        self._base_env = dict(base_env)
        self._llm_key = llm_key
        self._egress_key = egress_key
        self._job: dict[str, Any] | None = None  # GET /job, once read

    def run(self) -> int:
        try:
            job = self._client.get_job()
            granted = self._client.get_credentials()
            credentials = credential_env(with_env_names(granted, job.get("credential_env")))
            for value in credentials.values():
                mask_in_logs(value)
                _SECRETS.append(value)
            # The agent calls the orchestrator's model route itself: it trusts its CA too.
            egress = egress_env(
                job,
                self._client.job_id,
                self._egress_key,
                self._base_env.get("HOME"),
                orchestrator_ca_pem=self._base_env.get(container_env.ORCHESTRATOR_CA),
            )
            command = agent_command(
                job,
                base_env=self._base_env,
                llm_key=self._llm_key,
                credentials=credentials,
                egress=egress,
            )
        except TokenRejected as exc:
            log.error("the orchestrator rejected the token: %s", exc)
            return EXIT_TOKEN_REJECTED
        except AgentConfigProblem as exc:
            log.error("cannot run the agent: %s", exc)
            failed = report_result(
                self._client, False, str(exc), None, {"reason": "invalid_config"}
            )
            return failed if failed is not None else EXIT_USAGE
        except WorkerClientError as exc:
            log.error("could not read the job: %s", exc)
            return EXIT_CRASHED
        self._job = job
        try:
            prepared = prepare_workspace(
                self._client,
                job,
                self._workspace,
                command.env,
                (*credentials.values(), self._egress_key, self._llm_key),
            )
        except TokenRejected as exc:
            log.error("the orchestrator rejected the token: %s", exc)
            return EXIT_TOKEN_REJECTED
        except WorkspaceNotReady as exc:
            log.error("%s", exc)
            failed = report_result(self._client, False, str(exc), None, {"reason": exc.reason})
            return failed if failed is not None else EXIT_USAGE
        if prepared is not None:
            log.info("%s", prepared)
        log.info(
            "agent %s: running %s in %s, credentials: %s",
            command.name,
            command.argv[0],
            self._workspace,
            ", ".join(sorted(credentials)) or "none",
        )
        try:
            try:
                self._client.post_status(f"running agent {command.name}", 0)
            except TokenRejected:
                raise
            except WorkerClientError as exc:
                log.warning("status line not sent: %s", exc)
            return self._execute(command)
        except TokenRejected as exc:
            # The job ended meanwhile (stopped, timed out): nothing left to report to.
            log.warning("the job has ended: %s", exc)
            return EXIT_TOKEN_REJECTED

    def _execute(self, command: AgentCommand) -> int:
        batcher = OutputBatcher(self._client)
        try:
            with termination_deferred():
                proc = subprocess.Popen(
                    command.argv,
                    cwd=self._workspace,
                    env=command.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            message = f"agent {command.name}: cannot start {command.argv[0]!r}: {exc.strerror}"
            log.error("%s", message)
            failed = report_result(self._client, False, message, None, {"reason": "crash"})
            return failed if failed is not None else EXIT_USAGE
        try:
            assert proc.stdout is not None
            for line in _lines(proc, proc.stdout.fileno(), batcher):
                shown = _redact(line)
                log.info("| %s", shown)
                batcher.add(shown)
            code = proc.wait()
        finally:
            _stop(proc)
        batcher.flush()
        # Before the result: the token (and, on a cluster, the workspace's volume) ends with it.
        if self._job is not None:
            push_workspace(self._client, self._job, self._workspace)
        if code == 0:
            message = batcher.last_output() or f"agent {command.name} exited 0"
            failed = report_result(
                self._client, True, message, None, {"agent": command.name, "exit_code": 0}
            )
            return failed if failed is not None else EXIT_OK
        # No /complete: the container's exit code is the command's, and the orchestrator ends
        # the job EXITED with it and the log tail.
        exit_code = code if code > 0 else 128 - code
        log.warning("agent %s exited with %d", command.name, exit_code)
        return exit_code


def _lines(proc: subprocess.Popen[bytes], fd: int, batcher: OutputBatcher) -> Iterator[str]:
    """Each output line as it completes; ends at end of file, or shortly after the command
    exited even if something it left in the background holds the pipe open."""
    pending = b""
    exited_at: float | None = None
    while True:
        if exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
        ready, _, _ = select.select([fd], [], [], _POLL_S)
        batcher.tick()
        if ready:
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                yield raw.decode("utf-8", errors="replace").rstrip("\r")
            # Output without line breaks (a progress bar) is passed on in pieces, never held
            # whole.
            while len(pending) > MAX_LINE_BYTES:
                piece, pending = pending[:MAX_LINE_BYTES], pending[MAX_LINE_BYTES:]
                yield piece.decode("utf-8", errors="replace")
        elif exited_at is not None and time.monotonic() - exited_at > 1.0:
            break
    if pending:
        yield pending.decode("utf-8", errors="replace")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group, SIGKILL after a grace period; also what it left
    behind after exiting."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_GRACE_S)
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5.0)
    if proc.stdout is not None:
        with contextlib.suppress(OSError):
            proc.stdout.close()


_SECRETS: list[str] = []


def _redact(text: str) -> str:
    """The keys this process holds never leave it in the command's output, nor anything shaped
    like a secret."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return mask_secrets(text)


def main(argv: list[str] | None = None) -> int:
    """Runs ``ironclaw-agent-run``: 0 when the command exited 0 and the job completed, the
    command's exit code otherwise; 2 bad configuration, 3 token rejected, 143 SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="ironclaw-agent-run",
        description="Run the catalogue agent of one job inside its container. The bearer "
        f"token is read from {TOKEN_VAR} only.",
    )
    parser.add_argument("--job-id", help=f"the job's UUID (default: ${JOB_ID_VAR})")
    parser.add_argument("--orchestrator-url", help=f"the worker API base URL (default: ${URL_VAR})")
    parser.add_argument(
        "--workspace", help=f"the project directory (default: ${WORKSPACE_VAR} or /workspace)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    env = os.environ
    try:
        token = (env.get(TOKEN_VAR) or "").strip()
        job_id = (args.job_id or env.get(JOB_ID_VAR) or "").strip()
        url = (args.orchestrator_url or env.get(URL_VAR) or "").strip()
        for value, name in ((token, TOKEN_VAR), (job_id, JOB_ID_VAR), (url, URL_VAR)):
            if not value:
                raise UsageError(f"{name} is not set")
        workspace = Path(args.workspace or env.get(WORKSPACE_VAR) or DEFAULT_WORKSPACE)
        if not workspace.is_dir():
            raise UsageError(f"workspace {str(workspace)!r} is not a directory")
        level = logging.getLevelName(args.log_level.upper())
        if not isinstance(level, int):
            raise UsageError(f"--log-level must be DEBUG, INFO, WARNING or ERROR: {args.log_level}")
        try:
            client = WorkerApiClient(
                url,
                job_id,
                token,
                user_agent="ironclaw-agent-run",
                ca_pem=env.get(container_env.ORCHESTRATOR_CA),
            )
        except ValueError as exc:
            raise UsageError(f"{URL_VAR} / {TOKEN_VAR}: {exc}") from None
    except UsageError as exc:
        print(f"ironclaw-agent-run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(level, token, ("agent-run", "worker"))
    # The command gets an explicit environment, but a child started any other way would
    # inherit os.environ: the token leaves it now.
    env.pop(TOKEN_VAR, None)
    make_undumpable()
    llm_key, egress_key = llm_key_for(token, job_id), egress_key_for(token, job_id)
    for secret in (token, llm_key, egress_key):
        mask_in_logs(secret)
        _SECRETS.append(secret)
    log.info("agent-run for job %s starting, orchestrator %s", job_id, url)
    with client, sigterm_raises_terminated():
        try:
            return AgentRunner(
                client,
                workspace=workspace,
                base_env=dict(env),
                llm_key=llm_key,
                egress_key=egress_key,
            ).run()
        except Terminated:
            log.warning("stopped by SIGTERM")
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            return 130
        except Exception:
            # Not a result of the job: the container's exit code and log tail tell the
            # orchestrator (EXITED), as for any agent that dies.
            log.exception("agent-run crashed")
            return EXIT_CRASHED


if __name__ == "__main__":
    sys.exit(main())
