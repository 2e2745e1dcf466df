"""``ironclaw status``: is the orchestrator healthy, can it run jobs, and what is it doing?

The control plane answers health and the job counts. The engine, the images and the budget
defaults are checked from here, with the same environment ``ironclaw serve`` reads (the CLI
runs next to the orchestrator: the control plane is bound to loopback by default). Every
problem comes with its fix.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.cli.jobs import DEFAULT_TARGET, open_client, report_client_errors

if TYPE_CHECKING:
    from ironclaw_client import Client

PACKAGE = "ironclaw-orchestrator"


def add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--orchestrator",
        default=os.environ.get("IRONCLAW_ORCHESTRATOR", DEFAULT_TARGET),
        help="control plane address (default: $IRONCLAW_ORCHESTRATOR or localhost:50051)",
    )


def add_status_command(sub: Any) -> None:
    status = sub.add_parser(
        "status", help="orchestrator health, engine, images, jobs by state, budget defaults"
    )
    add_client_options(status)
    status.add_argument("--json", action="store_true")


def run_client(
    args: argparse.Namespace, action: Callable[[argparse.Namespace, Client], int]
) -> int:
    """Runs ``action(args, client)`` against the control plane with the CLI's error reporting."""

    def run() -> int:
        with open_client(args.orchestrator) as client:
            return action(args, client)

    return report_client_errors(args.orchestrator, run)


@dataclass
class StatusReport:
    version: str = "unknown"
    health: str = "unknown"
    docker: dict[str, Any] = field(default_factory=dict)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    budget_defaults: dict[str, Any] = field(default_factory=dict)
    custom_tools: dict[str, Any] = field(default_factory=dict)
    # Per job mode: size, ready, starting, claims, misses (empty: WARM_POOL is off).
    warm_pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)

    def problem(self, what: str, fix: str) -> None:
        self.problems.append({"problem": what, "fix": fix})


def orchestrator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def run_status(args: argparse.Namespace, client: Client) -> int:
    report = StatusReport(version=orchestrator_version())
    _check_control_plane(args, client, report)
    settings = _settings(report)
    if settings is not None:
        asyncio.run(_check_engine(settings, report))
        report.budget_defaults = {
            "llm_token_budget": settings.job_llm_token_budget,
            "llm_call_budget": settings.job_llm_call_budget,
            "llm_max_tokens_per_call": settings.job_llm_max_tokens_per_call,
            "llm_model_allowlist": list(settings.llm_model_allowlist),
            "worker_timeout_s": settings.worker_timeout_s,
            "claude_code_timeout_s": settings.claude_timeout_s,
            "claude_code_max_turns": settings.claude_max_turns,
        }
        _check_catalogues(settings, report)
        _check_warm_pools(settings, report)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        _print(report)
    return 1 if report.problems else 0


def _check_control_plane(args: argparse.Namespace, client: Client, report: StatusReport) -> None:
    from ironclaw_client import IronclawError, JobState, Unauthenticated
    from orchestrator.cli.usage import fetch_jobs

    try:
        report.health = client.health()
    except IronclawError as exc:
        report.health = "unreachable"
        report.problem(
            f"the control plane at {args.orchestrator} does not answer ({exc.code})",
            "start it with `ironclaw serve`, or point --orchestrator / IRONCLAW_ORCHESTRATOR at it",
        )
        return
    if report.health != "SERVING":
        report.problem(
            f"the orchestrator reports {report.health}",
            "it is shutting down or starting: wait, or restart `ironclaw serve`",
        )
    try:
        jobs = fetch_jobs(client)
    except IronclawError as exc:
        report.problem(
            f"listing jobs failed: {exc}",
            "set ORCHESTRATOR_ADMIN_TOKEN to the orchestrator's admin token"
            if isinstance(exc, Unauthenticated)
            else "see the orchestrator's log",
        )
        return
    counts = {state.value: 0 for state in JobState if state is not JobState.UNSPECIFIED}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    report.jobs_by_state = counts


def _settings(report: StatusReport) -> Any:
    from orchestrator.errors import ConfigError
    from orchestrator.settings import Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        report.problem(f"the configuration is invalid: {exc}", "fix that variable and retry")
        return None


def _check_catalogues(settings: Any, report: StatusReport) -> None:
    from orchestrator.errors import ConfigError
    from orchestrator.tool_catalog import ToolCatalog

    catalog = ToolCatalog(settings.base_dir)
    report.custom_tools = {
        "mcp_catalog": str(catalog.mcp_path),
        "wasm_tools_dir": str(catalog.wasm_dir),
        "wasm_tools": catalog.wasm_tool_names(),
    }
    try:
        catalog.check()
    except ConfigError as exc:
        report.problem(
            str(exc),
            "fix that file: `ironclaw serve` refuses to start with it, and jobs that name its "
            "tools are refused",
        )
        return
    report.custom_tools["mcp_servers"] = sorted(catalog.mcp_servers())
    _check_agent_catalogue(settings, report)


def _check_agent_catalogue(settings: Any, report: StatusReport) -> None:
    from orchestrator.agent_catalog import AGENT_CATALOG_FILE, read_agent_catalog
    from orchestrator.errors import FailedPrecondition

    path = settings.base_dir / AGENT_CATALOG_FILE
    try:
        if path.exists():
            read_agent_catalog(path)
    except FailedPrecondition as exc:
        report.problem(
            exc.message,
            "fix that file: `ironclaw serve` refuses to start with it, and agent jobs are refused",
        )


def _agent_images(settings: Any) -> dict[str, str]:
    """``agent:<name>`` → the image of each entry of the agent catalogue (none when it is
    missing or broken: _check_catalogues reports that)."""
    from orchestrator.agent_catalog import AGENT_CATALOG_FILE, read_agent_catalog
    from orchestrator.errors import FailedPrecondition

    path = settings.base_dir / AGENT_CATALOG_FILE
    try:
        agents = read_agent_catalog(path) if path.exists() else {}
    except FailedPrecondition:
        return {}
    return {f"agent:{name}": entry.image for name, entry in sorted(agents.items())}


def _check_warm_pools(settings: Any, report: StatusReport) -> None:
    """The pools as the orchestrator's metrics show them (``/metrics`` on loopback, where this
    CLI runs): slots ready and starting, claims and misses since it started."""
    from orchestrator.cli.warm_pools import read_warm_pools

    if not settings.warm_pool:
        return
    pools, error = read_warm_pools(settings)
    report.warm_pools = pools
    if error:
        report.problem(
            f"the warm pools' state could not be read from the orchestrator's metrics: {error}",
            "check METRICS_ENABLED, METRICS_BIND and METRICS_PORT match `ironclaw serve`'s",
        )
        return
    for mode, pool in pools.items():
        if pool.get("ready") == 0 and pool.get("starting") == 0:
            report.problem(
                f"the {mode} warm pool has no container ready or starting",
                "see the orchestrator's log for `warm slot could not be made`",
            )


async def _check_engine(settings: Any, report: StatusReport) -> None:
    images = {
        "worker": settings.worker_image,
        "claude-code": settings.claude_image,
        **_agent_images(settings),
    }
    try:
        from orchestrator.containers.docker_backend import DockerBackend
    except ImportError:
        report.docker = {"reachable": "unknown", "version": "unknown"}
        for mode, image in images.items():
            report.images[mode] = {"image": image, "present": "unknown"}
        return
    from orchestrator.errors import EngineUnavailable

    # On a Swarm: the manager's engine (its version, and whether it has the images).
    swarm = settings.container_backend == "swarm"
    backend = DockerBackend(settings.swarm_manager_url if swarm else None)
    try:
        report.docker = {
            "reachable": True,
            "version": await backend.engine_version(),
            "address": backend.engine_address,
        }
    except EngineUnavailable as exc:
        report.docker = {
            "reachable": False,
            "version": "unknown",
            "address": backend.engine_address,
        }
        report.problem(
            exc.message, "start the Docker daemon, or point DOCKER_HOST at a reachable engine"
        )
        for mode, image in images.items():
            report.images[mode] = {"image": image, "present": "unknown"}
        await backend.close()
        return
    try:
        for mode, image in images.items():
            present = await backend.image_exists(image)
            report.images[mode] = {"image": image, "present": present}
            if not present and mode.startswith("agent:"):
                report.problem(
                    f"image {image} of {mode} is missing",
                    "build it (`deploy/scripts/build-images.sh mini-swe-agent aider-chat` for "
                    "the example's) or change the entry's image in agents.json",
                )
            elif not present:
                variable = "WORKER_IMAGE" if mode == "worker" else "CLAUDE_CODE_IMAGE"
                report.problem(
                    f"image {image} for {mode} jobs is missing",
                    f"build it with `make images` (or set {variable} to an image that exists)",
                )
    finally:
        await backend.close()


def _print(report: StatusReport) -> None:
    docker = report.docker
    print(f"orchestrator  {report.version}  health: {report.health}")
    if docker:
        reachable = docker.get("reachable")
        engine = (
            f"{docker.get('version')} at {docker.get('address')}"
            if reachable is True
            else ("unreachable" if reachable is False else "unknown (docker SDK not installed)")
        )
        print(f"docker        {engine}")
    for mode, image in report.images.items():
        present = image["present"]
        mark = "present" if present is True else ("MISSING" if present is False else "unknown")
        print(f"image         {mode:12} {image['image']}  {mark}")
    if report.jobs_by_state:
        jobs = "  ".join(f"{state}={count}" for state, count in report.jobs_by_state.items())
        print(f"jobs          {jobs}")
    if report.budget_defaults:
        b = report.budget_defaults
        allow = ",".join(b["llm_model_allowlist"]) or "any"
        print(
            f"budgets       tokens={b['llm_token_budget']} calls={b['llm_call_budget']} "
            f"max_tokens_per_call={b['llm_max_tokens_per_call']} models={allow}"
        )
    tools = report.custom_tools
    if "mcp_servers" in tools:
        print(
            f"mcp servers   {', '.join(tools['mcp_servers']) or 'none'}  ({tools['mcp_catalog']})"
        )
        print(
            f"wasm tools    {', '.join(tools['wasm_tools']) or 'none'}  ({tools['wasm_tools_dir']})"
        )
    for mode, pool in report.warm_pools.items():
        print(
            f"warm pool     {mode:12} size={pool.get('size', '?')} ready={pool.get('ready', '?')} "
            f"starting={pool.get('starting', '?')} claims={pool.get('claims', '?')} "
            f"misses={pool.get('misses', '?')}"
        )
    if report.problems:
        print()
        for item in report.problems:
            print(f"problem: {item['problem']}\n    fix: {item['fix']}")
    else:
        print("\nno problems found")
