"""The ``ironclaw`` command. Subcommands import what they need lazily: ``ironclaw worker`` and
``ironclaw claude-bridge`` run in job images that carry neither grpcio nor docker."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ironclaw", description="Run AI coding-agent jobs in isolated containers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the orchestrator (gRPC control plane + worker API)")
    serve.add_argument(
        "--drain",
        action="store_true",
        help="on shutdown, stop running jobs instead of leaving "
        "their containers for the next start",
    )
    job = sub.add_parser("job", help="create and manage jobs (a gRPC client)")
    from orchestrator.cli.jobs import add_job_commands

    add_job_commands(job)
    from orchestrator.cli.status import add_client_options, add_status_command
    from orchestrator.cli.usage import add_usage_command

    add_status_command(sub)
    add_usage_command(sub)
    add_client_options(sub.choices["usage"])
    sub.add_parser("worker", help="run the agent inside a worker container", add_help=False)
    sub.add_parser("claude-bridge", help="run Claude Code inside its container", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Agent subcommands parse their own arguments and must not import the server stack.
    if args_list and args_list[0] == "worker":
        from worker.main import main as worker_main

        return int(worker_main(args_list[1:]))
    if args_list and args_list[0] == "claude-bridge":
        from bridge.main import main as bridge_main  # type: ignore[import-not-found,unused-ignore]

        return int(bridge_main(args_list[1:]))
    parser = _build_parser()
    args = parser.parse_args(args_list)
    if args.command == "serve":
        from orchestrator.cli.serve import run_serve

        return run_serve(drain=args.drain)
    if args.command == "job":
        from orchestrator.cli.jobs import run_job_command

        return run_job_command(args)
    if args.command in ("status", "usage"):
        from orchestrator.cli.status import run_client, run_status
        from orchestrator.cli.usage import run_usage

        return run_client(args, run_status if args.command == "status" else run_usage)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
