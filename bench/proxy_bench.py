"""The LLM proxy's cost per request (issue 3).

The same chat request is sent, closed loop at each concurrency, for a fixed time after a
warm-up, to:

* ``direct``   the fake upstream itself (``POST /v1/chat/completions``): the floor;
* ``ironclaw`` the orchestrator's ``POST /worker/{id}/llm/complete`` (bearer token of a live
  job whose real container is up; provider ``openai`` pointed at the upstream);
* ``ironclaw-openai`` the same orchestrator's per-job OpenAI route,
  ``POST /worker/{id}/openai/v1/chat/completions`` (the body passed through to the upstream);
* ``litellm``  LiteLLM's proxy (``POST /v1/chat/completions``, master key) in front of the same
  upstream.

Every server and the load generator run in their own process. With ``pin`` (the default on a
machine with at least two CPUs) the server under test (orchestrator or LiteLLM) gets the first
CPU to itself and the upstream and the load generator share the rest, so both proxies are
measured on the same budget: one core, which is what one event loop can use anyway.

``--experiments`` adds variants of the orchestrator (``EXPERIMENTS``, bench-only providers
from ``bench.experimental_providers``) measured side by side with the product, to put a
number on each suggested optimisation; ``--profile`` runs py-spy on each orchestrator.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import litellm_proxy
from bench.docker_util import build_images, remove_containers
from bench.loadgen import SPEC_VARIABLE, LoadSpec
from bench.procs import (
    LOG_DIR,
    BenchError,
    Child,
    cpu_seconds,
    free_port,
    load_average,
    python_module,
    usable_cpus,
)
from bench.profiling import profile_process

MESSAGES = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]
MAX_TOKENS = 64
UPSTREAM_KEY = "sk-bench-upstream"

# Issue 3's targets.
MAX_ADDED_P50_MS_AT_1 = 0.5
MIN_RPS_AT_16_64 = 2500.0
MIN_RPS_RATIO_VS_LITELLM = 10.0
MAX_P99_RATIO_VS_LITELLM = 0.1


@dataclass(frozen=True)
class ProxyOptions:
    duration_s: float = 10.0
    warmup_s: float = 1.5
    concurrencies: tuple[int, ...] = (1, 16, 64)
    pin: bool = True
    litellm: bool = True
    profile: bool = False
    profile_s: float = 8.0
    experiments: bool = False


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    server_pid: int

    def load(self, concurrency: int, options: ProxyOptions, duration_s: float) -> LoadSpec:
        return LoadSpec(
            host=self.host,
            port=self.port,
            path=self.path,
            body=json.dumps(self.body),
            headers={"Content-Type": "application/json", **self.headers},
            concurrency=concurrency,
            warmup_s=options.warmup_s,
            duration_s=duration_s,
        )


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(server CPUs, harness CPUs, description)."""
    cpus = usable_cpus()
    if not pin or len(cpus) < 2:
        return None, None, f"not pinned ({len(cpus)} CPUs shared by every process)"
    server, harness = {cpus[0]}, set(cpus[1:])
    return (
        server,
        harness,
        f"server under test on CPU {cpus[0]}; upstream and load generator on CPU "
        f"{','.join(map(str, cpus[1:]))}",
    )


# The experiments' ladder (``--experiments``): each step keeps the ones before it.
EXPERIMENTS: tuple[tuple[str, dict[str, str], str], ...] = (
    ("exp-no-persist", {"ORCHESTRATOR_PERSIST": "0"}, "product"),
    ("exp-sdk-post", {"ORCHESTRATOR_PERSIST": "0"}, "sdk-post"),
    ("exp-aiohttp", {"ORCHESTRATOR_PERSIST": "0"}, "aiohttp"),
    ("exp-rawhttp", {"ORCHESTRATOR_PERSIST": "0"}, "rawhttp"),
)


def run_proxy_bench(options: ProxyOptions) -> dict[str, Any]:
    """Runs every target at every concurrency; returns the JSON document of the results."""
    started = time.time()
    load_before = load_average()
    build_images("test")
    server_cpus, harness_cpus, pinning = cpu_plan(options.pin)
    run_id = uuid.uuid4().hex[:10]
    instances: list[str] = []
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    work_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-"))

    def orchestrator(
        stack: ExitStack, name: str, upstream_url: str, env: dict[str, str], provider: str
    ) -> list[Target]:
        instance = f"bench-{run_id}-{len(instances)}"
        instances.append(instance)
        base_dir = work_dir / instance
        child = stack.enter_context(
            Child(
                f"orchestrator-{name}",
                python_module("bench.orchestrator_server", "--sleep-job", "--provider", provider),
                env={**orchestrator_env(instance, base_dir, upstream_url), **env},
                cpus=server_cpus,
                ready_timeout_s=180,
            )
        )
        port, job_id = int(child.ready["http_port"]), child.ready["job_id"]
        auth = {"Authorization": f"Bearer {child.ready['token']}"}
        targets = [
            Target(
                name,
                "127.0.0.1",
                port,
                f"/worker/{job_id}/llm/complete",
                auth,
                {"messages": MESSAGES, "max_tokens": MAX_TOKENS},
                child.pid,
            )
        ]
        if name == "ironclaw":
            targets.append(
                Target(
                    "ironclaw-openai",
                    "127.0.0.1",
                    port,
                    f"/worker/{job_id}/openai/v1/chat/completions",
                    auth,
                    {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
                    child.pid,
                )
            )
        return targets

    def measure_all(targets: list[Target]) -> None:
        for concurrency in options.concurrencies:
            for target in targets:
                rows.append(_measure(target, concurrency, options, harness_cpus))

    def profile(target: Target) -> None:
        if options.profile:
            result = _profile(target, options, harness_cpus, notes)
            if result is not None:
                profiles[target.name] = result

    try:
        with ExitStack() as stack:
            upstream = stack.enter_context(
                Child("upstream", python_module("bench.upstream"), cpus=harness_cpus)
            )
            upstream_port = int(upstream.ready["port"])
            upstream_url = f"http://127.0.0.1:{upstream_port}/v1"
            direct = Target(
                "direct",
                "127.0.0.1",
                upstream_port,
                "/v1/chat/completions",
                {"Authorization": f"Bearer {UPSTREAM_KEY}"},
                {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
                upstream.pid,
            )
            with ExitStack() as servers:
                targets = [direct, *orchestrator(servers, "ironclaw", upstream_url, {}, "product")]
                if options.litellm:
                    litellm = _start_litellm(servers, work_dir, upstream_url, server_cpus, notes)
                    if litellm is not None:
                        targets.append(litellm)
                else:
                    notes.append("LiteLLM skipped (--no-litellm).")
                if options.experiments:
                    # All variants run side by side, idle but for the one under load, and are
                    # measured in turn at each concurrency: drift on a shared machine then
                    # affects them alike.
                    for name, env, provider in EXPERIMENTS:
                        targets += orchestrator(servers, name, upstream_url, env, provider)
                measure_all(targets)
                for target in targets:
                    if target.name.startswith(("ironclaw", "exp-")):
                        profile(target)
    finally:
        remove_containers(*instances)
        shutil.rmtree(work_dir, ignore_errors=True)
    _add_comparisons(rows)
    return {
        "benchmark": "proxy",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "concurrencies": list(options.concurrencies),
            "pinning": pinning,
            "request": {"messages": MESSAGES, "max_tokens": MAX_TOKENS},
            "litellm": litellm_proxy.LITELLM_SPEC if options.litellm else None,
            "experiments": [name for name, _, _ in EXPERIMENTS] if options.experiments else [],
            "cpus": len(usable_cpus()),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "results": rows,
        "targets": evaluate_targets(rows),
        "profiles": profiles,
        "notes": notes,
    }


def orchestrator_env(instance: str, base_dir: Path, upstream_url: str) -> dict[str, str]:
    """The orchestrator's settings: provider ``openai`` at the upstream, budgets unlimited (0)
    so the load is never refused, and everything on loopback: the worker API listens on
    127.0.0.1 and the sleep job's container shares the host's network to reach it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "ORCHESTRATOR_"))}
    env.update(
        {
            "IRONCLAW_BASE_DIR": str(base_dir),
            "ORCHESTRATOR_INSTANCE": instance,
            "ORCHESTRATOR_BIND": "127.0.0.1",
            "ORCHESTRATOR_PORT": "0",
            "ORCHESTRATOR_HTTP_PORT": "0",
            "ORCHESTRATOR_HTTP_BIND": "127.0.0.1",
            # The tag build-images.sh gave it (IRONCLAW_IMAGE_TAG), not another checkout's.
            "WORKER_IMAGE": f"ironclaw-test-agent:{os.environ.get('IRONCLAW_IMAGE_TAG', 'latest')}",
            "WORKER_NETWORK": "host",
            # The job's container shares the host's network (above), not an isolated one.
            "JOB_NETWORK": "bridge",
            "WORKER_MEMORY_MB": "256",
            "STOP_GRACE_S": "2",
            "LLM_PROVIDER": "openai",
            "LLM_BASE_URL": upstream_url,
            "OPENAI_API_KEY": UPSTREAM_KEY,
            "LLM_MODEL": "gpt-4o-mini",
            # One load generator on loopback stands for many jobs, each of which would come
            # from its own address: one source may hold as many connections as they would.
            "ORCHESTRATOR_HTTP_MAX_CONNECTIONS_PER_SOURCE": "4096",
            "JOB_LLM_CALL_BUDGET": "0",
            "JOB_LLM_TOKEN_BUDGET": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        }
    )
    env.pop("ANTHROPIC_API_KEY", None)
    return env


def _start_litellm(
    stack: ExitStack,
    workdir: Path,
    upstream_url: str,
    cpus: set[int] | None,
    notes: list[str],
) -> Target | None:
    try:
        executable = litellm_proxy.ensure_venv(LOG_DIR / "litellm-install.log")
        port = free_port()
        config = litellm_proxy.write_config(workdir, upstream_url)
        child = litellm_proxy.start(executable, config, port, cpus)
    except BenchError as exc:
        notes.append(f"LiteLLM column skipped: {exc}")
        return None
    stack.callback(child.stop)
    return Target(
        "litellm",
        "127.0.0.1",
        port,
        "/v1/chat/completions",
        {"Authorization": f"Bearer {litellm_proxy.MASTER_KEY}"},
        {"model": litellm_proxy.MODEL_NAME, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        child.pid,
    )


def _run_load(spec: LoadSpec, name: str, cpus: set[int] | None) -> dict[str, Any]:
    env = {**os.environ, SPEC_VARIABLE: spec.to_json()}
    with Child(name, python_module("bench.loadgen"), env=env, cpus=cpus, wait_ready=False) as child:
        lines = child.output_lines(spec.warmup_s + spec.duration_s + 60)
    if not lines:
        raise BenchError(f"{name} printed no result:\n{child.log_tail()}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _measure(
    target: Target, concurrency: int, options: ProxyOptions, cpus: set[int] | None
) -> dict[str, Any]:
    spec = target.load(concurrency, options, options.duration_s)
    cpu_before = cpu_seconds(target.server_pid)
    result = _run_load(spec, f"loadgen-{target.name}-c{concurrency}", cpus)
    cpu_used = cpu_seconds(target.server_pid) - cpu_before
    served = result["requests_incl_warmup"]
    latency = result["latency_ms"]
    row = {
        "target": target.name,
        "concurrency": concurrency,
        "requests": result["ok"],
        "errors": result["errors"],
        "rps": round(result["rps"], 1),
        "p50_ms": latency.get("p50"),
        "p90_ms": latency.get("p90"),
        "p99_ms": latency.get("p99"),
        "max_ms": latency.get("max"),
        "mean_ms": latency.get("mean"),
        # CPU time of the server process(es) per request, warm-up included: robust to other
        # work on the machine, unlike req/s. For direct, it is the fake upstream's own cost.
        "server_cpu_ms_per_request": cpu_used * 1000 / served if served and cpu_used else None,
    }
    # What one core given wholly to the server would sustain at that cost per request.
    cpu_ms = row["server_cpu_ms_per_request"]
    row["cpu_bound_rps_per_core"] = 1000 / cpu_ms if cpu_ms else None
    if result["errors"]:
        row["first_error"] = result["first_error"]
    print(
        f"bench: proxy {target.name:15} c={concurrency:<3} {row['rps']:>8.0f} req/s  "
        f"p50 {_ms(row['p50_ms'])}  p99 {_ms(row['p99_ms'])}  "
        f"cpu/req {_ms(row['server_cpu_ms_per_request'])}  errors {row['errors']}",
        flush=True,
    )
    return row


def _ms(value: float | None) -> str:
    return "   -   " if value is None else f"{value:7.3f} ms"


def _profile(
    target: Target, options: ProxyOptions, cpus: set[int] | None, notes: list[str]
) -> dict[str, Any] | None:
    """py-spy on the orchestrator while the proxy is under load at concurrency 16."""
    duration = options.profile_s
    spec = target.load(16, options, duration)
    output = LOG_DIR.parent / f"proxy-profile-{target.name}.collapsed"
    try:
        with profile_process(target.server_pid, duration + options.warmup_s, output) as finished:
            load = _run_load(spec, f"loadgen-profile-{target.name}", cpus)
        summary = finished()
    except (BenchError, FileNotFoundError, subprocess.SubprocessError) as exc:
        notes.append(f"profile of {target.name} skipped: {exc}")
        return None
    summary["load"] = {"concurrency": 16, "rps_while_profiled": round(load["rps"], 1)}
    return summary


def _add_comparisons(rows: list[dict[str, Any]]) -> None:
    by_key = {(r["target"], r["concurrency"]): r for r in rows}
    for row in rows:
        direct = by_key.get(("direct", row["concurrency"]))
        if direct is None or row["target"] == "direct":
            continue
        for q in ("p50", "p99"):
            mine, base = row.get(f"{q}_ms"), direct.get(f"{q}_ms")
            if mine is not None and base is not None:
                row[f"added_{q}_ms"] = mine - base


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 3's targets, each with the measured value and whether it is met."""
    checks: list[dict[str, Any]] = []
    for target, label in (("ironclaw", "llm/complete"), ("ironclaw-openai", "OpenAI route")):
        checks += _evaluate(rows, target, label)
    return checks


def _evaluate(rows: list[dict[str, Any]], target: str, label: str) -> list[dict[str, Any]]:
    by_key = {(r["target"], r["concurrency"]): r for r in rows}
    checks: list[dict[str, Any]] = []
    one = by_key.get((target, 1))
    if one is not None and "added_p50_ms" in one:
        checks.append(
            _check(
                f"{label}: added p50 at concurrency 1 (ms)",
                one["added_p50_ms"],
                f"<= {MAX_ADDED_P50_MS_AT_1}",
                one["added_p50_ms"] <= MAX_ADDED_P50_MS_AT_1,
            )
        )
    for concurrency in (16, 64):
        mine = by_key.get((target, concurrency))
        if mine is None:
            continue
        checks.append(
            _check(
                f"{label}: req/s at concurrency {concurrency}",
                mine["rps"],
                f">= {MIN_RPS_AT_16_64:.0f}",
                mine["rps"] >= MIN_RPS_AT_16_64,
            )
        )
        capacity = mine.get("cpu_bound_rps_per_core")
        if capacity:
            # Not one of the targets: the same bar, from CPU cost instead of a
            # throughput that other work on a shared machine can depress.
            checks.append(
                _check(
                    f"{label}: req/s per core from CPU/request at concurrency {concurrency} "
                    "(projection)",
                    capacity,
                    f">= {MIN_RPS_AT_16_64:.0f}",
                    capacity >= MIN_RPS_AT_16_64,
                )
            )
        theirs = by_key.get(("litellm", concurrency))
        if theirs is None or not theirs["rps"]:
            continue
        ratio = mine["rps"] / theirs["rps"]
        checks.append(
            _check(
                f"{label}: req/s vs LiteLLM at concurrency {concurrency} (x)",
                ratio,
                f">= {MIN_RPS_RATIO_VS_LITELLM:.0f}",
                ratio >= MIN_RPS_RATIO_VS_LITELLM,
            )
        )
        if mine.get("p99_ms") is not None and theirs.get("p99_ms"):
            p99_ratio = mine["p99_ms"] / theirs["p99_ms"]
            checks.append(
                _check(
                    f"{label}: p99 vs LiteLLM at concurrency {concurrency} (x)",
                    p99_ratio,
                    f"<= {MAX_P99_RATIO_VS_LITELLM}",
                    p99_ratio <= MAX_P99_RATIO_VS_LITELLM,
                )
            )
    return checks


def _check(name: str, value: float, target: str, met: bool) -> dict[str, Any]:
    return {"check": name, "value": round(value, 3), "target": target, "met": met}
