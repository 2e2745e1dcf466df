"""Control-plane latency with a long history (issue 8, item 2).

* The orchestrator runs in its own process (``bench.orchestrator_server --sleep-job``: real
  Docker backend, SQLite store) after its store was filled with N ended jobs
  (``bench.history``, default 10,000), which it restores at start; plus one live job (test
  agent, task ``sleep``) whose token the server hands over.
* **RPC latency**, from this (the driver's) process with a blocking gRPC stub over loopback:
  ``GetJob`` of a random history job, ``ListJobs(page_size=100)`` first page and last page of
  the history (``page_token`` = N - 100), against ``grpc.health.v1.Health/Check`` on the same
  server: the floor of a gRPC round trip there. The kinds are interleaved call by call.
* **WatchJob fan-out**: W streams on the live job in a separate process
  (``bench.watchers``); the driver posts an event through the worker API with the job's token
  (``POST /worker/{id}/event``) and takes the time from just before the request until the last
  (and first) stream received it. Baselines: the same with a single stream, and the same 100
  streams on ``bench.fanout_floor``: grpc.aio and aiohttp with nothing else, each event
  serialized once (what the transport alone costs on this machine).
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.docker_util import build_images, remove_containers
from bench.history import populate_store
from bench.procs import LOG_DIR, BenchError, Child, cpu_seconds, load_average, python_module
from bench.profiling import profile_process
from bench.proxy_bench import orchestrator_env
from bench.stats import summarize

TARGET_RPC_P99_MS = 20.0
TARGET_FANOUT_P99_MS = 10.0
KINDS = ("health", "get", "list_first", "list_last")


@dataclass(frozen=True)
class ControlPlaneOptions:
    history: int = 10_000
    rpc_rounds: int = 2000
    warmup_rounds: int = 200
    watchers: int = 100
    events: int = 50
    event_gap_s: float = 0.05
    profile: bool = True


def run_controlplane_bench(options: ControlPlaneOptions) -> dict[str, Any]:
    started = time.time()
    load_before = load_average()
    build_images("test")
    instance = f"bench-cp-{uuid.uuid4().hex[:10]}"
    base_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-cp-"))
    notes: list[str] = []
    try:
        t = time.monotonic()
        populate_store(base_dir / "orchestrator.db", options.history, base_dir / "projects")
        notes.append(
            f"store of {options.history} ended jobs written in {time.monotonic() - t:.1f} s"
        )
        env = orchestrator_env(instance, base_dir, "http://127.0.0.1:9")
        t = time.monotonic()
        with Child(
            "orchestrator-controlplane",
            python_module("bench.orchestrator_server", "--sleep-job"),
            env=env,
            ready_timeout_s=240,
        ) as server:
            notes.append(
                f"orchestrator start with restore + sleep job's first call: "
                f"{time.monotonic() - t:.1f} s"
            )
            ready = server.ready
            target = f"127.0.0.1:{ready['grpc_port']}"
            rpc, total_jobs = _rpc_latency(target, options)
            pid = int(ready["pid"])
            fanout = {
                f"{count}x{procs}": _fanout(ready, target, count, procs, options, pid)
                for count, procs in ((1, 1), (options.watchers, 1), (options.watchers, 4))
            }
            profiles = _profiles(ready, target, options, pid) if options.profile else {}
        fanout[f"{options.watchers}x1-floor"] = _floor(options)
    finally:
        remove_containers(instance)
        shutil.rmtree(base_dir, ignore_errors=True)
    document = _document(options, rpc, fanout, total_jobs, notes, started, load_before)
    document["profiles"] = profiles
    return document


def _rpc_latency(target: str, options: ControlPlaneOptions) -> tuple[dict[str, list[float]], int]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(target)
    stub = pb_grpc.JobServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    # Every job id, page by page (also checks that the whole history was restored).
    ids: list[str] = []
    token = ""
    while True:
        page = stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
        ids.extend(job.job_id for job in page.jobs)
        token = page.next_page_token
        if not token:
            break
    rng = random.Random(8)
    last_token = str(options.history - 100)
    calls: dict[str, Callable[[], Any]] = {
        "health": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
        "get": lambda: stub.GetJob(pb.GetJobRequest(job_id=rng.choice(ids)), timeout=10),
        "list_first": lambda: stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=10),
        "list_last": lambda: stub.ListJobs(
            pb.ListJobsRequest(page_size=100, page_token=last_token), timeout=10
        ),
    }
    check = calls["list_last"]()
    if len(check.jobs) != 100:
        raise RuntimeError(f"last page of the history holds {len(check.jobs)} jobs, not 100")
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for index in range(options.warmup_rounds + options.rpc_rounds):
        order = KINDS[index % 4 :] + KINDS[: index % 4]
        for kind in order:
            t0 = time.perf_counter_ns()
            calls[kind]()
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            if index >= options.warmup_rounds:
                samples[kind].append(elapsed)
    channel.close()
    return samples, len(ids)


def _fanout(
    ready: dict[str, Any],
    target: str,
    count: int,
    procs: int,
    options: ControlPlaneOptions,
    server_pid: int,
    events: int | None = None,
) -> dict[str, Any]:
    """``count`` watchers spread over ``procs`` client processes; one event at a time."""
    job_id, token = str(ready["job_id"]), str(ready["token"])
    events = options.events if events is None else events
    last: list[float] = []
    first: list[float] = []
    post: list[float] = []
    per_proc = count // procs
    with ExitStack() as stack:
        children = [
            stack.enter_context(
                Child(
                    f"watchers-{count}-{procs}-{n}",
                    python_module(
                        "bench.watchers",
                        "--target",
                        target,
                        "--job",
                        job_id,
                        "--count",
                        str(per_proc),
                    ),
                    ready_timeout_s=90,
                )
            )
            for n in range(procs)
        ]
        conn = http.client.HTTPConnection(str(ready["http_host"]), int(ready["http_port"]))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        warmup = 5
        cpu_server = cpu_clients = 0.0
        for i in range(warmup + events):
            if i == warmup:
                cpu_server = cpu_seconds(server_pid)
                cpu_clients = sum(cpu_seconds(child.pid) for child in children)
            body = json.dumps({"event_type": "message", "data": {"i": i}})
            t0 = time.monotonic_ns()
            conn.request("POST", f"/worker/{job_id}/event", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            returned = time.monotonic_ns()
            if response.status != 200:
                raise RuntimeError(f"POST event answered {response.status}")
            messages = [child.wait_message(_is_fanout(i), 30) for child in children]
            if i >= warmup:
                last.append((max(int(m["last_ns"]) for m in messages) - t0) / 1e6)
                first.append((min(int(m["first_ns"]) for m in messages) - t0) / 1e6)
                post.append((returned - t0) / 1e6)
            time.sleep(options.event_gap_s)
        cpu_server = cpu_seconds(server_pid) - cpu_server
        cpu_clients = sum(cpu_seconds(child.pid) for child in children) - cpu_clients
        conn.close()
    return {
        "watchers": count,
        "client_processes": procs,
        "events": events,
        "all_received_ms": summarize(last),
        "first_received_ms": summarize(first),
        "post_returned_ms": summarize(post),
        # Includes the idle gaps' background work (small: reaper, exit watcher).
        "server_cpu_ms_per_event": cpu_server * 1000 / events,
        "clients_cpu_ms_per_event": cpu_clients * 1000 / events,
        "samples_all_received_ms": last,
    }


def _floor(options: ControlPlaneOptions) -> dict[str, Any]:
    """The fan-out to the same watchers from ``bench.fanout_floor``."""
    with Child("fanout-floor", python_module("bench.fanout_floor"), ready_timeout_s=60) as floor:
        ready = floor.ready
        target = f"127.0.0.1:{ready['grpc_port']}"
        result = _fanout(ready, target, options.watchers, 1, options, int(ready["pid"]))
    return {**result, "floor": True}


def _is_fanout(i: int) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("event") == "fanout" and m.get("i") == i


def _profiles(
    ready: dict[str, Any], target: str, options: ControlPlaneOptions, server_pid: int
) -> dict[str, Any]:
    """py-spy on the server while it answers ListJobs (first page) in a loop, and while it fans
    events out to the watchers (after the measured runs: the profiler perturbs)."""
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    profiles: dict[str, Any] = {}
    duration = 4.0
    try:
        with profile_process(
            server_pid, duration, LOG_DIR.parent / "controlplane-profile-list.collapsed"
        ) as finished:
            channel = grpc.insecure_channel(target)
            stub = pb_grpc.JobServiceStub(channel)
            deadline = time.monotonic() + duration
            calls = 0
            while time.monotonic() < deadline:
                stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=10)
                calls += 1
            channel.close()
        profiles["list_jobs"] = {**finished(), "calls": calls}
        with profile_process(
            server_pid, duration, LOG_DIR.parent / "controlplane-profile-fanout.collapsed"
        ) as finished:
            fast = ControlPlaneOptions(event_gap_s=0.0)
            _fanout(ready, target, options.watchers, 1, fast, server_pid, events=200)
        profiles["fanout"] = finished()
    except (BenchError, FileNotFoundError, subprocess.SubprocessError) as exc:
        profiles["skipped"] = str(exc)
    return profiles


def _document(
    options: ControlPlaneOptions,
    rpc: dict[str, list[float]],
    fanout: dict[str, dict[str, Any]],
    total_jobs: int,
    notes: list[str],
    started: float,
    load_before: list[float],
) -> dict[str, Any]:
    summary = {kind: summarize(values) for kind, values in rpc.items()}
    floor = summary["health"]
    for kind in KINDS[1:]:
        summary[kind]["added_p50"] = summary[kind]["p50"] - floor["p50"]
        summary[kind]["added_p99"] = summary[kind]["p99"] - floor["p99"]
    many = fanout[f"{options.watchers}x1"]["all_received_ms"]
    floor_run = fanout.get(f"{options.watchers}x1-floor")
    if floor_run is not None:
        received = floor_run["all_received_ms"]
        notes.append(
            f"fan-out floor (bench.fanout_floor: grpc.aio + aiohttp alone, each event serialized "
            f"once) to the same {options.watchers} watchers: p50 {received['p50']:.2f} ms, p99 "
            f"{received['p99']:.2f} ms, server CPU {floor_run['server_cpu_ms_per_event']:.2f} "
            "ms/event"
        )
    targets = [
        {
            "check": f"{kind} p99 ({total_jobs} jobs tracked)",
            "value": round(summary[kind]["p99"], 2),
            "target": f"<= {TARGET_RPC_P99_MS:g} ms",
            "met": summary[kind]["p99"] <= TARGET_RPC_P99_MS,
        }
        for kind in ("get", "list_first", "list_last")
    ]
    targets.append(
        {
            "check": f"event → all {options.watchers} watchers, p99",
            "value": round(many["p99"], 2),
            "target": f"<= {TARGET_FANOUT_P99_MS:g} ms",
            "met": many["p99"] <= TARGET_FANOUT_P99_MS,
        }
    )
    return {
        "benchmark": "controlplane",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "history_jobs": options.history,
            "jobs_tracked": total_jobs,
            "rpc_rounds": options.rpc_rounds,
            "warmup_rounds": options.warmup_rounds,
            "watchers": options.watchers,
            "events": options.events,
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "rpc_ms": summary,
        "fanout": fanout,
        "targets": targets,
        "notes": notes,
        "samples_ms": rpc,
    }
