"""Job start latency (issue 4): ``CreateJob`` → the worker's first authenticated call arrives,
against a raw ``docker create`` + ``start`` of the same image, with the same host config and
environment, making the same call.

* ``orchestrator``: the real orchestrator in its own process (Docker backend, worker API on the
  bridge gateway); the driver sends ``CreateJob`` over gRPC and the orchestrator reports when
  the job's ``GET /worker/{id}/job`` has passed the token check.
* ``raw docker``: the driver calls the docker SDK directly with the container spec the
  orchestrator would build (the same pure function), pointed at a tiny aiohttp server on the
  bridge gateway that reports the same first ``GET /worker/{id}/job`` and answers 401, after
  which ``ironclaw-worker`` exits.

Both clocks are CLOCK_MONOTONIC (``time.monotonic_ns``), one clock for all processes on the
host. Samples alternate (orchestrator first in even rounds, raw first in odd ones) so drift in
the engine affects both alike; each round starts only after the previous containers are gone.
The orchestrated job is stopped with ``StopJob`` right after its first call.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.docker_util import build_images, docker_client, remove_containers
from bench.procs import Child, load_average, python_module
from bench.stats import summarize
from orchestrator.containers.backend import ContainerSpec
from orchestrator.containers.docker_backend import host_config_arguments
from orchestrator.containers.spec import LABEL_INSTANCE, build_container_spec
from orchestrator.domain.jobs import JobLimits, JobMode
from orchestrator.jobs.projects import create_job_project_dir
from orchestrator.jobs.record import utcnow
from orchestrator.settings import Settings

MAX_RATIO = 1.10
PHASES = (
    "first_call_ms",
    "api_returned_ms",
    "before_engine_ms",
    "engine_create_start_ms",
    "started_to_first_call_ms",
)
TASK = "bench: job start latency (stopped after the first call)"


@dataclass(frozen=True)
class StartOptions:
    samples: int = 10
    warmup: int = 1
    first_call_timeout_s: float = 60.0
    settle_s: float = 0.3


def start_env(instance: str, base_dir: Path) -> dict[str, str]:
    """Production defaults (worker image, memory, network, worker API on the bridge gateway);
    only the ports, the base dir and the instance label are the benchmark's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "ORCHESTRATOR_"))}
    for key in ("WORKER_IMAGE", "WORKER_NETWORK", "WORKER_MEMORY_MB", "WORKER_RUNTIME"):
        env.pop(key, None)
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    env.update(
        {
            "IRONCLAW_BASE_DIR": str(base_dir),
            "ORCHESTRATOR_INSTANCE": instance,
            "ORCHESTRATOR_BIND": "127.0.0.1",
            "ORCHESTRATOR_PORT": "0",
            "ORCHESTRATOR_HTTP_PORT": "0",
            "LLM_PROVIDER": "none",
            "STOP_GRACE_S": "2",
            "LOG_FORMAT": "json",
        }
    )
    return env


def run_start_bench(options: StartOptions) -> dict[str, Any]:
    """Runs the interleaved samples; returns the JSON document of the results."""
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
    settings = Settings.from_env(env)
    client = docker_client()
    samples: dict[str, list[dict[str, float]]] = {"orchestrator": [], "raw": []}
    same_config: dict[str, Any] = {}
    try:
        with Child(
            "orchestrator-start",
            python_module("bench.orchestrator_server"),
            env=env,
            ready_timeout_s=120,
        ) as orchestrator:
            gateway = str(orchestrator.ready["http_host"])
            with Child(
                "first-call-server", python_module("bench.first_call_server", "--host", gateway)
            ) as raw_server:
                channel = grpc.insecure_channel(f"127.0.0.1:{orchestrator.ready['grpc_port']}")
                stub = pb_grpc.JobServiceStub(channel)
                raw = _RawDocker(client, settings, raw_instance, base_dir, raw_server)
                rounds = options.warmup + options.samples
                for index in range(rounds):
                    warm = index < options.warmup
                    # The first round's containers are kept until both are inspected.
                    keep = index == 0
                    order = ("orchestrator", "raw") if index % 2 == 0 else ("raw", "orchestrator")
                    round_ids: dict[str, str] = {}
                    for kind in order:
                        if kind == "orchestrator":
                            sample, job_id = _orchestrated(stub, pb, orchestrator, options, keep)
                        else:
                            sample, job_id = raw.run(options, keep)
                        round_ids[kind] = job_id
                        if not warm:
                            samples[kind].append(sample)
                        time.sleep(options.settle_s)
                    if keep:
                        same_config = compare_containers(client, instance, raw_instance)
                        _stop_kept(stub, pb, raw_instance, round_ids["orchestrator"])
                    print(
                        f"bench: start {'warm-up' if warm else f'{index - options.warmup + 1:>2}'}"
                        + "".join(
                            f"  {k} {samples[k][-1]['first_call_ms']:7.1f} ms"
                            for k in ("orchestrator", "raw")
                            if not warm
                        ),
                        flush=True,
                    )
                channel.close()
    finally:
        remove_containers(instance, raw_instance)
        client.close()
        shutil.rmtree(base_dir, ignore_errors=True)
    document = _document(options, samples, same_config, started)
    document["config"]["load_average_before"] = load_before
    document["config"]["load_average_after"] = load_average()
    return document


def _orchestrated(
    stub: Any, pb: Any, orchestrator: Child, options: StartOptions, keep: bool
) -> tuple[dict[str, float], str]:
    job_id = str(uuid.uuid4())
    request = pb.CreateJobRequest(task=TASK, job_id=job_id, mode=pb.JOB_MODE_WORKER)
    t0 = time.monotonic_ns()
    stub.CreateJob(request, timeout=120)
    returned = time.monotonic_ns()
    deadline = time.monotonic() + options.first_call_timeout_s
    events: dict[str, int] = {}
    while "first_call" not in events:
        message = orchestrator.wait_message(
            lambda m: m.get("job_id") == job_id, deadline - time.monotonic()
        )
        events[str(message["event"])] = int(message["t_ns"])
    if not keep:
        stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=120)
        stub.CleanupJob(pb.CleanupJobRequest(job_id=job_id), timeout=60)
    begin = events.get("container_begin", t0)
    end = events.get("container_end", returned)
    return _sample(t0, begin, end, returned, events["first_call"]), job_id


def _sample(t0: int, begin: int, end: int, returned: int, first_call: int) -> dict[str, float]:
    """One start, in ms from the request: the phases add up to ``first_call_ms``."""
    return {
        "first_call_ms": (first_call - t0) / 1e6,
        "api_returned_ms": (returned - t0) / 1e6,
        "before_engine_ms": (begin - t0) / 1e6,
        "engine_create_start_ms": (end - begin) / 1e6,
        "started_to_first_call_ms": (first_call - end) / 1e6,
    }


def _stop_kept(stub: Any, pb: Any, raw_instance: str, job_id: str) -> None:
    stub.StopJob(pb.StopJobRequest(job_id=job_id), timeout=120)
    stub.CleanupJob(pb.CleanupJobRequest(job_id=job_id), timeout=60)
    remove_containers(raw_instance)


class _RawDocker:
    """The baseline: the docker SDK's low-level API, as plain as a script would use it."""

    def __init__(
        self,
        client: Any,
        settings: Settings,
        instance: str,
        base_dir: Path,
        server: Child,
        server_host: str = "host.docker.internal",
    ) -> None:
        self._api = client.api
        self._settings = settings
        self._instance = instance
        self._projects = base_dir / "raw-projects"
        self._server = server
        # ``server_host``: how the job reaches the server (on a Swarm, the host's address).
        self._url = f"http://{server_host}:{server.ready['port']}"

    def spec(self, job_id: str) -> ContainerSpec:
        """The container spec the orchestrator would build for this job (same settings)."""
        s = self._settings
        limits = JobLimits(
            max_iterations=s.worker_max_iterations,
            timeout_seconds=s.worker_timeout_s,
            memory_mb=s.worker_memory_mb,
            llm_token_budget=s.job_llm_token_budget,
            llm_call_budget=s.job_llm_call_budget,
            llm_max_tokens_per_call=s.job_llm_max_tokens_per_call,
            claude_max_turns=s.claude_max_turns,
            claude_model=s.claude_model,
        )
        now = utcnow()
        spec = build_container_spec(
            settings=s,
            job_id=job_id,
            mode=JobMode.WORKER,
            limits=limits,
            created_at=now,
            token="irc_" + secrets.token_urlsafe(32),
            orchestrator_url=self._url,
            project_dir=str(create_job_project_dir(self._projects, job_id)),
        )
        return spec

    def run(self, options: StartOptions, keep: bool) -> tuple[dict[str, float], str]:
        job_id = str(uuid.uuid4())
        t0, returned, container_id = self.launch(job_id)
        message = self._server.wait_message(
            lambda m: m.get("event") == "first_call" and m.get("job_id") == job_id,
            options.first_call_timeout_s,
        )
        if not keep:
            self._api.remove_container(container_id, force=True)
        return _sample(t0, t0, returned, returned, int(message["t_ns"])), job_id

    def launch(self, job_id: str, api: Any = None) -> tuple[int, int, str]:
        """``create_container`` + ``start`` of the job's container; returns the monotonic ns
        before and after, and the container id (``api``: another client's, for threads)."""
        spec = self.spec(job_id)
        labels = {**spec.labels, LABEL_INSTANCE: self._instance}
        api = api or self._api
        t0 = time.monotonic_ns()
        # The same mapping of the spec to the engine's HostConfig as the Docker backend's.
        host_config = api.create_host_config(**host_config_arguments(spec))
        created = api.create_container(
            image=spec.image,
            command=list(spec.command),
            name=f"{spec.name}-raw",
            environment=dict(spec.env),
            labels=labels,
            user=spec.user,
            working_dir=spec.working_dir,
            host_config=host_config,
            detach=True,
        )
        api.start(created["Id"])
        returned = time.monotonic_ns()
        return t0, returned, str(created["Id"])


# HostConfig fields that differ by construction (the job's own project dir).
_PER_JOB_HOST_FIELDS = frozenset({"Binds"})
_COMPARED_CONFIG_FIELDS = ("Image", "Cmd", "Entrypoint", "User", "WorkingDir")


def compare_containers(client: Any, instance: str, raw_instance: str) -> dict[str, Any]:
    """Inspects one orchestrated and one raw container and lists every difference in their
    HostConfig and in the Config fields that matter (env by variable name)."""
    api = client.api

    def one(label: str) -> dict[str, Any]:
        rows = api.containers(all=True, filters={"label": f"ironclaw.instance={label}"})
        if not rows:
            return {}
        inspected: dict[str, Any] = api.inspect_container(rows[0]["Id"])
        return inspected

    orchestrated, raw = one(instance), one(raw_instance)
    if not orchestrated or not raw:
        return {"compared": False, "reason": "a container was gone before it could be inspected"}
    differences: list[str] = []
    host_a, host_b = orchestrated["HostConfig"], raw["HostConfig"]
    for key in sorted(set(host_a) | set(host_b)):
        if key not in _PER_JOB_HOST_FIELDS and host_a.get(key) != host_b.get(key):
            differences.append(f"HostConfig.{key}: {host_a.get(key)!r} != {host_b.get(key)!r}")
    config_a, config_b = orchestrated["Config"], raw["Config"]
    for key in _COMPARED_CONFIG_FIELDS:
        if config_a.get(key) != config_b.get(key):
            differences.append(f"Config.{key}: {config_a.get(key)!r} != {config_b.get(key)!r}")
    env_a = sorted(e.split("=", 1)[0] for e in config_a.get("Env") or [])
    env_b = sorted(e.split("=", 1)[0] for e in config_b.get("Env") or [])
    if env_a != env_b:
        differences.append(f"Config.Env names: {env_a} != {env_b}")
    return {"compared": True, "identical": not differences, "differences": differences}


def _document(
    options: StartOptions,
    samples: dict[str, list[dict[str, float]]],
    same_config: dict[str, Any],
    started: float,
) -> dict[str, Any]:
    orchestrated = [s["first_call_ms"] for s in samples["orchestrator"]]
    raw = [s["first_call_ms"] for s in samples["raw"]]
    summary = {
        kind: {key: summarize([s[key] for s in rows]) for key in PHASES}
        for kind, rows in samples.items()
    }
    ratio = statistics.median(orchestrated) / statistics.median(raw)
    paired = [a - b for a, b in zip(orchestrated, raw, strict=True)]
    return {
        "benchmark": "start",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "samples": options.samples,
            "warmup_rounds": options.warmup,
            "image": "ironclaw-worker:latest",
            "interleaved": "alternating order, orchestrator first in even rounds",
        },
        "summary": summary,
        "ratio_of_medians": ratio,
        "median_paired_difference_ms": statistics.median(paired),
        "target": {"max_ratio": MAX_RATIO, "met": ratio <= MAX_RATIO},
        "same_container_config": same_config,
        "samples": samples,
    }
