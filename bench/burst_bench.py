"""Start bursts (issue 8, item 1): N ``CreateJob`` calls at once until every worker's first
API call has arrived, against N raw docker ``create_container`` + ``start`` in parallel.

The set-up is the start benchmark's (``bench.start_bench``): the real orchestrator in its own
process with production defaults (``ironclaw-worker:latest``, bridge network, worker API on
the gateway), and for the baseline the same container spec (``build_container_spec``, same
``HostConfig`` mapping) pointed at ``bench.first_call_server``. Orchestrator side: N threads
of this process each send one ``CreateJob`` (blocking stub, one shared channel). Raw side: N
threads each run ``create_container`` + ``start`` (one docker client, a pool of N
connections: what the orchestrator's Docker backend has with its 32 workers).

Per burst: **makespan** = last first call - the moment the burst was released; throughput =
N / makespan; per-job first-call latency p50/max; jobs whose first call never came are lost.
Bursts alternate (orchestrator first in even rounds), each after the previous containers are
gone. Target: orchestrator throughput ≥ 0.9x raw Docker's; nothing lost.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.docker_util import build_images, remove_containers
from bench.procs import BenchError, Child, load_average, python_module
from bench.start_bench import _RawDocker, start_env
from bench.stats import summarize
from orchestrator.settings import Settings

MIN_THROUGHPUT_RATIO = 0.9
TASK = "bench: start burst (stopped after the first call)"


@dataclass(frozen=True)
class BurstOptions:
    sizes: tuple[int, ...] = (20, 50)
    rounds: int = 3
    first_call_timeout_s: float = 120.0
    settle_s: float = 2.0


def run_burst_bench(options: BurstOptions) -> dict[str, Any]:
    import docker
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    started = time.time()
    load_before = load_average()
    build_images("worker")
    instance = f"bench-burst-{uuid.uuid4().hex[:10]}"
    raw_instance = f"{instance}-raw"
    base_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-burst-"))
    env = start_env(instance, base_dir)
    settings = Settings.from_env(env)
    bursts: list[dict[str, Any]] = []
    client = docker.DockerClient.from_env(timeout=120, max_pool_size=max(options.sizes))
    try:
        with Child(
            "orchestrator-burst",
            python_module("bench.orchestrator_server"),
            env=env,
            ready_timeout_s=120,
        ) as orchestrator:
            gateway = str(orchestrator.ready["http_host"])
            with Child(
                "first-call-server-burst",
                python_module("bench.first_call_server", "--host", gateway),
            ) as raw_server:
                channel = grpc.insecure_channel(f"127.0.0.1:{orchestrator.ready['grpc_port']}")
                stub = pb_grpc.JobServiceStub(channel)
                raw = _RawDocker(client, settings, raw_instance, base_dir, raw_server)
                for size in options.sizes:
                    for index in range(options.rounds):
                        order = (
                            ("orchestrator", "raw") if index % 2 == 0 else ("raw", "orchestrator")
                        )
                        for kind in order:
                            if kind == "raw":
                                result = _raw_burst(raw, client.api, raw_server, size, options)
                                remove_containers(raw_instance)
                            else:
                                result = _orchestrated_burst(stub, pb, orchestrator, size, options)
                            result.update(size=size, round=index)
                            bursts.append(result)
                            print(
                                f"bench: burst {size:>3} {result['kind']:<12} makespan "
                                f"{result['makespan_ms']:8.0f} ms, lost {result['lost']}",
                                flush=True,
                            )
                            time.sleep(options.settle_s)
                channel.close()
    finally:
        remove_containers(instance, raw_instance)
        client.close()
        shutil.rmtree(base_dir, ignore_errors=True)
    return _document(options, bursts, started, load_before)


def _parallel(size: int, fn: Callable[[int], Any]) -> tuple[int, list[Any]]:
    """Runs ``fn(i)`` for i < size in ``size`` threads released at once; returns the release
    time (monotonic ns) and the results."""
    barrier = threading.Barrier(size + 1)

    def task(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(max_workers=size) as pool:
        futures = [pool.submit(task, i) for i in range(size)]
        time.sleep(0.2)  # every thread waiting at the barrier
        released = time.monotonic_ns()
        barrier.wait()
        return released, [future.result() for future in futures]


def _collect_first_calls(server: Child, job_ids: set[str], timeout_s: float) -> dict[str, int]:
    arrived: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(arrived) < len(job_ids):
            message = server.wait_message(
                lambda m: m.get("event") == "first_call" and m.get("job_id") in job_ids,
                deadline - time.monotonic(),
            )
            arrived[str(message["job_id"])] = int(message["t_ns"])
    except BenchError:
        pass  # the missing ones count as lost
    return arrived


def _orchestrated_burst(
    stub: Any, pb: Any, server: Child, size: int, options: BurstOptions
) -> dict[str, Any]:
    job_ids = [str(uuid.uuid4()) for _ in range(size)]

    def create(i: int) -> int:
        stub.CreateJob(
            pb.CreateJobRequest(task=TASK, job_id=job_ids[i], mode=pb.JOB_MODE_WORKER),
            timeout=options.first_call_timeout_s,
        )
        return time.monotonic_ns()

    released, returned = _parallel(size, create)
    arrived = _collect_first_calls(server, set(job_ids), options.first_call_timeout_s)

    def stop(i: int) -> None:
        stub.StopJob(pb.StopJobRequest(job_id=job_ids[i]), timeout=120)
        stub.CleanupJob(pb.CleanupJobRequest(job_id=job_ids[i]), timeout=60)

    _parallel(size, stop)
    return _result("orchestrator", size, released, returned, arrived)


def _raw_burst(
    raw: _RawDocker, api: Any, server: Child, size: int, options: BurstOptions
) -> dict[str, Any]:
    job_ids = [str(uuid.uuid4()) for _ in range(size)]
    released, launched = _parallel(size, lambda i: raw.launch(job_ids[i], api)[1])
    arrived = _collect_first_calls(server, set(job_ids), options.first_call_timeout_s)
    return _result("raw docker", size, released, launched, arrived)


def _result(
    kind: str, size: int, released: int, returned: list[int], arrived: dict[str, int]
) -> dict[str, Any]:
    latencies = sorted((t - released) / 1e6 for t in arrived.values())
    makespan = latencies[-1] if latencies else float("nan")
    return {
        "kind": kind,
        "lost": size - len(arrived),
        "makespan_ms": makespan,
        "throughput_per_s": len(arrived) / (makespan / 1000) if latencies else 0.0,
        "first_call_ms": summarize(latencies),
        "api_returned_ms": summarize([(t - released) / 1e6 for t in returned]),
    }


def _document(
    options: BurstOptions, bursts: list[dict[str, Any]], started: float, load_before: list[float]
) -> dict[str, Any]:
    summary: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for size in options.sizes:
        rows = {}
        for kind in ("orchestrator", "raw docker"):
            mine = [b for b in bursts if b["size"] == size and b["kind"] == kind]
            spans = sorted(b["makespan_ms"] for b in mine)
            span = statistics.median(spans) if spans else float("nan")
            rows[kind] = {
                "size": size,
                "kind": kind,
                "bursts": len(mine),
                "makespan_ms_median": span,
                "makespan_ms_all": spans,
                "throughput_per_s": size / (span / 1000) if spans else 0.0,
                "first_call_p50_ms": statistics.median(
                    b["first_call_ms"].get("p50", math.nan) for b in mine
                )
                if mine
                else math.nan,
                "lost": sum(b["lost"] for b in mine),
            }
            summary.append(rows[kind])
        orch, raw = rows["orchestrator"], rows["raw docker"]
        ratio = raw["makespan_ms_median"] / orch["makespan_ms_median"]
        orch["throughput_vs_raw"] = ratio
        targets.append(
            {
                "check": f"burst of {size}: throughput vs raw docker (median makespans)",
                "value": round(ratio, 3),
                "target": f">= {MIN_THROUGHPUT_RATIO:g}",
                "met": ratio >= MIN_THROUGHPUT_RATIO,
            }
        )
        targets.append(
            {
                "check": f"burst of {size}: jobs lost",
                "value": orch["lost"],
                "target": "0",
                "met": orch["lost"] == 0,
            }
        )
    return {
        "benchmark": "burst",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "sizes": list(options.sizes),
            "rounds": options.rounds,
            "image": "ironclaw-worker:latest",
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "summary": summary,
        "targets": targets,
        "bursts": bursts,
    }
