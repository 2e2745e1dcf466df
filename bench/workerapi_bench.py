"""The worker API under load (issue 8, item 3).

* **Orchestrator**: the real one in its own process (``bench.orchestrator_server --sleep-jobs
  50``: Docker backend, SQLite store, provider ``openai`` at the fake upstream, budgets
  unlimited), with 50 real jobs (test agent, task ``sleep``, each in its own container) whose
  tokens it hands over.
* **Load**: one load generator process (``bench.loadgen``, a :class:`MixSpec`) opens three
  keep-alive connections per job, each a closed loop on one route with that job's token:
  ``POST /status``, ``POST /event`` and ``POST /llm/complete`` (answered by
  ``bench.upstream``), 150 connections in all. Every status line and event carries its
  connection's request counter, so each one can be looked for afterwards.
* **Baseline**, same run, same server, same load shape: 150 connections in a closed loop on
  ``GET /health`` (no authentication, no body, no job: the floor of a request there).
* **Nothing lost**: for every job, the updates after the load began are read back over the
  control plane (``WatchJob`` with ``from_start`` up to ``GetJob``'s ``last_sequence``): their
  sequence numbers must be contiguous, every status line and event answered 200 must be there
  exactly once and in the order sent, and there must be one usage update per LLM call. After the
  orchestrator has stopped, the same check runs on its SQLite store (what a restart would get
  back).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.docker_util import build_images, remove_containers
from bench.loadgen import COUNTER, SPEC_VARIABLE, ConnectionSpec, MixSpec
from bench.procs import (
    LOG_DIR,
    BenchError,
    Child,
    cpu_seconds,
    load_average,
    python_module,
    usable_cpus,
)
from bench.profiling import profile_process
from bench.proxy_bench import MAX_TOKENS, MESSAGES, cpu_plan, orchestrator_env

ROUTES = ("status", "event", "llm/complete")
BASELINE = "health"
JOBS_READY_TIMEOUT_S = 600
# Read-back of a job's history: the store and the history keep this many updates per job.
HISTORY_LIMIT = 2000


@dataclass(frozen=True)
class WorkerApiOptions:
    jobs: int = 50
    duration_s: float = 10.0
    warmup_s: float = 2.0
    pin: bool = True
    profile: bool = False
    profile_s: float = 6.0


@dataclass
class _Expected:
    """What one job was sent, per route: the counters answered 200 and those unanswered."""

    acked: dict[str, set[int]] = field(default_factory=dict)
    maybe: dict[str, set[int]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)


def run_workerapi_bench(options: WorkerApiOptions) -> dict[str, Any]:
    """Baseline, then the mixed load, then the read-back; returns the JSON document."""
    started = time.time()
    load_before = load_average()
    build_images("test")
    server_cpus, harness_cpus, pinning = cpu_plan(options.pin)
    instance = f"bench-wa-{uuid.uuid4().hex[:10]}"
    base_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-wa-"))
    notes: list[str] = []
    profile: dict[str, Any] | None = None
    try:
        with ExitStack() as stack:
            upstream = stack.enter_context(
                Child("upstream-workerapi", python_module("bench.upstream"), cpus=harness_cpus)
            )
            upstream_url = f"http://127.0.0.1:{upstream.ready['port']}/v1"
            t = time.monotonic()
            server = stack.enter_context(
                Child(
                    "orchestrator-workerapi",
                    python_module("bench.orchestrator_server", "--sleep-jobs", str(options.jobs)),
                    env=orchestrator_env(instance, base_dir, upstream_url),
                    cpus=server_cpus,
                    ready_timeout_s=JOBS_READY_TIMEOUT_S,
                )
            )
            notes.append(
                f"{options.jobs} jobs created and their agents settled in "
                f"{time.monotonic() - t:.1f} s"
            )
            ready = server.ready
            jobs: list[dict[str, str]] = ready["jobs"]
            host, port = "127.0.0.1", int(ready["http_port"])
            grpc_target = f"127.0.0.1:{ready['grpc_port']}"
            baseline = _measure(
                MixSpec(
                    host,
                    port,
                    [ConnectionSpec(BASELINE, "/health", method="GET")] * (3 * len(jobs)),
                    options.warmup_s,
                    options.duration_s,
                ),
                "baseline",
                server.pid,
                harness_cpus,
            )
            if options.profile:
                # Before the measured run, whose updates are the ones read back afterwards.
                profile = _profile(host, port, jobs, options, server.pid, harness_cpus, notes)
            before = _last_sequences(grpc_target, jobs)
            mixed = _measure(
                MixSpec(host, port, _mixed_connections(jobs), options.warmup_s, options.duration_s),
                "mixed",
                server.pid,
                harness_cpus,
            )
            expected = _expected(jobs, mixed["load"]["per_connection"])
            live = _verify_live(grpc_target, jobs, before, expected)
            # Draining stops 50 containers and flushes the store: give it time.
            server.stop(timeout_s=300)
        stored = _verify_store(base_dir / "orchestrator.db", jobs, before, expected)
    finally:
        remove_containers(instance)
        shutil.rmtree(base_dir, ignore_errors=True)
    rows = _rows(baseline, mixed)
    unanswered = sum(len(c["unanswered"]) for c in mixed["load"]["per_connection"])
    verification = {"live": live, "store": stored, "unanswered_requests": unanswered}
    return {
        "benchmark": "workerapi",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "jobs": options.jobs,
            "connections_per_route": options.jobs,
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "pinning": pinning,
            "cpus": len(usable_cpus()),
            "baseline": f"GET /health on the same server, {3 * options.jobs} connections",
            "llm_request": {"messages": MESSAGES, "max_tokens": MAX_TOKENS},
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "results": rows,
        "server_cpu": {
            "baseline_ms_per_request": baseline["cpu_ms_per_request"],
            "mixed_ms_per_request": mixed["cpu_ms_per_request"],
        },
        "verification": verification,
        "targets": _targets(rows, verification),
        "profiles": {"mixed": profile} if profile is not None else {},
        "notes": notes,
    }


def _profile(
    host: str,
    port: int,
    jobs: list[dict[str, str]],
    options: WorkerApiOptions,
    server_pid: int,
    cpus: set[int] | None,
    notes: list[str],
) -> dict[str, Any] | None:
    """py-spy on the orchestrator under the mixed load (not during the measured run)."""
    spec = MixSpec(host, port, _mixed_connections(jobs), 1.0, options.profile_s)
    output = LOG_DIR.parent / "workerapi-profile-mixed.collapsed"
    try:
        with profile_process(server_pid, options.profile_s + 1.0, output) as finished:
            _measure(spec, "profile", server_pid, cpus)
        return finished()
    except (BenchError, FileNotFoundError, subprocess.SubprocessError) as exc:
        notes.append(f"profile skipped: {exc}")
        return None


def _mixed_connections(jobs: list[dict[str, str]]) -> list[ConnectionSpec]:
    """Three connections per job (status, event, LLM call), interleaved job by job."""
    connections = []
    llm_body = json.dumps({"messages": MESSAGES, "max_tokens": MAX_TOKENS})
    for index, job in enumerate(jobs):
        headers = {"Authorization": f"Bearer {job['token']}", "Content-Type": "application/json"}
        prefix = f"/worker/{job['job_id']}"
        # A literal JSON number where the counter goes: the template is replaced textually.
        status = f'{{"message": "wb {index} {COUNTER}", "iteration": {COUNTER}}}'
        event = f'{{"event_type": "message", "data": {{"wb": {index}, "n": {COUNTER}}}}}'
        connections += [
            ConnectionSpec("status", f"{prefix}/status", status, headers=headers),
            ConnectionSpec("event", f"{prefix}/event", event, headers=headers),
            ConnectionSpec("llm/complete", f"{prefix}/llm/complete", llm_body, headers=headers),
        ]
    return connections


def _measure(spec: MixSpec, name: str, server_pid: int, cpus: set[int] | None) -> dict[str, Any]:
    env = {**os.environ, SPEC_VARIABLE: spec.to_json()}
    cpu_before = cpu_seconds(server_pid)
    with Child(
        f"loadgen-workerapi-{name}",
        python_module("bench.loadgen"),
        env=env,
        cpus=cpus,
        wait_ready=False,
    ) as child:
        lines = child.output_lines(spec.warmup_s + spec.duration_s + 60)
    cpu_used = cpu_seconds(server_pid) - cpu_before
    if not lines:
        raise BenchError(f"the {name} load generator printed no result:\n{child.log_tail()}")
    load: dict[str, Any] = json.loads(lines[-1])
    served = load["requests_incl_warmup"]
    cpu_ms = cpu_used * 1000 / served if served else None
    total_rps = sum(label["rps"] for label in load["labels"].values())
    print(
        f"bench: workerapi {name:8} {total_rps:>8.0f} req/s  server CPU/req "
        f"{cpu_ms or 0:.3f} ms  connection errors {load['connection_errors']}",
        flush=True,
    )
    return {"load": load, "cpu_ms_per_request": cpu_ms, "cpu_s": cpu_used}


def _rows(baseline: dict[str, Any], mixed: dict[str, Any]) -> list[dict[str, Any]]:
    floor = baseline["load"]["labels"][BASELINE]
    rows = [_row(f"GET /{BASELINE} (baseline)", floor, baseline["load"]["connections"])]
    rows[0]["server_cpu_ms_per_request"] = baseline["cpu_ms_per_request"]
    labels = mixed["load"]["labels"]
    per_route = mixed["load"]["connections"] // len(ROUTES)
    for route in ROUTES:
        row = _row(f"POST /{route}", labels[route], per_route)
        for q in ("p50", "p99"):
            if row[f"{q}_ms"] is not None and rows[0][f"{q}_ms"] is not None:
                row[f"added_{q}_ms"] = row[f"{q}_ms"] - rows[0][f"{q}_ms"]
        rows.append(row)
    total = {
        "route": "all three routes",
        "connections": mixed["load"]["connections"],
        "rps": round(sum(labels[route]["rps"] for route in ROUTES), 1),
        "requests": sum(labels[route]["requests"] for route in ROUTES),
        "errors": sum(labels[route]["errors"] for route in ROUTES)
        + mixed["load"]["connection_errors"],
        "server_cpu_ms_per_request": mixed["cpu_ms_per_request"],
    }
    rows.append(total)
    for row in rows:
        cpu = row.get("server_cpu_ms_per_request")
        row["cpu_bound_rps_per_core"] = 1000 / cpu if cpu else None
    return rows


def _row(route: str, result: dict[str, Any], connections: int) -> dict[str, Any]:
    latency = result["latency_ms"]
    return {
        "route": route,
        "connections": connections,
        "rps": round(result["rps"], 1),
        "requests": result["requests"],
        "errors": result["errors"],
        "statuses": result["statuses"],
        "p50_ms": latency.get("p50"),
        "p90_ms": latency.get("p90"),
        "p99_ms": latency.get("p99"),
        "max_ms": latency.get("max"),
    }


def _expected(jobs: list[dict[str, str]], per_connection: list[dict[str, Any]]) -> list[_Expected]:
    expected = []
    for index in range(len(jobs)):
        job = _Expected()
        for offset, route in enumerate(ROUTES):
            outcome = per_connection[3 * index + offset]
            unanswered = set(outcome["unanswered"])
            job.sent[route] = outcome["sent"]
            job.maybe[route] = unanswered
            job.acked[route] = set(range(outcome["sent"])) - unanswered - set(outcome["failed"])
        expected.append(job)
    return expected


def _last_sequences(target: str, jobs: list[dict[str, str]]) -> list[int]:
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        return [
            int(stub.GetJob(pb.GetJobRequest(job_id=job["job_id"]), timeout=30).job.last_sequence)
            for job in jobs
        ]


def _verify_live(
    target: str, jobs: list[dict[str, str]], before: list[int], expected: list[_Expected]
) -> dict[str, Any]:
    """Reads every job's updates since ``before`` back over the control plane."""
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    found: list[dict[str, Any]] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        for job, after in zip(jobs, before, strict=True):
            last = stub.GetJob(pb.GetJobRequest(job_id=job["job_id"]), timeout=30).job
            sequences: list[int] = []
            updates: list[tuple[str, Any]] = []
            stream = stub.WatchJob(
                pb.WatchJobRequest(job_id=job["job_id"], from_start=True), timeout=120
            )
            for update in stream:
                if update.sequence > after:
                    sequences.append(update.sequence)
                    kind = update.WhichOneof("update")
                    if kind == "status":
                        updates.append(("status", update.status.message))
                    elif kind == "event":
                        data = update.event.data.fields
                        updates.append(("event", (data["wb"].number_value, data["n"].number_value)))
                    else:
                        updates.append((str(kind), None))
                if update.sequence >= last.last_sequence:
                    stream.cancel()  # type: ignore[no-untyped-call]
                    break
            found.append({"sequences": sequences, "updates": updates, "after": after})
    return _judge(found, expected, last_sequences=True)


def _verify_store(
    path: Path, jobs: list[dict[str, str]], before: list[int], expected: list[_Expected]
) -> dict[str, Any]:
    """The same check on what the orchestrator left in its store once stopped."""
    from orchestrator.domain.jobs import UpdateKind
    from orchestrator.store.base import StoredJob
    from orchestrator.store.sqlite_store import SqliteJobStore

    store = SqliteJobStore(path, history_limit=HISTORY_LIMIT)
    try:
        loaded = {
            job["job_id"]: StoredJob(data, store.read_updates(job["job_id"], 0), None, None)
            for job in jobs
            if (data := store.read_job(job["job_id"])) is not None
        }
    finally:
        asyncio.run(store.close())
    found: list[dict[str, Any]] = []
    for job, after in zip(jobs, before, strict=True):
        sequences: list[int] = []
        updates: list[tuple[str, Any]] = []
        stored = loaded.get(job["job_id"])
        for update in stored.updates if stored is not None else ():
            if update.sequence <= after:
                continue
            if update.kind is UpdateKind.STATUS:
                updates.append(("status", update.payload["message"]))
            elif update.kind is UpdateKind.EVENT:
                data = update.payload["data"]
                updates.append(("event", (data["wb"], data["n"])))
            elif update.kind is UpdateKind.USAGE:
                updates.append(("usage", None))
            else:
                # Stopping the orchestrator ended the job: its last updates are its end.
                continue
            sequences.append(update.sequence)
        found.append({"sequences": sequences, "updates": updates, "after": after})
    return _judge(found, expected, last_sequences=False)


def _judge(
    found: list[dict[str, Any]], expected: list[_Expected], last_sequences: bool
) -> dict[str, Any]:
    """Lost, duplicated, out-of-order and unexpected updates over all jobs."""
    totals = dict.fromkeys(
        (
            "checked_status",
            "checked_events",
            "checked_llm_calls",
            "lost",
            "duplicated",
            "out_of_order",
            "unexpected",
            "sequence_gaps",
        ),
        0,
    )
    examples: list[str] = []
    for index, (got, want) in enumerate(zip(found, expected, strict=True)):
        sequences: list[int] = got["sequences"]
        if last_sequences:
            first = got["after"] + 1
            totals["sequence_gaps"] += len(
                set(range(first, first + len(sequences))) - set(sequences)
            )
        counters, usage, unexpected = _sort_out(index, got["updates"])
        totals["unexpected"] += unexpected
        for route, checked in (("status", "checked_status"), ("event", "checked_events")):
            acked = want.acked[route]
            seen = counters[route]
            missing = acked - set(seen)
            totals[checked] += len(acked)
            totals["lost"] += len(missing)
            totals["duplicated"] += len(seen) - len(set(seen))
            totals["out_of_order"] += sum(1 for a, b in itertools.pairwise(seen) if b <= a)
            totals["unexpected"] += len(set(seen) - acked - want.maybe[route])
            if missing and len(examples) < 5:
                examples.append(f"job {index}: {route} {sorted(missing)[:5]} missing")
        # One usage update per LLM call answered; an unanswered call may have one too.
        llm_ok, llm_maybe = len(want.acked["llm/complete"]), len(want.maybe["llm/complete"])
        totals["checked_llm_calls"] += llm_ok
        totals["lost"] += max(0, llm_ok - usage)
        totals["unexpected"] += max(0, usage - llm_ok - llm_maybe)
        if not llm_ok <= usage <= llm_ok + llm_maybe and len(examples) < 5:
            examples.append(f"job {index}: {usage} usage updates for {llm_ok} LLM calls")
        if sum(want.sent.values()) > HISTORY_LIMIT - 50 and len(examples) < 5:
            # The history keeps the last HISTORY_LIMIT updates: older ones are pruned by design.
            examples.append(f"job {index}: more updates than the history keeps")
    problems = ("lost", "duplicated", "out_of_order", "unexpected", "sequence_gaps")
    return {**totals, "ok": not any(totals[k] for k in problems), "examples": examples}


def _sort_out(index: int, updates: list[tuple[str, Any]]) -> tuple[dict[str, list[int]], int, int]:
    """The counters of job ``index``'s status lines and events in the order found, its usage
    updates, and how many updates were not the benchmark's."""
    counters: dict[str, list[int]] = {"status": [], "event": []}
    usage = unexpected = 0
    prefix = f"wb {index} "
    for kind, value in updates:
        if kind == "status" and str(value).startswith(prefix):
            counters["status"].append(int(str(value)[len(prefix) :]))
        elif kind == "event" and int(value[0]) == index:
            counters["event"].append(int(value[1]))
        elif kind == "usage":
            usage += 1
        else:
            unexpected += 1
    return counters, usage, unexpected


def _targets(rows: list[dict[str, Any]], verification: dict[str, Any]) -> list[dict[str, Any]]:
    total = rows[-1]
    live, stored = verification["live"], verification["store"]
    checked = live["checked_status"] + live["checked_events"]
    return [
        {
            "check": "errors under load (all routes)",
            "value": total["errors"],
            "target": "0",
            "met": total["errors"] == 0,
        },
        {
            "check": f"status lines and events lost, read back over WatchJob ({checked} sent)",
            "value": live["lost"] + live["sequence_gaps"],
            "target": "0 (and none duplicated or out of order)",
            "met": bool(live["ok"]),
        },
        {
            "check": "status lines and events lost, read back from the store after the stop",
            "value": stored["lost"],
            "target": "0 (and none duplicated or out of order)",
            "met": bool(stored["ok"]),
        },
    ]
