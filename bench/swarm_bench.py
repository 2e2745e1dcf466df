"""Jobs on a real three-node Docker Swarm (``CONTAINER_BACKEND=swarm``): start latency, a
burst spread over the nodes, and how fast a dead node's job is marked lost, in one run.

Set-up: the three-node Swarm of the Swarm tests (``tests/swarm/cluster.py``: one more dockerd
per network namespace, 1 s dispatcher heartbeat), brought up for this run with its own names
and taken down after it whatever happened (also on Ctrl-C). The job image is the Swarm tests'
(``tests/swarm/Dockerfile.swarm-job``: the real worker agent on the base image), loaded into
every node. Two real orchestrators run in their own processes (``bench.orchestrator_server``),
both with the same job image, ``JOB_NETWORK=bridge`` and the same scripted model (one shell
turn, then done; the shell turn holds while the project has a ``.hold`` file):

* ``swarm``: ``CONTAINER_BACKEND=swarm`` against the cluster's manager, worker API on the host's
  address on the nodes' network; otherwise the product's defaults (``SWARM_POLL_INTERVAL_S``
  0.5).
* ``docker``: the single-host Docker backend on this host's engine (worker API on the bridge
  gateway).
* ``raw service create``: the baseline. The driver creates, through the manager's API
  (``POST /services/create``, what ``docker service create --detach`` sends), the service the
  Swarm backend would create for the job (the same pure builders: ``build_container_spec``,
  ``build_service``), pointed at ``bench.first_call_server`` on the same host address.

**First call**, the one definition for all three: the job's first request to the worker API
(its ``GET /worker/{id}/job``) as the server on the host takes it in its handler (the
orchestrator's after the token check), on ``time.monotonic_ns()``, from just before the driver
sent ``CreateJob`` (or the create call). It implies the task was running.

1. **Start**: N jobs one after the other of each kind (N=10, ``--quick`` 5, after one warm-up
   round; the order rotates per round), each once the previous one has ended: p50/p95.
2. **Burst**: 30 ``CreateJob`` calls released at once from 30 threads, against 30 raw service
   creates at once: the time until all 30 made their first call, until every task was running
   (the manager's task timestamps), and (jobs) until all 30 ended, each COMPLETED; where the
   tasks ran (jobs per node, read by polling the manager's task list); none lost.
3. **Node loss**: a job held on a worker node (its project has ``.hold``); once it made its
   first call, that node's dockerd gets SIGKILL; the time until the job is Failed with
   NODE_LOST (its ``finished_at`` minus the kill), next to when the manager marked the node
   Down. 3 times (``--quick`` once), alternating between the two worker nodes, each brought
   back (and Ready) before the next.

Targets (ambitious on purpose): Swarm CreateJob → first call p50 ≤ 1.5x raw service create's;
burst throughput (all first calls) ≥ 0.8x raw's; no job lost, all 30 COMPLETED; a lost node's
job Failed with NODE_LOST within 5 s (heartbeat 1 s), every time. Docker backend vs Swarm is
reported, not targeted: one host against a cluster.

Needs root (network namespaces, more dockerd); takes ``/tmp/ironclaw-swarm.lock`` (the Swarm
tests' lock) for the whole run, so it never runs beside another three-node cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.burst_bench import _collect_first_calls, _parallel
from bench.docker_util import build_images, remove_containers
from bench.procs import LOG_DIR, BenchError, Child, load_average, python_module
from bench.start_bench import _RawDocker, start_env
from bench.stats import markdown_table, percentile, summarize
from orchestrator.containers.spec import LABEL_INSTANCE, LABEL_JOB_ID
from orchestrator.containers.swarm_spec import SwarmPlacement, build_service
from orchestrator.settings import Settings
from tests.swarm.cluster import (
    JOB_IMAGE,
    ZONE_LABEL,
    ClusterError,
    SwarmCluster,
    SwarmNode,
    build_job_image,
    daemon_running,
    missing_requirement,
    node_ready,
    restart_node,
    running_cluster,
)

LOCK_PATH = Path("/tmp/ironclaw-swarm.lock")
MAX_START_RATIO = 1.5
MIN_BURST_RATIO = 0.8
MAX_NODE_LOSS_S = 5.0
HOLD_FILE = ".hold"
SCRIPT = f"""\
- content: "Checking whether to wait."
  tool_calls:
    - name: shell
      arguments: {{command: "if [ -e {HOLD_FILE} ]; then sleep 600; fi; echo go", timeout: 900}}
- content: "Done."
"""
TASK = "bench: swarm (one shell turn, then done)"
KINDS = ("swarm", "raw service create", "docker")


@dataclass(frozen=True)
class SwarmOptions:
    samples: int = 10
    warmup: int = 1
    burst: int = 30
    node_losses: int = 3
    first_call_timeout_s: float = 90.0
    end_timeout_s: float = 180.0
    node_back_timeout_s: float = 90.0
    settle_s: float = 0.5


@contextlib.contextmanager
def swarm_lock() -> Iterator[None]:
    """The Swarm tests' lock (``flock /tmp/ironclaw-swarm.lock``): one cluster at a time."""
    with LOCK_PATH.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench: swarm waits for {LOCK_PATH} (another Swarm cluster runs)", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_swarm_bench(options: SwarmOptions) -> dict[str, Any]:
    """Brings the cluster up, runs the three parts, takes everything down; the JSON document."""
    missing = missing_requirement()
    if missing:
        raise BenchError(f"swarm: {missing}")
    started = time.time()
    load_before = load_average()
    build_images("worker")
    try:
        build_job_image()
    except ClusterError as exc:
        raise BenchError(str(exc)) from exc
    with swarm_lock():
        try:
            with running_cluster("bench", logs_to=LOG_DIR) as cluster:
                document = _run_on(cluster, options)
        except ClusterError as exc:
            raise BenchError(f"swarm: {exc}") from exc
    document.update(
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        elapsed_s=round(time.time() - started, 1),
    )
    document["config"].update(load_average_before=load_before, load_average_after=load_average())
    return document


def _run_on(cluster: SwarmCluster, options: SwarmOptions) -> dict[str, Any]:
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    run_id = uuid.uuid4().hex[:8]
    instances = {kind: f"bench-swarm-{run_id}-{kind.split()[0]}" for kind in KINDS}
    base_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-swarm-"))
    script = base_dir / "script.yaml"
    script.write_text(SCRIPT)
    common = {
        "JOB_NETWORK": "bridge",
        "WORKER_IMAGE": cluster.job_image,
        "LLM_PROVIDER": "scripted",
        "LLM_SCRIPT": str(script),
    }
    swarm_env = {
        **start_env(instances["swarm"], base_dir / "swarm"),
        **common,
        "CONTAINER_BACKEND": "swarm",
        "SWARM_MANAGER_URL": cluster.manager.socket,
        "ORCHESTRATOR_HTTP_BIND": cluster.host_address,
    }
    docker_env = {**start_env(instances["docker"], base_dir / "docker"), **common}
    manager = _manager_client(cluster, options.burst)
    try:
        with (
            Child(
                "orchestrator-swarm",
                python_module("bench.orchestrator_server"),
                env=swarm_env,
                ready_timeout_s=120,
            ) as swarm_orch,
            Child(
                "orchestrator-swarm-docker",
                python_module("bench.orchestrator_server"),
                env=docker_env,
                ready_timeout_s=120,
            ) as docker_orch,
            Child(
                "first-call-server-swarm",
                python_module("bench.first_call_server", "--host", cluster.host_address),
            ) as raw_server,
        ):
            swarm_channel = grpc.insecure_channel(f"127.0.0.1:{swarm_orch.ready['grpc_port']}")
            docker_channel = grpc.insecure_channel(f"127.0.0.1:{docker_orch.ready['grpc_port']}")
            jobs = {
                "swarm": _Jobs(pb_grpc.JobServiceStub(swarm_channel), pb, swarm_orch, options),
                "docker": _Jobs(pb_grpc.JobServiceStub(docker_channel), pb, docker_orch, options),
            }
            raw = _RawService(
                manager,
                cluster,
                Settings.from_env(swarm_env),
                instances["raw service create"],
                base_dir,
                raw_server,
                options,
            )
            notes: list[str] = []
            try:
                start = _start_part(jobs, raw, options)
                _all_nodes_up(cluster, options.node_back_timeout_s, notes=notes, when="the starts")
                burst = _burst_part(jobs["swarm"], raw, manager, cluster, options, notes)
                losses = _node_loss_part(
                    jobs["swarm"], cluster, base_dir / "swarm" / "projects", options, notes
                )
            finally:
                swarm_channel.close()
                docker_channel.close()
                raw.remove_all()
    finally:
        # The orchestrators drained their jobs when they stopped; whatever is left goes too.
        _remove_services(manager.api, instances.values())
        manager.close()
        remove_containers(instances["docker"])
        shutil.rmtree(base_dir, ignore_errors=True)
    document = _document(options, cluster, start, burst, losses)
    document["notes"] = notes
    return document


def _manager_client(cluster: SwarmCluster, pool: int) -> Any:
    import docker

    return docker.DockerClient(base_url=cluster.manager.socket, timeout=60, max_pool_size=pool)


def _remove_services(api: Any, instances: Iterable[str]) -> None:
    """Removes every service labelled with one of ``instances`` (on the manager's API)."""
    for instance in instances:
        with contextlib.suppress(Exception):
            for service in api.services(filters={"label": f"{LABEL_INSTANCE}={instance}"}):
                with contextlib.suppress(Exception):
                    api.remove_service(service["ID"])


class _Jobs:
    """One orchestrator's control plane: create a job, learn its first call and its end."""

    def __init__(self, stub: Any, pb: Any, server: Child, options: SwarmOptions) -> None:
        self._stub = stub
        self._pb = pb
        self._server = server
        self._options = options

    def create(self, job_id: str, project_dir: str = "", zone: str = "") -> int:
        """Sends CreateJob; returns the monotonic ns when it answered."""
        pb = self._pb
        request = pb.CreateJobRequest(
            task=TASK, job_id=job_id, mode=pb.JOB_MODE_WORKER, project_dir=project_dir
        )
        if zone:
            request.placement.CopyFrom(pb.JobPlacement(node_labels={ZONE_LABEL: zone}))
        self._stub.CreateJob(request, timeout=self._options.first_call_timeout_s)
        return time.monotonic_ns()

    def first_call(self, job_id: str) -> int:
        message = self._server.wait_message(
            lambda m: m.get("event") == "first_call" and m.get("job_id") == job_id,
            self._options.first_call_timeout_s,
        )
        return int(message["t_ns"])

    def first_calls(self, job_ids: set[str]) -> dict[str, int]:
        return _collect_first_calls(self._server, job_ids, self._options.first_call_timeout_s)

    def get(self, job_id: str) -> Any:
        return self._stub.GetJob(self._pb.GetJobRequest(job_id=job_id), timeout=30).job

    def wait_for(self, job_id: str, predicate: Callable[[Any], bool], timeout_s: float) -> Any:
        """The job once ``predicate`` holds for it (polled)."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise BenchError(f"job {job_id}: not as awaited within {timeout_s:.0f} s")
            time.sleep(0.1)

    def terminal(self, job: Any) -> bool:
        return job.state in (self._pb.JOB_STATE_STOPPED, self._pb.JOB_STATE_FAILED)

    def wait_ended(self, job_ids: list[str], timeout_s: float) -> dict[str, Any]:
        """Each job once it is terminal (polled); those that never ended are missing."""
        ended: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while len(ended) < len(job_ids) and time.monotonic() < deadline:
            for job_id in job_ids:
                if job_id not in ended:
                    job = self.get(job_id)
                    if self.terminal(job):
                        ended[job_id] = job
            time.sleep(0.2)
        return ended

    def completed(self, job: Any) -> bool:
        pb = self._pb
        return bool(
            job.state == pb.JOB_STATE_STOPPED and job.result.reason == pb.TERMINAL_REASON_COMPLETED
        )

    def reason(self, job: Any) -> str:
        return str(self._pb.TerminalReason.Name(job.result.reason))


class _RawService:
    """The baseline: the service the Swarm backend would create for a job, created directly
    through the manager's API (what ``docker service create --detach`` sends)."""

    def __init__(
        self,
        manager: Any,
        cluster: SwarmCluster,
        settings: Settings,
        instance: str,
        base_dir: Path,
        server: Child,
        options: SwarmOptions,
    ) -> None:
        self._api = manager.api
        self._cluster = cluster
        # Builds the job's container spec exactly as the orchestrator would (same settings).
        self._specs = _RawDocker(
            manager, settings, instance, base_dir, server, cluster.host_address
        )
        self._settings = settings
        self._instance = instance
        self._server = server
        self._options = options
        self._placement = SwarmPlacement(
            constraints=settings.swarm_constraints,
            reserve_nano_cpus=round(settings.swarm_reserve_cpus * 1e9),
            reserve_memory_bytes=settings.swarm_reserve_memory_bytes,
        )
        config = self._api.inspect_image(settings.worker_image).get("Config") or {}
        self._argv = (list(config.get("Entrypoint") or []), list(config.get("Cmd") or []))

    def create(self, job_id: str) -> int:
        """Creates the job's service; returns the monotonic ns when the manager answered."""
        spec = self._specs.spec(job_id)
        spec = dataclasses.replace(spec, labels={**spec.labels, LABEL_INSTANCE: self._instance})
        service = build_service(
            spec,
            placement=self._placement,
            image_entrypoint=self._argv[0],
            image_cmd=self._argv[1],
            guard_no_new_privileges=not self._settings.swarm_allow_new_privileges,
            stop_grace_s=self._settings.stop_grace_s,
        )
        self._api.create_service(
            service.task_template,
            name=f"{service.name}-raw",
            labels=service.labels,
            mode=service.mode,
        )
        return time.monotonic_ns()

    def first_call(self, job_id: str) -> int:
        message = self._server.wait_message(
            lambda m: m.get("event") == "first_call" and m.get("job_id") == job_id,
            self._options.first_call_timeout_s,
        )
        return int(message["t_ns"])

    def first_calls(self, job_ids: set[str]) -> dict[str, int]:
        return _collect_first_calls(self._server, job_ids, self._options.first_call_timeout_s)

    def remove_all(self) -> None:
        """Removes every raw service, then waits (bounded) until their containers are gone
        from the nodes, so no teardown runs under the next measurement (the orchestrator's
        jobs, too, are waited for until they ended)."""
        _remove_services(self._api, [self._instance])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self._containers_left():
            time.sleep(0.2)

    def _containers_left(self) -> bool:
        label = f"{LABEL_INSTANCE}={self._instance}"
        for node in self._cluster.nodes:
            with contextlib.suppress(Exception):
                client = node.client()
                try:
                    if client.api.containers(all=True, filters={"label": label}):
                        return True
                finally:
                    client.close()
        return False


def _start_part(
    jobs: dict[str, _Jobs], raw: _RawService, options: SwarmOptions
) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for index in range(options.warmup + options.samples):
        warm = index < options.warmup
        order = KINDS[index % 3 :] + KINDS[: index % 3]
        for kind in order:
            job_id = str(uuid.uuid4())
            wall = time.time()
            t0 = time.monotonic_ns()
            if kind == "raw service create":
                returned = raw.create(job_id)
                first = raw.first_call(job_id)
                raw.remove_all()
                ended_ms = math.nan
                ok = True
            else:
                returned = jobs[kind].create(job_id)
                first = jobs[kind].first_call(job_id)
                job = jobs[kind].wait_ended([job_id], options.end_timeout_s).get(job_id)
                ok = job is not None and jobs[kind].completed(job)
                ended_ms = _finished_ms(job, wall) if job is not None else math.nan
            sample = {
                "first_call_ms": (first - t0) / 1e6,
                "api_returned_ms": (returned - t0) / 1e6,
                "ended_ms": ended_ms,
                "completed": ok,
            }
            if not warm:
                samples[kind].append(sample)
            time.sleep(options.settle_s)
        if not warm:
            print(
                f"bench: swarm start {index - options.warmup + 1:>2}"
                + "".join(f"  {k} {samples[k][-1]['first_call_ms']:7.1f} ms" for k in KINDS),
                flush=True,
            )
    return samples


def _finished_ms(job: Any, since_wall: float) -> float:
    finished = job.finished_at.seconds + job.finished_at.nanos / 1e9
    return (finished - since_wall) * 1000 if finished else math.nan


class _TaskWatch:
    """Polls the manager's task list while a burst runs: which node each job's task ran on,
    and when the manager saw it running (its own timestamp), for services that the
    orchestrator removes as soon as their job ends."""

    def __init__(self, manager: Any, interval_s: float = 0.3) -> None:
        self._api = manager.api
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._nodes: dict[str, str] = {}
        self.node_of: dict[str, str] = {}
        self.running_at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._loop, name="task-watch", daemon=True)

    def __enter__(self) -> _TaskWatch:
        self._nodes = {node["ID"]: node["Description"]["Hostname"] for node in self._api.nodes()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._read()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._read()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for task in self._api.tasks():
                labels = (task.get("Spec") or {}).get("ContainerSpec", {}).get("Labels") or {}
                job_id = labels.get(LABEL_JOB_ID)
                if not job_id:
                    continue
                if task.get("NodeID"):
                    self.node_of[job_id] = self._nodes.get(task["NodeID"], task["NodeID"])
                status = task.get("Status") or {}
                if status.get("State") == "running" and job_id not in self.running_at:
                    self.running_at[job_id] = _parse_timestamp(str(status.get("Timestamp", "")))

    def per_node(self, job_ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job_id in job_ids:
            node = self.node_of.get(job_id, "unknown")
            counts[node] = counts.get(node, 0) + 1
        return dict(sorted(counts.items()))


def _parse_timestamp(text: str) -> float:
    """The engine's RFC 3339 timestamp (nanoseconds) as seconds since the epoch."""
    if not text:
        return math.nan
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def _burst_part(
    jobs: _Jobs,
    raw: _RawService,
    manager: Any,
    cluster: SwarmCluster,
    options: SwarmOptions,
    notes: list[str],
) -> list[dict[str, Any]]:
    results = []
    for kind in ("swarm", "raw service create"):
        _all_nodes_up(
            cluster, options.node_back_timeout_s, notes=notes, when=f"before the {kind} burst"
        )
        job_ids = [str(uuid.uuid4()) for _ in range(options.burst)]
        creator = jobs.create if kind == "swarm" else raw.create
        with _TaskWatch(manager) as watch:
            released, returned = _parallel(
                options.burst, functools.partial(_create_nth, creator, job_ids)
            )
            waiter = jobs if kind == "swarm" else raw
            arrived = waiter.first_calls(set(job_ids))
            ended: dict[str, Any] = {}
            if kind == "swarm":
                ended = jobs.wait_ended(job_ids, options.end_timeout_s)
        released_wall = _wall_of(released)
        first = sorted((t - released) / 1e6 for t in arrived.values())
        running = sorted(
            (watch.running_at[j] - released_wall) * 1000 for j in job_ids if j in watch.running_at
        )
        result: dict[str, Any] = {
            "kind": kind,
            "jobs": options.burst,
            "lost": options.burst - len(arrived),
            "all_first_calls_ms": first[-1] if len(first) == options.burst else math.nan,
            "first_call_ms": summarize(first),
            "all_running_ms": running[-1] if len(running) == options.burst else math.nan,
            "running_seen": len(running),
            "api_returned_ms": summarize([(t - released) / 1e6 for t in returned]),
            "per_node": watch.per_node(job_ids),
        }
        if kind == "swarm":
            finished = sorted(_finished_ms(job, released_wall) for job in ended.values())
            result.update(
                ended=len(ended),
                completed=sum(1 for job in ended.values() if jobs.completed(job)),
                reasons=sorted({jobs.reason(job) for job in ended.values()}),
                all_ended_ms=finished[-1] if len(finished) == options.burst else math.nan,
            )
        else:
            raw.remove_all()
        results.append(result)
        print(
            f"bench: swarm burst {kind:<18} all first calls {result['all_first_calls_ms']:8.0f} "
            f"ms, lost {result['lost']}, per node {result['per_node']}",
            flush=True,
        )
        time.sleep(options.settle_s * 4)
    return results


def _create_nth(create: Callable[[str], int], job_ids: list[str], index: int) -> int:
    return create(job_ids[index])


def _wall_of(monotonic_ns: int) -> float:
    """The wall-clock time (epoch seconds) of a past ``time.monotonic_ns()`` reading."""
    return time.time() - (time.monotonic_ns() - monotonic_ns) / 1e9


def _node_loss_part(
    jobs: _Jobs, cluster: SwarmCluster, projects: Path, options: SwarmOptions, notes: list[str]
) -> list[dict[str, Any]]:
    losses = []
    for index in range(options.node_losses):
        _all_nodes_up(
            cluster, options.node_back_timeout_s, notes=notes, when=f"before node loss {index + 1}"
        )
        node = cluster.nodes[2 - index % 2]  # the two workers in turn
        job_id = str(uuid.uuid4())
        project = projects / f"held-{index}"
        project.mkdir(parents=True)
        (project / HOLD_FILE).touch()
        for path in (project, project / HOLD_FILE):
            os.chown(path, 1000, 1000)
        jobs.create(job_id, project_dir=str(project), zone=node.zone)
        jobs.first_call(job_id)
        # Its model call answered: the agent is in its shell turn, waiting on the file.
        jobs.wait_for(job_id, lambda job: job.usage.calls >= 1, options.first_call_timeout_s)
        killed_wall = time.time()
        killed = time.monotonic()
        os.kill(node.daemon_pid(), signal.SIGKILL)
        down_s = math.nan
        job = None
        try:
            deadline = killed + 60
            while time.monotonic() < deadline:
                if math.isnan(down_s) and not node_ready(cluster, node.hostname):
                    down_s = time.monotonic() - killed
                current = jobs.get(job_id)
                if jobs.terminal(current):
                    job = current
                    break
                time.sleep(0.1)
        finally:
            # Only once the killed daemon is gone (a zombie counts as gone): dockerd refuses to
            # start while its pid file names a live process.
            gone_by = time.monotonic() + 10
            while daemon_running(node) and time.monotonic() < gone_by:
                time.sleep(0.05)
            restart_node(cluster, node)
        back = _all_nodes_up(
            cluster,
            options.node_back_timeout_s,
            restarted={node.hostname},
            notes=notes,
            when=f"after node loss {index + 1}",
        )
        failed_s = _finished_ms(job, killed_wall) / 1000 if job is not None else math.nan
        loss = {
            "repeat": index + 1,
            "node": node.hostname,
            "node_not_ready_s": down_s,
            "job_failed_s": failed_s,
            "state": "ended" if job is not None else "still running after 60 s",
            "reason": jobs.reason(job) if job is not None else "-",
            "message_names_node": job is not None and node.hostname in job.result.message,
            "node_back_ready_s": back,
        }
        losses.append(loss)
        print(
            f"bench: swarm node loss {index + 1}: {node.hostname} not Ready after "
            f"{down_s:.1f} s, job {loss['reason']} after {failed_s:.1f} s",
            flush=True,
        )
    return losses


def _all_nodes_up(
    cluster: SwarmCluster,
    timeout_s: float,
    restarted: Iterable[str] = (),
    notes: list[str] | None = None,
    when: str = "",
) -> float:
    """Waits until every node's dockerd runs and is Ready; returns the seconds it took. A
    dead one is started again (and again every 10 s while it stays dead), said in ``notes``
    with its log's last line: Docker 20.10's Swarm manager has been seen to die by itself here
    while services were removed. ``restarted``: those just started by the caller."""
    started = time.monotonic()
    deadline = started + timeout_s
    last_start = dict.fromkeys(restarted, started)
    while True:
        down: list[SwarmNode] = [n for n in cluster.nodes if not daemon_running(n)]
        for node in down:
            if node.hostname not in last_start and notes is not None:
                notes.append(
                    f"{node.hostname}'s dockerd had died by itself ({when}); started again. "
                    f"Its log's last line: {_last_log_line(cluster, node)}"
                )
            if time.monotonic() - last_start.get(node.hostname, -math.inf) >= 10:
                restart_node(cluster, node)
                last_start[node.hostname] = time.monotonic()
        if not down and all(node_ready(cluster, n.hostname) for n in cluster.nodes):
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise BenchError(f"the Swarm nodes were not all Ready within {timeout_s:.0f} s")
        time.sleep(0.25)


def _last_log_line(cluster: SwarmCluster, node: SwarmNode) -> str:
    log = cluster.state_dir / f"n{node.index}" / "dockerd.log"
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").splitlines()
        panics = [line for line in lines if "panic" in line]
        return (panics[-1] if panics else lines[-1] if lines else "")[:300]
    return ""


def _p(values: list[float], q: float) -> float:
    return percentile(sorted(v for v in values if not math.isnan(v)), q)


def _document(
    options: SwarmOptions,
    cluster: SwarmCluster,
    start: dict[str, list[dict[str, float]]],
    burst: list[dict[str, Any]],
    losses: list[dict[str, Any]],
) -> dict[str, Any]:
    start_summary = {}
    for kind, rows in start.items():
        first = [row["first_call_ms"] for row in rows]
        start_summary[kind] = {
            "n": len(rows),
            "first_call_p50_ms": _p(first, 50),
            "first_call_p95_ms": _p(first, 95),
            "first_call_min_ms": min(first, default=math.nan),
            "first_call_max_ms": max(first, default=math.nan),
            "api_returned_p50_ms": _p([row["api_returned_ms"] for row in rows], 50),
            "ended_p50_ms": _p([row["ended_ms"] for row in rows], 50),
            "not_completed": sum(1 for row in rows if not row["completed"]),
        }
    raw_p50 = start_summary["raw service create"]["first_call_p50_ms"]
    for row in start_summary.values():
        row["p50_vs_raw"] = row["first_call_p50_ms"] / raw_p50
    swarm_burst = next(b for b in burst if b["kind"] == "swarm")
    raw_burst = next(b for b in burst if b["kind"] == "raw service create")
    burst_ratio = raw_burst["all_first_calls_ms"] / swarm_burst["all_first_calls_ms"]
    failed = [loss["job_failed_s"] for loss in losses]
    all_lost_typed = all(
        loss["reason"] == "TERMINAL_REASON_NODE_LOST" and loss["message_names_node"]
        for loss in losses
    )
    # A job never marked (NaN) is the worst case, wherever it sits in the list.
    worst_loss = math.nan if any(math.isnan(v) for v in failed) else max(failed, default=math.nan)
    start_ratio = start_summary["swarm"]["p50_vs_raw"]
    targets = [
        {
            "check": "CreateJob → first call on the Swarm vs raw service create, p50 ratio",
            "value": round(start_ratio, 3),
            "target": f"<= {MAX_START_RATIO:g}",
            "met": start_ratio <= MAX_START_RATIO,
        },
        {
            "check": f"burst of {options.burst}: throughput (all first calls) vs raw service "
            "create",
            "value": round(burst_ratio, 3),
            "target": f">= {MIN_BURST_RATIO:g}",
            "met": burst_ratio >= MIN_BURST_RATIO,
        },
        {
            "check": f"burst of {options.burst}: jobs lost / not COMPLETED",
            "value": f"{swarm_burst['lost']} / {options.burst - swarm_burst['completed']}",
            "target": "0 / 0",
            "met": swarm_burst["lost"] == 0 and swarm_burst["completed"] == options.burst,
        },
        {
            "check": f"node killed → job Failed NODE_LOST, worst of {len(losses)} (s)",
            "value": round(worst_loss, 2),
            "target": f"<= {MAX_NODE_LOSS_S:g}, NODE_LOST naming the node",
            "met": all_lost_typed and worst_loss <= MAX_NODE_LOSS_S,
        },
    ]
    return {
        "benchmark": "swarm",
        "config": {
            "nodes": len(cluster.nodes),
            "dispatcher_heartbeat_s": 1,
            "swarm_poll_interval_s": Settings.from_env({}).swarm_poll_interval_s,
            "job_image": JOB_IMAGE,
            "samples": options.samples,
            "warmup_rounds": options.warmup,
            "burst": options.burst,
            "node_losses": options.node_losses,
            "cluster_bring_up_s": round(cluster.bring_up_s, 1),
            "image_load_s": round(cluster.image_load_s, 1),
            "first_call": "the job's first worker-API request, as the server on the host takes "
            "it, from just before CreateJob / the create call",
        },
        "start": start_summary,
        "burst": burst,
        "node_loss": losses,
        "targets": targets,
        "notes": [],
        "samples": start,
    }


def render_swarm(document: dict[str, Any]) -> str:
    """The markdown tables of one run."""
    start_rows = [
        [
            kind,
            row["n"],
            row["first_call_p50_ms"],
            row["first_call_p95_ms"],
            row["first_call_min_ms"],
            row["first_call_max_ms"],
            row["api_returned_p50_ms"],
            row["ended_p50_ms"],
            row["p50_vs_raw"],
        ]
        for kind, row in document["start"].items()
    ]
    burst_rows = [
        [
            row["kind"],
            row["jobs"],
            row["all_first_calls_ms"],
            row["all_running_ms"],
            row.get("all_ended_ms"),
            row["first_call_ms"].get("p50"),
            ", ".join(f"{node}: {n}" for node, n in row["per_node"].items()),
            row["lost"],
            row.get("completed", "-"),
        ]
        for row in document["burst"]
    ]
    loss_rows = [
        [
            row["repeat"],
            row["node"],
            row["node_not_ready_s"],
            row["job_failed_s"],
            row["reason"].removeprefix("TERMINAL_REASON_"),
            "yes" if row["message_names_node"] else "no",
            row["node_back_ready_s"],
        ]
        for row in document["node_loss"]
    ]
    config = document["config"]
    return "\n".join(
        [
            f"{config['nodes']}-node Swarm up in {config['cluster_bring_up_s']} s, job image "
            f"loaded in {config['image_load_s']} s; first call = {config['first_call']}",
            "",
            markdown_table(
                [
                    "start path",
                    "n",
                    "first call p50 ms",
                    "p95 ms",
                    "min ms",
                    "max ms",
                    "API returned p50 ms",
                    "job ended p50 ms",
                    "p50 vs raw",
                ],
                start_rows,
            ),
            "",
            markdown_table(
                [
                    "burst",
                    "jobs",
                    "all first calls ms",
                    "all tasks running ms",
                    "all ended ms",
                    "first call p50 ms",
                    "tasks per node",
                    "lost",
                    "COMPLETED",
                ],
                burst_rows,
            ),
            "",
            markdown_table(
                [
                    "node loss",
                    "node killed",
                    "manager: not Ready s",
                    "job Failed s",
                    "reason",
                    "message names node",
                    "node back Ready s",
                ],
                loss_rows,
            ),
            "",
            markdown_table(
                ["target", "measured", "wanted", "met"],
                [
                    [c["check"], c["value"], c["target"], "yes" if c["met"] else "NO"]
                    for c in document["targets"]
                ],
            ),
            *[f"note: {note}" for note in document["notes"]],
        ]
    )
