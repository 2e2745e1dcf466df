"""Orchestrator footprint (issue 8, item 4).

* **RSS**: the real orchestrator (``bench.orchestrator_server``: Docker backend, SQLite store,
  gRPC + worker API up) in its own process, started on an empty store (idle) and on stores of
  1,000 (and, without ``--quick``, 10,000) ended jobs written by ``bench.history``. Ended jobs
  stay in the store and are read from it; to make the orchestrator touch every one of them,
  the benchmark pages through all of them with ``ListJobs`` and asks ``GetJob`` for a sample
  before measuring. RSS (``VmRSS``) is the median of 5 reads over 2 s; the per-job figure is
  (RSS - idle RSS) / jobs, and the target is RSS with 10,000 ended jobs within 10 % of idle.
* **Token validation**: ``TokenStore.validate`` in this process with 10 and 10,000 live tokens
  (``timeit``, best of 5 repeats), for the right token and for a wrong one of the same shape.
  Baseline: 10 live tokens; the cost must not grow with the number of tokens.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
import timeit
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.docker_util import remove_containers
from bench.history import populate_store
from bench.procs import Child, load_average, python_module
from bench.proxy_bench import orchestrator_env
from orchestrator.tokens import TOKEN_PREFIX, TokenStore

MAX_TOKEN_GROWTH = 1.5  # validate with 10,000 live tokens vs 10: "must not grow" (noise allowed)
MAX_HISTORY_RSS_GROWTH = 1.10  # RSS with 10,000 ended jobs vs idle


@dataclass(frozen=True)
class FootprintOptions:
    quick: bool = False


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def measure_rss(jobs: int, settle_s: float = 2.0) -> dict[str, Any]:
    instance = f"bench-fp-{uuid.uuid4().hex[:10]}"
    base_dir = Path(tempfile.mkdtemp(prefix="ironclaw-bench-fp-"))
    try:
        if jobs:
            populate_store(base_dir / "orchestrator.db", jobs, base_dir / "projects")
        env = orchestrator_env(instance, base_dir, "http://127.0.0.1:9")
        t = time.monotonic()
        with Child(
            f"orchestrator-footprint-{jobs}",
            python_module("bench.orchestrator_server"),
            env=env,
            ready_timeout_s=240,
        ) as server:
            start_s = time.monotonic() - t
            read = walk_history(f"127.0.0.1:{server.ready['grpc_port']}") if jobs else 0
            time.sleep(settle_s)
            reads = []
            for _ in range(5):
                reads.append(rss_kib(server.pid))
                time.sleep(0.5)
    finally:
        remove_containers(instance)
        shutil.rmtree(base_dir, ignore_errors=True)
    return {
        "jobs_tracked": jobs,
        "rss_kib": statistics.median(reads),
        "rss_reads_kib": reads,
        "start_to_ready_s": round(start_s, 2),
        "jobs_read": read,
    }


def walk_history(target: str) -> int:
    """Reads every job once through the control plane (ListJobs pages, GetJob of a sample);
    returns how many ListJobs showed."""
    import grpc

    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.JobServiceStub(channel)
        token, seen, ids = "", 0, []
        while True:
            page = stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=60)
            seen += len(page.jobs)
            ids.extend(job.job_id for job in page.jobs[::50])
            token = page.next_page_token
            if not token:
                break
        for job_id in ids:
            stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
    return seen


def token_validation(live: int, number: int = 100_000) -> dict[str, Any]:
    store = TokenStore()
    tokens = {}
    for _ in range(live):
        job_id = str(uuid.uuid4())
        tokens[job_id] = store.create_token(job_id)
    # The job checked is in the middle of the dict's insertion order.
    job_id = list(tokens)[live // 2]
    token = tokens[job_id]
    wrong = TOKEN_PREFIX + "x" * (len(token) - len(TOKEN_PREFIX))
    validate = store.validate
    assert validate(job_id, token)
    assert not validate(job_id, wrong)

    def best_us(candidate: str) -> float:
        runs = timeit.repeat(lambda: validate(job_id, candidate), number=number, repeat=5)
        return min(runs) / number * 1e6

    return {"live_tokens": live, "valid_us": best_us(token), "invalid_us": best_us(wrong)}


def run_footprint_bench(options: FootprintOptions) -> dict[str, Any]:
    started = time.time()
    load_before = load_average()
    sizes = (0, 1000) if options.quick else (0, 1000, 10_000)
    rss = [measure_rss(jobs) for jobs in sizes]
    idle = rss[0]["rss_kib"]
    for row in rss:
        row["label"] = (
            "idle (empty store)" if row["jobs_tracked"] == 0 else "ended jobs in the store"
        )
        row["rss_mib"] = row["rss_kib"] / 1024
        if row["jobs_tracked"]:
            row["per_job_kib"] = (row["rss_kib"] - idle) / row["jobs_tracked"]
    tokens = [token_validation(live) for live in (10, 10_000)]
    for row in tokens:
        row["ratio_vs_smallest"] = row["valid_us"] / tokens[0]["valid_us"]
    growth = tokens[-1]["ratio_vs_smallest"]
    per_job = next(row["per_job_kib"] for row in rss if row["jobs_tracked"] == 1000)
    largest = rss[-1]
    growth_history = largest["rss_kib"] / idle
    return {
        "benchmark": "footprint",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "config": {
            "history_sizes": list(sizes),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "rss": rss,
        "tokens": tokens,
        "targets": [
            {
                "check": "token validate, 10,000 vs 10 live tokens",
                "value": round(growth, 2),
                "target": f"<= {MAX_TOKEN_GROWTH:g}x (must not grow)",
                "met": growth <= MAX_TOKEN_GROWTH,
            },
            {
                "check": "RSS per tracked job (1,000 jobs)",
                "value": f"{per_job:.1f} KiB",
                "target": "(no number in the issue)",
                "met": True,
            },
            {
                "check": f"RSS with {largest['jobs_tracked']:,} ended jobs vs idle",
                "value": round(growth_history, 3),
                "target": f"<= {MAX_HISTORY_RSS_GROWTH:g}x",
                "met": growth_history <= MAX_HISTORY_RSS_GROWTH,
            },
        ],
        "notes": [
            "RSS per job = (RSS with N ended jobs in the store, every one read once - idle "
            "RSS) / N; each job has the 7 history updates of a short real job",
        ],
    }
