"""Warm start (issue 19): ``CreateJob`` → the job's first worker-API call, for a job that claims
a warm-pool container, against a cold start by the same orchestrator and a raw ``docker
create`` + ``start`` of the same image, in one run; then 20 claims one after the other against
a burst of 20 at once.

* ``warm``: the real orchestrator in its own process with ``WARM_POOL=worker=20`` and the
  production defaults (``JOB_NETWORK=isolated``: each slot already on its own network behind
  its relay). The job names no project, so it claims a slot; its first call is the agent's
  ``GET /worker/{id}/job`` after the claim, as the orchestrator reports it.
* ``cold``: the same orchestrator; the job names a project directory, which a running
  container cannot be given, so it starts cold (network, relay, container), as without a pool.
* ``raw docker``: the start benchmark's baseline (``start_bench._RawDocker``): the docker SDK
  creating and starting the same image with the same host config, calling a tiny server.

Rounds rotate the order of the three; each round starts once the pool is full again, so no
refill runs under a measurement. Then 20 warm jobs are created one after the other (each once
the previous one's first call arrived) and, the pool full again, 20 at once from 20 threads:
the burst's wall time (first request → last first call) against the sequential one's. Every
job's model is a script that keeps it in one long shell command until the driver stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.docker_util import build_images, docker_client, remove_containers
from bench.procs import Child, load_average, python_module
from bench.start_bench import PHASES, StartOptions, _RawDocker, _sample, start_env
from bench.stats import summarize
from orchestrator.jobs.projects import create_job_project_dir
from orchestrator.settings import Settings

POOL_SIZE = 20
WARM_P50_MS = 150.0
WARM_P99_MS = 400.0
TASK = "bench: warm start (stopped after the first call)"
SLEEP_SCRIPT = """\
- content: "Waiting."
  tool_calls:
    - name: shell
      arguments: {command: "sleep 600", timeout: 900}
- content: "Done."
"""
_READY_LINE = re.compile(r'^ironclaw_warm_pool_slots\{mode="worker",state="ready"\} (\S+)$', re.M)


@dataclass(frozen=True)
class WarmOptions:
    samples: int = 30
    warmup: int = 1
    burst: int = POOL_SIZE
    first_call_timeout_s: float = 60.0
    refill_timeout_s: float = 300.0


def run_warm_bench(options: WarmOptions) -> dict[str, Any]:
    """Runs the rounds, the sequential claims and the burst; returns the JSON document."""
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    started = time.time()
    load_before = load_average()
    build_images("worker")
    instance = f"bench-{uuid.uuid4().hex[:10]}"
    raw_instance = f"{instance}-raw"
    base_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-"))
    env = start_env(instance, base_dir)
    # The tag build-images.sh gave the image (IRONCLAW_IMAGE_TAG): the slots' entry point must
    # be this checkout's.
    env["WORKER_IMAGE"] = f"ironclaw-worker:{os.environ.get('IRONCLAW_IMAGE_TAG', 'latest')}"
    env["WARM_POOL"] = f"worker={max(POOL_SIZE, options.burst)}"
    # Jobs that stay up (in one long shell command) until the driver stops them, as real jobs
    # do: without a model a job fails at once, and its teardown would run under the burst.
    script = base_dir / "sleep.yaml"
    script.write_text(SLEEP_SCRIPT)
    env.update({"LLM_PROVIDER": "scripted", "LLM_SCRIPT": str(script)})
    env["METRICS_PORT"] = "0"
    settings = Settings.from_env(env)
    client = docker_client()
    samples: dict[str, list[dict[str, float]]] = {"warm": [], "cold": [], "raw": []}
    try:
        with Child(
            "orchestrator-warm",
            python_module("bench.orchestrator_server"),
            env=env,
            ready_timeout_s=120,
        ) as orchestrator:
            gateway = str(orchestrator.ready["http_host"])
            pool = _PoolWatch(int(orchestrator.ready["metrics_port"]), POOL_SIZE)
            with Child(
                "first-call-server", python_module("bench.first_call_server", "--host", gateway)
            ) as raw_server:
                channel = grpc.insecure_channel(f"127.0.0.1:{orchestrator.ready['grpc_port']}")
                stub = pb_grpc.JobServiceStub(channel)
                driver = _Driver(stub, pb, orchestrator, options, base_dir)
                raw = _RawDocker(client, settings, raw_instance, base_dir, raw_server)
                raw_options = StartOptions(first_call_timeout_s=options.first_call_timeout_s)
                pool.wait_full(options.refill_timeout_s)
                kinds = ("warm", "cold", "raw")
                for index in range(options.warmup + options.samples):
                    order = kinds[index % 3 :] + kinds[: index % 3]
                    for kind in order:
                        if kind == "raw":
                            sample, _ = raw.run(raw_options, keep=False)
                        else:
                            sample = driver.one(warm=kind == "warm")
                        if index >= options.warmup:
                            samples[kind].append(sample)
                    pool.wait_full(options.refill_timeout_s)
                    if index >= options.warmup:
                        print(
                            f"bench: warm {index - options.warmup + 1:>2}"
                            + "".join(
                                f"  {k} {samples[k][-1]['first_call_ms']:7.1f} ms" for k in kinds
                            ),
                            flush=True,
                        )
                sequential_s = driver.sequential(options.burst)
                pool.wait_full(options.refill_timeout_s)
                burst_s, burst_ms = driver.burst(options.burst)
                channel.close()
    finally:
        remove_containers(instance, raw_instance)
        client.close()
        shutil.rmtree(base_dir, ignore_errors=True)
    document = _document(options, samples, sequential_s, burst_s, burst_ms, started)
    document["config"]["load_average_before"] = load_before
    document["config"]["load_average_after"] = load_average()
    return document


class _PoolWatch:
    """The pool's ready slots, as the orchestrator's ``/metrics`` shows them."""

    def __init__(self, metrics_port: int, size: int) -> None:
        self._url = f"http://127.0.0.1:{metrics_port}/metrics"
        self._size = size

    def ready(self) -> int:
        with urllib.request.urlopen(self._url, timeout=5) as response:
            text = response.read().decode()
        match = _READY_LINE.search(text)
        return int(float(match.group(1))) if match else 0

    def wait_full(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self.ready() < self._size:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the warm pool did not refill to {self._size} in {timeout_s} s")
            time.sleep(0.1)


class _Driver:
    """Creates jobs over gRPC and waits for their first call, as the start benchmark does."""

    def __init__(
        self, stub: Any, pb: Any, orchestrator: Child, options: WarmOptions, base: Path
    ) -> None:
        self._stub, self._pb, self._orch, self._options = stub, pb, orchestrator, options
        self._projects = base / "projects"

    def _create(self, job_id: str, warm: bool) -> None:
        pb = self._pb
        project = "" if warm else str(create_job_project_dir(self._projects, f"named-{job_id}"))
        request = pb.CreateJobRequest(
            task=TASK, job_id=job_id, mode=pb.JOB_MODE_WORKER, project_dir=project
        )
        self._stub.CreateJob(request, timeout=120)

    def _first_call(self, job_id: str) -> int:
        return self._first_calls([job_id])[job_id]

    def _first_calls(self, ids: list[str]) -> dict[str, int]:
        """When each job's first call arrived (other messages are dropped on the way)."""
        deadline = time.monotonic() + self._options.first_call_timeout_s
        pending, seen = set(ids), {}
        while pending:
            message = self._orch.wait_message(
                lambda m: m.get("event") == "first_call" and m.get("job_id") in pending,
                deadline - time.monotonic(),
            )
            job_id = str(message["job_id"])
            seen[job_id] = int(message["t_ns"])
            pending.discard(job_id)
        return seen

    def _stop(self, job_id: str) -> None:
        pb = self._pb
        self._stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=120)
        self._stub.CleanupJob(pb.CleanupJobRequest(job_id=job_id), timeout=60)

    def one(self, warm: bool) -> dict[str, float]:
        job_id = str(uuid.uuid4())
        t0 = time.monotonic_ns()
        self._create(job_id, warm)
        returned = time.monotonic_ns()
        first = self._first_call(job_id)
        self._stop(job_id)
        return _sample(t0, t0, returned, returned, first)

    def sequential(self, count: int) -> float:
        """``count`` warm jobs, each created once the previous one's first call arrived."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        t0 = time.monotonic_ns()
        last = t0
        for job_id in ids:
            self._create(job_id, warm=True)
            last = self._first_call(job_id)
        elapsed = (last - t0) / 1e9
        for job_id in ids:
            self._stop(job_id)
        return elapsed

    def burst(self, count: int) -> tuple[float, list[float]]:
        """``count`` warm jobs created at once from as many threads: the wall time until the
        last first call, and each job's first-call latency (ms)."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        gate = threading.Barrier(count + 1)
        errors: list[BaseException] = []

        def create(job_id: str) -> None:
            gate.wait()
            try:
                self._create(job_id, warm=True)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(job_id,)) for job_id in ids]
        for thread in threads:
            thread.start()
        t0 = time.monotonic_ns()
        gate.wait()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"{len(errors)} CreateJob of the burst failed: {errors[0]}")
        arrived = self._first_calls(ids)
        firsts = [arrived[job_id] for job_id in ids]
        for job_id in ids:
            self._stop(job_id)
        return (max(firsts) - t0) / 1e9, [(first - t0) / 1e6 for first in firsts]


def _document(
    options: WarmOptions,
    samples: dict[str, list[dict[str, float]]],
    sequential_s: float,
    burst_s: float,
    burst_ms: list[float],
    started: float,
) -> dict[str, Any]:
    summary = {
        kind: {key: summarize([s[key] for s in rows]) for key in PHASES if key in rows[0]}
        for kind, rows in samples.items()
    }
    warm = summary["warm"]["first_call_ms"]
    cold = summary["cold"]["first_call_ms"]
    raw = summary["raw"]["first_call_ms"]
    targets = [
        {
            "check": "warm CreateJob → first call, p50 (ms)",
            "value": round(warm["p50"], 1),
            "target": f"<= {WARM_P50_MS:.0f}",
            "met": warm["p50"] <= WARM_P50_MS,
        },
        {
            "check": "warm CreateJob → first call, p99 (ms)",
            "value": round(warm["p99"], 1),
            "target": f"<= {WARM_P99_MS:.0f}",
            "met": warm["p99"] <= WARM_P99_MS,
        },
        {
            "check": f"burst of {options.burst} claims vs {options.burst} sequential (wall time)",
            "value": round(burst_s / sequential_s, 3),
            "target": "<= 1.00",
            "met": burst_s <= sequential_s,
        },
    ]
    return {
        "benchmark": "warm",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "samples": options.samples,
            "warmup_rounds": options.warmup,
            "pool": f"worker={POOL_SIZE}",
            "job_network": "isolated (default)",
            "interleaved": "the three kinds in rotating order, each round on a full pool",
        },
        "summary": summary,
        "warm_vs_raw_ratio_of_medians": warm["p50"] / raw["p50"],
        "warm_vs_cold_ratio_of_medians": warm["p50"] / cold["p50"],
        "sequential": {"count": options.burst, "wall_s": sequential_s},
        "burst": {
            "count": options.burst,
            "wall_s": burst_s,
            "first_call_ms": summarize(burst_ms),
        },
        "targets": targets,
        "samples": samples,
    }


def render_warm(document: dict[str, Any]) -> str:
    """The benchmark's tables: the three start paths, then the burst."""
    from bench.stats import markdown_table

    rows = []
    for kind, label in (("warm", "warm (claims a slot)"), ("cold", "cold"), ("raw", "raw docker")):
        first = document["summary"][kind]["first_call_ms"]
        returned = document["summary"][kind]["api_returned_ms"]
        rows.append(
            [
                label,
                len(document["samples"][kind]),
                first["p50"],
                first["p99"],
                first["min"],
                first["max"],
                returned["p50"],
            ]
        )
    table = markdown_table(
        ["start path", "n", "p50 ms", "p99 ms", "min ms", "max ms", "CreateJob returned p50 ms"],
        rows,
    )
    burst, sequential = document["burst"], document["sequential"]
    burst_table = markdown_table(
        ["claims", "wall s", "per job ms (p50 / max)"],
        [
            [f"{sequential['count']} sequential", sequential["wall_s"], "-"],
            [
                f"{burst['count']} at once",
                burst["wall_s"],
                f"{burst['first_call_ms']['p50']:.1f} / {burst['first_call_ms']['max']:.1f}",
            ],
        ],
    )
    return f"### warm start\n\n{table}\n\n{burst_table}"
