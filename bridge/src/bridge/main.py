"""``ironclaw-claude-bridge``: the entry point of a Claude Code container.

The orchestrator starts it without arguments: the container's environment holds the job's
identity (``IRONCLAW_JOB_ID``, ``IRONCLAW_ORCHESTRATOR_URL``, ``IRONCLAW_WORKER_TOKEN``,
``IRONCLAW_WORKSPACE``) and ``GET /job`` everything else. The flags override the job's settings
for manual use (``--model``, ``--max-turns``, ...). The worker token is read from
``IRONCLAW_WORKER_TOKEN`` only (never a flag, where ``ps`` would show it) and removed from the
environment before anything else starts. Logs go to stderr, the container log, with the token
and the CLI's key masked.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bridge.runner import BridgeConfig, ClaudeBridge
from ironclaw_contract import container_env
from ironclaw_contract.job_keys import egress_key_for, llm_key_for
from worker.agent import EXIT_TERMINATED, EXIT_USAGE
from worker.claim import claim_from_environment
from worker.client import WorkerApiClient
from worker.main import (
    JOB_ID_VAR,
    TOKEN_VAR,
    URL_VAR,
    WORKSPACE_VAR,
    UsageError,
    configure_logging,
    make_undumpable,
    mask_in_logs,
)
from worker.termination import Terminated, sigterm_raises_terminated

DEFAULT_WORKSPACE = "/workspace"
# Where the image keeps the CLI (a property of the image, not of a job).
CLAUDE_BIN_VAR = "CLAUDE_CODE_BIN"

log = logging.getLogger("bridge")


def main(argv: list[str] | None = None) -> int:
    """Runs ``ironclaw-claude-bridge`` and returns the exit code.

    0: the job succeeded; 1: it failed and said so; 2: bad configuration; 3: the token was
    rejected (the job is over); 4: the bridge crashed; 143: stopped by SIGTERM.
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
        token = _required(env.get(TOKEN_VAR), TOKEN_VAR)
        job_id = _required(args.job_id or env.get(JOB_ID_VAR), f"--job-id / {JOB_ID_VAR}")
        url = _required(
            args.orchestrator_url or env.get(URL_VAR), f"--orchestrator-url / {URL_VAR}"
        )
        workspace = Path(args.workspace or env.get(WORKSPACE_VAR) or DEFAULT_WORKSPACE)
        if not workspace.is_dir():
            raise UsageError(f"workspace {str(workspace)!r} is not a directory")
        if args.max_turns is not None and args.max_turns < 1:
            raise UsageError(f"--max-turns must be a positive integer, got {args.max_turns}")
        idle = args.idle_timeout_s
        if idle is not None and idle <= 0:
            raise UsageError(f"--idle-timeout-s must be positive, got {idle}")
        level = logging.getLevelName(args.log_level.upper())
        if not isinstance(level, int):
            raise UsageError(f"--log-level must be DEBUG, INFO, WARNING or ERROR: {args.log_level}")
        try:
            client = WorkerApiClient(
                url,
                job_id,
                token,
                user_agent="ironclaw-claude-bridge",
                ca_pem=env.get(container_env.ORCHESTRATOR_CA),
            )
        except ValueError as exc:
            raise UsageError(f"{URL_VAR} / {TOKEN_VAR}: {exc}") from None
    except UsageError as exc:
        print(f"ironclaw-claude-bridge: {exc}", file=sys.stderr)
        return EXIT_USAGE

    # The bridge and the worker modules it uses (the client, credentials) log the same way.
    configure_logging(level, token, ("bridge", "worker"))
    # The CLI and everything it runs get an explicit environment, but a child started any other
    # way would inherit os.environ: the token leaves it now.
    env.pop(TOKEN_VAR, None)
    make_undumpable()
    config = BridgeConfig(
        workspace=workspace,
        claude_bin=args.claude_bin or env.get(CLAUDE_BIN_VAR) or "claude",
        model=args.model,
        max_turns=args.max_turns,
        allowed_tools=args.allowed_tools,
        wait_for_prompts=True if args.wait_for_prompts else None,
        idle_timeout_s=idle,
        poll_interval_s=args.poll_interval_s,
        base_env=dict(env),
        llm_key=llm_key_for(token, job_id),
        egress_key=egress_key_for(token, job_id),
    )
    mask_in_logs(config.llm_key)
    mask_in_logs(config.egress_key)
    log.info("claude-bridge for job %s starting, orchestrator %s", job_id, url)
    with client, sigterm_raises_terminated():
        try:
            return ClaudeBridge(client, config).run()
        except Terminated:
            log.warning("stopped by SIGTERM")
            return EXIT_TERMINATED
        except KeyboardInterrupt:
            log.warning("interrupted")
            return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ironclaw-claude-bridge",
        description="Run the Claude Code CLI for one job inside its container. The bearer "
        f"token is read from {TOKEN_VAR} only.",
    )
    parser.add_argument("--job-id", help=f"the job's UUID (default: ${JOB_ID_VAR})")
    parser.add_argument("--orchestrator-url", help=f"the worker API base URL (default: ${URL_VAR})")
    parser.add_argument("--max-turns", type=int, help="turns per session (default: the job's)")
    parser.add_argument("--model", help="model or alias, e.g. sonnet (default: the job's)")
    parser.add_argument("--allowed-tools", help="e.g. bash,read,write (default: the job's)")
    parser.add_argument(
        "--wait-for-prompts",
        action="store_true",
        help="after the first session, resume it for follow-up prompts until `done` "
        "(default: as the job says)",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        help="end a waiting job after this long without a prompt (default: the job's)",
    )
    parser.add_argument(
        "--poll-interval-s", type=float, default=1.0, help="how often to ask for a prompt"
    )
    parser.add_argument(
        "--workspace", help=f"the project directory (default: ${WORKSPACE_VAR} or /workspace)"
    )
    parser.add_argument(
        "--claude-bin", help=f"the claude executable (default: ${CLAUDE_BIN_VAR} or claude)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--await-claim",
        action="store_true",
        help="a warm-pool slot: wait for the orchestrator to hand this container a job "
        "(its id and token) before starting",
    )
    return parser


def _required(value: str | None, name: str) -> str:
    if value is None or not value.strip():
        raise UsageError(f"{name} is not set")
    return value.strip()


if __name__ == "__main__":
    sys.exit(main())
