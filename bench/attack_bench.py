"""The service under attack: does everyone else still get answers while one job misbehaves?

One real orchestrator (``bench.orchestrator_server``: Docker backend, SQLite store, job
containers on the default bridge) with a few sleep jobs. A probe asks ``GET /health`` on the
worker API and gRPC ``GetJob`` for an unrelated job at a steady rate (one of each every 20 ms),
first with nothing else going on (the baseline), then during each attack of ``bench.attacks``,
each run for the same time against the same orchestrator. Reported per phase: p50/p99 of both
and the probe's errors (a probe that fails or times out counts as an error at the timeout),
the ratio of p99 against the baseline, and what the attack itself achieved.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.attacks import Attack, AttackTarget
from bench.docker_util import remove_containers
from bench.procs import Child, load_average, python_module
from bench.stats import summarize

# name -> "module:function" of an attack; modules missing from this checkout are skipped.
ATTACKS = {
    "slow_connections": "bench.attacks.slow_connections:slow_connections",
    "event_amplification": "bench.attacks.event_amplification:event_amplification",
    "llm_flood": "bench.attacks.llm_flood:llm_flood",
    "mount_swap": "bench.attacks.mount_swap:mount_swap",
}
PROBE_INTERVAL_S = 0.02
PROBE_TIMEOUT_S = 2.0
# An attack may slow the others down, never stop them: p99 within this of the baseline.
MAX_P99_RATIO = 10.0


@dataclass(frozen=True)
class AttackOptions:
    phase_s: float = 10.0
    attacks: tuple[str, ...] = tuple(ATTACKS)
    image_tag: str = "latest"


def load_attack(spec: str) -> Attack | None:
    module_name, _, function = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None
    attack: Attack = getattr(module, function)
    return attack


def orchestrator_env(
    instance: str, base_dir: Path, image_tag: str, upstream_url: str
) -> dict[str, str]:
    """Production-like settings: job containers on the default bridge (they reach the worker
    API as the host gateway, from their own addresses), the test agent as the worker image,
    LLM calls to the bench's instant upstream, a token budget the LLM flood runs into."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "ORCHESTRATOR_"))}
    env.update(
        {
            "IRONCLAW_BASE_DIR": str(base_dir),
            "ORCHESTRATOR_INSTANCE": instance,
            "ORCHESTRATOR_PORT": "0",
            "ORCHESTRATOR_HTTP_PORT": "0",
            "WORKER_IMAGE": f"ironclaw-test-agent:{image_tag}",
            "WORKER_MEMORY_MB": "256",
            "STOP_GRACE_S": "2",
            "METRICS_PORT": "0",
            "LLM_PROVIDER": "openai",
            "LLM_BASE_URL": upstream_url,
            "OPENAI_API_KEY": "sk-bench-upstream",
            "LLM_MODEL": "gpt-4o-mini",
            "JOB_LLM_TOKEN_BUDGET": "200000",
            "JOB_LLM_CALL_BUDGET": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "WARNING",
        }
    )
    env.pop("ANTHROPIC_API_KEY", None)
    return env


async def probe(
    health_url: str, grpc_target: str, job_id: str, stop: asyncio.Event
) -> dict[str, Any]:
    """``/health`` and ``GetJob`` every PROBE_INTERVAL_S until ``stop``: latencies in ms."""
    import aiohttp
    from grpc import aio

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    health: list[float] = []
    get_job: list[float] = []
    errors = {"health": 0, "get_job": 0}

    async def timed(into: list[float], kind: str, call: Callable[[], Awaitable[Any]]) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(call(), PROBE_TIMEOUT_S)
            into.append((time.perf_counter() - started) * 1000)
        except Exception:
            errors[kind] += 1
            into.append(PROBE_TIMEOUT_S * 1000)

    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        aio.insecure_channel(grpc_target) as channel,
    ):
        stub = pb_grpc.JobServiceStub(channel)

        async def health_call() -> None:
            async with session.get(health_url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"/health answered {response.status}")

        async def get_job_call() -> None:
            await stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=PROBE_TIMEOUT_S)

        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stop.is_set():
            await asyncio.gather(
                timed(health, "health", health_call), timed(get_job, "get_job", get_job_call)
            )
            next_at += PROBE_INTERVAL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
    return {
        "health_ms": summarize(health),
        "get_job_ms": summarize(get_job),
        "errors": errors,
        "probes": len(health),
    }


async def run_phase(
    name: str, attack: Attack | None, target: AttackTarget, victim: str, seconds: float
) -> dict[str, Any]:
    stop = asyncio.Event()
    health_url = f"{target.worker_api_url}/health"
    attack_task = asyncio.create_task(attack(target, stop)) if attack else None
    probe_task = asyncio.create_task(probe(health_url, target.grpc_target, victim, stop))
    await asyncio.sleep(seconds)  # a measurement window, not a synchronisation
    stop.set()
    measured = await probe_task
    achieved: dict[str, Any] = {}
    if attack_task is not None:
        try:
            achieved = await asyncio.wait_for(attack_task, 120)
        except Exception as exc:
            achieved = {"error": f"{type(exc).__name__}: {exc}"}
    return {"phase": name, **measured, "attack": achieved}


def run_attack_bench(options: AttackOptions) -> dict[str, Any]:
    started = time.time()
    load_before = load_average()
    instance = f"bench-attack-{uuid.uuid4().hex[:10]}"
    base_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-attack-"))
    (base_dir / "projects").mkdir()
    phases: list[dict[str, Any]] = []
    skipped: list[str] = []
    env: dict[str, str] = {}
    try:
        with Child("upstream", python_module("bench.upstream")) as upstream:
            # The orchestrator reaches it on loopback; an instant answer with fixed usage.
            upstream_url = f"http://127.0.0.1:{upstream.ready['port']}/v1"
            env = orchestrator_env(instance, base_dir, options.image_tag, upstream_url)
            run_against(env, options, base_dir, phases, skipped)
    finally:
        remove_containers(instance)
        shutil.rmtree(base_dir, ignore_errors=True)
    return report(options, phases, skipped, started, load_before)


def run_against(
    env: dict[str, str],
    options: AttackOptions,
    base_dir: Path,
    phases: list[dict[str, Any]],
    skipped: list[str],
) -> None:
    """Starts the orchestrator under attack and runs every phase against it."""
    with Child(
        "orchestrator-attacked",
        python_module("bench.orchestrator_server", "--sleep-jobs", "3"),
        env=env,
        ready_timeout_s=240,
    ) as server:
        ready = server.ready
        jobs = [(job["job_id"], job["token"]) for job in ready["jobs"]]
        victim, attack_jobs = jobs[0][0], tuple(jobs[1:])
        target = AttackTarget(
            grpc_target=f"127.0.0.1:{ready['grpc_port']}",
            worker_api_url=f"http://{ready['http_host']}:{ready['http_port']}",
            base_dir=base_dir,
            pid=int(ready["pid"]),
            settings_env=env,
            jobs=attack_jobs,
        )

        async def all_phases() -> None:
            phases.append(await run_phase("baseline", None, target, victim, options.phase_s))
            for name in options.attacks:
                attack = load_attack(ATTACKS[name])
                if attack is None:
                    skipped.append(name)
                    continue
                phases.append(await run_phase(name, attack, target, victim, options.phase_s))

        asyncio.run(all_phases())


def report(
    options: AttackOptions,
    phases: list[dict[str, Any]],
    skipped: list[str],
    started: float,
    load_before: list[float],
) -> dict[str, Any]:
    baseline = phases[0]
    targets = []
    for phase in phases[1:]:
        for key, label in (("health_ms", "/health"), ("get_job_ms", "GetJob")):
            ratio = phase[key]["p99"] / baseline[key]["p99"]
            phase[f"{key}_p99_ratio"] = ratio
            errors = phase["errors"]["health" if key == "health_ms" else "get_job"]
            targets.append(
                {
                    "check": f"{label} p99 during {phase['phase']} vs baseline",
                    "value": f"{phase[key]['p99']:.1f} ms ({ratio:.1f}x), {errors} errors",
                    "target": f"<= {MAX_P99_RATIO:g}x, no errors",
                    "met": ratio <= MAX_P99_RATIO and errors == 0,
                }
            )
    return {
        "benchmark": "attacks",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "phase_s": options.phase_s,
            "probe_interval_s": PROBE_INTERVAL_S,
            "skipped": skipped,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "phases": phases,
        "targets": targets,
        "notes": [
            "each phase probes /health and GetJob of an unrelated job every "
            f"{PROBE_INTERVAL_S * 1000:g} ms; a failed probe counts at the "
            f"{PROBE_TIMEOUT_S:g} s timeout",
            f"median probes per phase: {statistics.median(p['probes'] for p in phases):.0f}",
        ],
    }
