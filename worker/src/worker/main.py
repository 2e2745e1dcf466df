"""``ironclaw-worker``: the entry point of a worker container.

The container's environment says only how to reach the orchestrator and which job this is
(``ironclaw_contract.container_env``: job id, URL, token, workspace; flags may override all but
the token, which is never taken from the command line where ``ps`` would show it). Everything
else about the job (task, max iterations, deadline, credentials, tools) comes from
``GET /worker/{id}/job``. Logs go to stderr as plain lines; the token never appears in them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from ironclaw_contract import container_env
from ironclaw_contract.job_keys import egress_key_for
from ironclaw_contract.secret_patterns import mask_secrets
from worker.agent import (
    DEFAULT_MAX_ITERATIONS,
    EXIT_TERMINATED,
    EXIT_USAGE,
    Agent,
    AgentConfig,
)
from worker.claim import claim_from_environment
from worker.client import WorkerApiClient
from worker.termination import Terminated, sigterm_raises_terminated

TOKEN_VAR = container_env.WORKER_TOKEN
JOB_ID_VAR = container_env.JOB_ID
URL_VAR = container_env.ORCHESTRATOR_URL
WORKSPACE_VAR = container_env.WORKSPACE
DEFAULT_WORKSPACE = container_env.WORKSPACE_PATH

_EXIT_INTERRUPTED = 130  # 128 + SIGINT
_PR_SET_DUMPABLE = 4

log = logging.getLogger("worker")


class UsageError(Exception):
    """A missing or invalid setting; the message names the variable or flag."""


def main(argv: list[str] | None = None) -> int:
    """Runs ``ironclaw-worker`` and returns the exit code.

    0: the job succeeded; 1: the job failed and said so; 2: bad configuration; 3: the token was
    rejected (the job is over); 4: the worker crashed; 143: stopped by SIGTERM.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.await_claim:
        # A warm-pool slot: the job id and token arrive with the claim (worker/claim.py).
        refused = claim_from_environment()
        if refused is not None:
            return refused
    env = os.environ
    try:
        token = _required(env, TOKEN_VAR, None)
        job_id = _required(env, JOB_ID_VAR, args.job_id)
        url = _required(env, URL_VAR, args.orchestrator_url)
        workspace = _workspace(args.workspace or env.get(WORKSPACE_VAR) or DEFAULT_WORKSPACE)
        max_iterations = _max_iterations(args.max_iterations)
        level = _log_level(args.log_level)
        try:
            client = WorkerApiClient(
                url, job_id, token, ca_pem=env.get(container_env.ORCHESTRATOR_CA)
            )
        except ValueError as exc:
            raise UsageError(f"{URL_VAR} / {TOKEN_VAR}: {exc}") from None
    except UsageError as exc:
        print(f"ironclaw-worker: {exc}", file=sys.stderr)
        return EXIT_USAGE

    configure_logging(level, token)
    # Commands the tools start get an explicit allowlisted environment, but a child started any
    # other way would inherit os.environ: the token leaves it now.
    env.pop(TOKEN_VAR, None)
    make_undumpable()
    egress_key = egress_key_for(token, job_id)
    mask_in_logs(egress_key)
    config = AgentConfig(
        workspace=workspace,
        max_iterations=max_iterations,
        base_env=dict(env),
        egress_key=egress_key,
    )
    log.info("worker for job %s starting, orchestrator %s, workspace %s", job_id, url, workspace)
    with client, sigterm_raises_terminated():
        try:
            return Agent(client, config).run()
        except Terminated:
            log.warning("stopped by SIGTERM")
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            log.warning("interrupted")
            return _EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ironclaw-worker",
        description=(
            "Run the agent of one job inside a worker container. The bearer token is read from "
            f"{TOKEN_VAR} only."
        ),
    )
    parser.add_argument("--job-id", help=f"the job's UUID (default: ${JOB_ID_VAR})")
    parser.add_argument("--orchestrator-url", help=f"the worker API base URL (default: ${URL_VAR})")
    parser.add_argument(
        "--workspace", help=f"the project directory (default: ${WORKSPACE_VAR} or /workspace)"
    )
    parser.add_argument(
        "--max-iterations",
        help="LLM calls allowed when GET /job sets no limit (the orchestrator always sets "
        f"one; default {DEFAULT_MAX_ITERATIONS})",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--await-claim",
        action="store_true",
        help="a warm-pool slot: wait for the orchestrator to hand this container a job "
        "(its id and token) before starting",
    )
    return parser


def _required(env: Mapping[str, str], var: str, flag_value: str | None) -> str:
    value = flag_value or env.get(var, "")
    if not value.strip():
        raise UsageError(f"{var} is not set")
    return value.strip()


def _workspace(raw: str) -> Path:
    path = Path(raw)
    if not path.is_dir():
        raise UsageError(f"{WORKSPACE_VAR}: workspace {raw!r} is not a directory")
    return path


def _max_iterations(raw: str | None) -> int:
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_ITERATIONS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"--max-iterations must be a positive integer, got {raw!r}")
    return value


def _log_level(raw: str) -> int:
    level = logging.getLevelName(raw.upper())
    if not isinstance(level, int):
        raise UsageError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level


# Secrets learned after the start (the Claude Code CLI's key from GET /job), masked like the
# token in every line from then on.
_LEARNED_SECRETS: list[str] = []


def mask_in_logs(value: str) -> None:
    """Masks ``value`` in every later log line of this process (however it is shaped)."""
    if value and value not in _LEARNED_SECRETS:
        _LEARNED_SECRETS.append(value)
        _LEARNED_SECRETS.sort(key=len, reverse=True)


class _RedactingFormatter(logging.Formatter):
    """Masks the worker token, the secrets given to :func:`mask_in_logs`, and anything shaped
    like a secret, in every formatted line."""

    def __init__(self, token: str) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._token = token

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in (self._token, *_LEARNED_SECRETS):
            if secret:
                text = text.replace(secret, "***")
        return mask_secrets(text)


def configure_logging(level: int, token: str, loggers: tuple[str, ...] = ("worker",)) -> None:
    """One stderr handler for the given loggers, with a formatter that masks the token and
    anything shaped like one (the Claude bridge passes its own logger name too)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(token))
    for name in loggers:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


def make_undumpable() -> None:
    """Marks this process non-dumpable (Linux), so commands run by the tools, which share its
    uid, cannot read its memory or ``/proc/<pid>/environ``, where the token still sits.

    Best effort: silently does nothing where ``prctl`` is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


if __name__ == "__main__":
    sys.exit(main())
