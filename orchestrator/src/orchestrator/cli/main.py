"""The ``ironclaw`` command: the orchestrator (``serve``) and its clients (``job``, ``status``,
``usage``). Subcommands import what they need lazily, so ``ironclaw job ...`` starts fast. The
agents that run inside job containers are other distributions with their own commands
(``ironclaw-worker``, ``ironclaw-claude-bridge``)."""

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("worker", "claude-bridge"):
        # The agents moved out of the orchestrator's distribution: say where they are.
        print(
            f"ironclaw: `ironclaw {args_list[0]}` is now `ironclaw-{args_list[0]}`, installed by "
            f"the ironclaw-{'worker' if args_list[0] == 'worker' else 'claude-bridge'} "
            "distribution (in the job images)",
            file=sys.stderr,
        )
        return 2
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
