"""``python -m bench [NAME ...] [--quick] [--json PATH]``.

Runs the named benchmarks (default: all of them, in the order of ``BENCHMARKS``), prints a
markdown table for each and, when more than one ran, a summary of every target; writes the raw
results as JSON: ``bench/results/<name>.json`` (and ``bench/results/suite.json`` for a run of
several), or all of them in one document at PATH.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.attack_bench import AttackOptions, run_attack_bench
from bench.burst_bench import BurstOptions, run_burst_bench
from bench.controlplane_bench import ControlPlaneOptions, run_controlplane_bench
from bench.egress_bench import EgressOptions, render_egress, run_egress_bench
from bench.footprint_bench import FootprintOptions, run_footprint_bench
from bench.procs import RESULTS_DIR, BenchError, code_version
from bench.proxy_bench import ProxyOptions, run_proxy_bench
from bench.start_bench import StartOptions, run_start_bench
from bench.stats import markdown_table
from bench.swarm_bench import SwarmOptions, render_swarm, run_swarm_bench
from bench.warm_bench import WarmOptions, render_warm, run_warm_bench
from bench.workerapi_bench import WorkerApiOptions, run_workerapi_bench

# The suite's order: the two that start 50 containers, which load the machine most, come last.
BENCHMARKS = (
    "proxy",
    "egress",
    "start",
    "controlplane",
    "footprint",
    "workerapi",
    "attacks",
    "burst",
    "warm",
    "swarm",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmarks",
        nargs="*",
        metavar="{" + ",".join(BENCHMARKS) + "}",
        help="default: all of them",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shorter runs: proxy 3 s per point instead of 10 s, start 10 samples instead of "
        "15, workerapi 4 s instead of 10 s, controlplane 500 calls and 20 events, footprint "
        "without the 10,000-job store, burst 2 bursts of 20 only, swarm 5 starts of each kind and "
        "one node loss",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write all results here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="proxy, workerapi: also profile the orchestrator under load with py-spy "
        "(pip install py-spy)",
    )
    parser.add_argument(
        "--experiments",
        action="store_true",
        help="proxy: also measure bench-only variants of the proxy path (see README)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="proxy: skip the LiteLLM column")
    parser.add_argument(
        "--no-pin", action="store_true", help="proxy, workerapi: do not pin processes to CPUs"
    )
    parser.add_argument("--duration", type=float, help="proxy: seconds measured per point")
    parser.add_argument(
        "--concurrency",
        default="1,16,64",
        help="proxy: comma-separated concurrencies (default 1,16,64)",
    )
    parser.add_argument(
        "--samples", type=int, help="start: samples of each (>= 10; default 15, --quick 10)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(BENCHMARKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = list(dict.fromkeys(args.benchmarks or BENCHMARKS))
    documents: dict[str, dict[str, Any]] = {}
    failed = False
    for name in selected:
        print(f"bench: running {name} ...", flush=True)
        version = code_version()
        try:
            documents[name] = {**_run(name, args), "code": version}
        except BenchError as exc:
            print(f"bench: {name} failed: {exc}", file=sys.stderr)
            failed = True
            continue
        except Exception:
            # Whatever broke, the other benchmark still runs and the results so far are kept.
            traceback.print_exc()
            print(f"bench: {name} failed (traceback above)", file=sys.stderr)
            failed = True
            continue
        print()
        print(render(documents[name]))
        print(flush=True)
    if len(selected) > 1 and documents:
        print(render_summary(documents, [name for name in selected if name not in documents]))
        print(flush=True)
    _write(documents, args.json)
    return 1 if failed else 0


def _run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name == "proxy":
        duration = args.duration or (3.0 if args.quick else 10.0)
        return run_proxy_bench(
            ProxyOptions(
                duration_s=duration,
                warmup_s=1.0 if args.quick else 1.5,
                pin=not args.no_pin,
                litellm=not args.no_litellm,
                profile=args.profile,
                experiments=args.experiments,
                concurrencies=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
            )
        )
    if name == "egress":
        if args.quick:
            return run_egress_bench(EgressOptions(duration_s=2.0, warmup_s=0.5, blast_mib=64))
        return run_egress_bench(EgressOptions())
    if name == "controlplane":
        if args.quick:
            return run_controlplane_bench(
                ControlPlaneOptions(rpc_rounds=500, warmup_rounds=100, events=20)
            )
        return run_controlplane_bench(ControlPlaneOptions())
    if name == "footprint":
        return run_footprint_bench(FootprintOptions(quick=args.quick))
    if name == "burst":
        if args.quick:
            return run_burst_bench(BurstOptions(sizes=(20,), rounds=2))
        return run_burst_bench(BurstOptions())
    if name == "swarm":
        if args.quick:
            return run_swarm_bench(SwarmOptions(samples=5, node_losses=1))
        return run_swarm_bench(SwarmOptions())
    if name == "warm":
        samples = args.samples or (10 if args.quick else 30)
        return run_warm_bench(WarmOptions(samples=samples))
    if name == "workerapi":
        if args.quick:
            return run_workerapi_bench(
                WorkerApiOptions(
                    duration_s=4.0, warmup_s=1.0, pin=not args.no_pin, profile=args.profile
                )
            )
        return run_workerapi_bench(WorkerApiOptions(pin=not args.no_pin, profile=args.profile))
    if name == "attacks":
        import os

        tag = os.environ.get("IRONCLAW_IMAGE_TAG", "latest")
        return run_attack_bench(AttackOptions(phase_s=5.0 if args.quick else 10.0, image_tag=tag))
    samples = args.samples or (10 if args.quick else 15)
    return run_start_bench(StartOptions(samples=max(samples, 10), warmup=1))


def _write(documents: dict[str, dict[str, Any]], path: Path | None) -> None:
    if not documents:
        return
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        only = next(iter(documents.values())) if len(documents) == 1 else documents
        path.write_text(json.dumps(only, indent=2) + "\n")
        print(f"bench: results written to {path}")
        return
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    outputs = dict(documents)
    if len(documents) > 1:
        outputs["suite"] = {"summary": summary(documents), **documents}
    for name, document in outputs.items():
        target = RESULTS_DIR / f"{name}.json"
        target.write_text(json.dumps(document, indent=2) + "\n")
        (RESULTS_DIR / f"{name}-{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
        print(f"bench: results written to {target}")


def targets_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A benchmark's target checks, in one shape (the start benchmark has a single ratio)."""
    if document["benchmark"] == "start":
        target = document["target"]
        return [
            {
                "check": "CreateJob → first call vs raw docker, ratio of medians",
                "value": round(document["ratio_of_medians"], 3),
                "target": f"<= {target['max_ratio']:.2f}",
                "met": target["met"],
            }
        ]
    checks: list[dict[str, Any]] = document.get("targets", [])
    return checks


def summary(documents: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target of every benchmark that ran, with the machine's load average then."""
    rows = []
    for name, document in documents.items():
        config = document.get("config", {})
        load = (
            config.get("load_average_before", [None])[0],
            config.get("load_average_after", [None])[0],
        )
        for check in targets_of(document):
            rows.append({"benchmark": name, **check, "load_average_1m": list(load)})
    return rows


def render_summary(documents: dict[str, dict[str, Any]], failed: list[str]) -> str:
    """One table of every target over the benchmarks that ran."""
    rows = [
        [
            row["benchmark"],
            row["check"],
            row["value"],
            row["target"],
            "yes" if row["met"] else "NO",
            " → ".join("-" if v is None else f"{v:.1f}" for v in row["load_average_1m"]),
        ]
        for row in summary(documents)
    ]
    lines = [
        "## Summary",
        "",
        markdown_table(
            ["benchmark", "target", "measured", "wanted", "met", "load avg (before → after)"],
            rows,
            left=2,
        ),
    ]
    if failed:
        lines += ["", f"not run (failed): {', '.join(failed)}"]
    return "\n".join(lines)


def render(document: dict[str, Any]) -> str:
    """The markdown tables of one benchmark's results."""
    if document["benchmark"] == "proxy":
        return render_proxy(document)
    if document["benchmark"] == "egress":
        return render_egress(document)
    if document["benchmark"] == "controlplane":
        return render_controlplane(document)
    if document["benchmark"] == "footprint":
        return render_footprint(document)
    if document["benchmark"] == "burst":
        return render_burst(document)
    if document["benchmark"] == "workerapi":
        return render_workerapi(document)
    if document["benchmark"] == "attacks":
        return render_attacks(document)
    if document["benchmark"] == "warm":
        return render_warm(document)
    if document["benchmark"] == "swarm":
        return render_swarm(document)
    return render_start(document)


def render_attacks(document: dict[str, Any]) -> str:
    rows = [
        [
            phase["phase"],
            phase["health_ms"]["p50"],
            phase["health_ms"]["p99"],
            phase["get_job_ms"]["p50"],
            phase["get_job_ms"]["p99"],
            phase["errors"]["health"] + phase["errors"]["get_job"],
            ", ".join(f"{key}={value}" for key, value in phase["attack"].items()) or "-",
        ]
        for phase in document["phases"]
    ]
    header = [
        "phase",
        "/health p50 ms",
        "/health p99 ms",
        "GetJob p50 ms",
        "GetJob p99 ms",
        "probe errors",
        "what the attack got",
    ]
    skipped = document["config"]["skipped"]
    return "\n".join(
        [
            markdown_table(header, rows),
            "",
            *([f"skipped (not in this checkout): {', '.join(skipped)}", ""] if skipped else []),
            *_targets_notes_profiles(document),
        ]
    )


def render_proxy(document: dict[str, Any]) -> str:
    rows = [
        [
            row["target"],
            row["concurrency"],
            row["rps"],
            row["p50_ms"],
            row["p99_ms"],
            row.get("added_p50_ms"),
            row.get("added_p99_ms"),
            row.get("server_cpu_ms_per_request"),
            row.get("cpu_bound_rps_per_core"),
            row["errors"],
        ]
        for row in document["results"]
    ]
    parts = [
        markdown_table(
            [
                "path",
                "concurrency",
                "req/s",
                "p50 ms",
                "p99 ms",
                "added p50 ms",
                "added p99 ms",
                "server CPU ms/req",
                "req/s per core",
                "errors",
            ],
            rows,
        ),
        "",
        f"({document['config']['duration_s']:g} s per point after "
        f"{document['config']['warmup_s']:g} s warm-up; {document['config']['pinning']}; "
        "added = minus direct at the same concurrency; req/s per core = 1000 / server CPU "
        "ms per request)",
    ]
    if document["targets"]:
        parts += ["", _targets_table(document["targets"])]
    for name, profile in document.get("profiles", {}).items():
        parts += ["", _profile_text(name, profile)]
    parts += [f"note: {note}" for note in document["notes"]]
    return "\n".join(parts)


def _targets_table(checks: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["target", "measured", "wanted", "met"],
        [[c["check"], c["value"], c["target"], "yes" if c["met"] else "NO"] for c in checks],
    )


def _profile_text(name: str, profile: dict[str, Any]) -> str:
    busy = profile.get("event_loop_busy")
    lines = [
        f"profile of {name}: {profile['samples']} samples at {profile['rate_hz']} Hz, "
        f"{profile['load']['rps_while_profiled']:.0f} req/s while profiled, event loop busy "
        f"{busy:.0%} (stacks: {profile['collapsed_stacks']})",
        "  event loop's own time by package: "
        + ", ".join(f"{p['name']} {p['share']:.0%}" for p in profile["own_by_package"][:10]),
    ]
    return "\n".join(lines)


def render_start(document: dict[str, Any]) -> str:
    summary = document["summary"]
    rows = []
    for kind, label in (("orchestrator", "CreateJob (gRPC)"), ("raw", "raw docker SDK")):
        first = summary[kind]["first_call_ms"]
        api = summary[kind]["api_returned_ms"]
        rows.append(
            [
                label,
                len(document["samples"][kind]),
                first["p50"],
                first["mean"],
                first["min"],
                first["max"],
                api["p50"],
            ]
        )
    table = markdown_table(
        ["start path", "n", "median ms", "mean ms", "min ms", "max ms", "API call returned ms"],
        rows,
    )
    phases = markdown_table(
        ["median of phase (ms)", "CreateJob (gRPC)", "raw docker SDK"],
        [
            [label, summary["orchestrator"][key]["p50"], summary["raw"][key]["p50"]]
            for key, label in (
                ("before_engine_ms", "request → engine create call"),
                ("engine_create_start_ms", "engine create + start"),
                ("started_to_first_call_ms", "started → first call arrives"),
                ("first_call_ms", "total: request → first call"),
            )
        ],
    )
    target = document["target"]
    same = document["same_container_config"]
    config_line = (
        "container configs identical (HostConfig, image, command, user, env names)"
        if same.get("identical")
        else f"container configs differ: {same}"
    )
    return "\n".join(
        [
            table,
            "",
            f"ratio of medians: {document['ratio_of_medians']:.3f} "
            f"(target <= {target['max_ratio']:.2f}: {'met' if target['met'] else 'NOT met'}); "
            f"median paired difference {document['median_paired_difference_ms']:+.1f} ms",
            config_line,
            "",
            phases,
        ]
    )


def render_controlplane(document: dict[str, Any]) -> str:
    labels = {
        "health": "Health/Check (floor)",
        "get": "GetJob",
        "list_first": "ListJobs(100), first page",
        "list_last": "ListJobs(100), last page",
    }
    rpc = document["rpc_ms"]
    rpc_rows = [
        [
            labels[kind],
            rpc[kind]["p50"],
            rpc[kind]["p90"],
            rpc[kind]["p99"],
            rpc[kind]["max"],
            rpc[kind].get("added_p50"),
            rpc[kind].get("added_p99"),
        ]
        for kind in ("health", "get", "list_first", "list_last")
    ]
    fan_rows = [
        [
            f"{row['watchers']} watcher(s), {row['client_processes']} client process(es)"
            + (", grpc.aio floor" if row.get("floor") else ""),
            row["events"],
            row["all_received_ms"]["p50"],
            row["all_received_ms"]["p99"],
            row["first_received_ms"]["p50"],
            row["post_returned_ms"]["p50"],
            row["server_cpu_ms_per_event"],
            row["clients_cpu_ms_per_event"],
        ]
        for row in document["fanout"].values()
    ]
    config = document["config"]
    return "\n".join(
        [
            f"{config['jobs_tracked']:,} jobs tracked; {config['rpc_rounds']} calls of each "
            "kind, interleaved, blocking stub over loopback",
            "",
            markdown_table(
                ["RPC", "p50 ms", "p90 ms", "p99 ms", "max ms", "added p50", "added p99"], rpc_rows
            ),
            "",
            markdown_table(
                [
                    "WatchJob fan-out",
                    "events",
                    "all received p50 ms",
                    "all received p99 ms",
                    "first received p50 ms",
                    "POST returned p50 ms",
                    "server CPU ms/event",
                    "watchers CPU ms/event",
                ],
                fan_rows,
            ),
            "",
            *_targets_notes_profiles(document),
        ]
    )


def _targets_notes_profiles(document: dict[str, Any]) -> list[str]:
    """The closing blocks of a benchmark's output: target checks, notes, profile summaries."""
    return [
        _targets_table(document["targets"]),
        *[f"note: {note}" for note in document["notes"]],
        *[_controlplane_profile(name, p) for name, p in document.get("profiles", {}).items()],
    ]


def _controlplane_profile(name: str, profile: Any) -> str:
    if not isinstance(profile, dict):
        return f"profile {name}: {profile}"
    lines = [
        f"profile of the server during {name}: event loop busy "
        f"{profile.get('event_loop_busy', 0):.0%} ({profile['collapsed_stacks']})",
        "  own time by package: "
        + ", ".join(f"{p['name']} {p['share']:.0%}" for p in profile["own_by_package"][:8]),
        "  inclusive: "
        + ", ".join(f"{p['name']} {p['share']:.0%}" for p in profile["inclusive_by_function"][:25]),
    ]
    return "\n".join(lines)


def render_footprint(document: dict[str, Any]) -> str:
    rss_rows = [
        [row["label"], row["jobs_tracked"], row["rss_mib"], row.get("per_job_kib")]
        for row in document["rss"]
    ]
    token_rows = [
        [row["live_tokens"], row["valid_us"], row["invalid_us"], row.get("ratio_vs_smallest")]
        for row in document["tokens"]
    ]
    return "\n".join(
        [
            markdown_table(
                ["orchestrator process", "jobs tracked", "RSS MiB", "per job KiB (vs idle)"],
                rss_rows,
            ),
            "",
            markdown_table(
                [
                    "live tokens",
                    "validate (valid) µs",
                    "validate (wrong token) µs",
                    "valid vs 10 tokens",
                ],
                token_rows,
            ),
            "",
            _targets_table(document["targets"]),
            *[f"note: {note}" for note in document["notes"]],
        ]
    )


def render_burst(document: dict[str, Any]) -> str:
    rows = [
        [
            f"{row['kind']}, {row['size']} at once",
            row["bursts"],
            row["makespan_ms_median"],
            row["throughput_per_s"],
            row["first_call_p50_ms"],
            row.get("throughput_vs_raw"),
            row["lost"],
        ]
        for row in document["summary"]
    ]
    return "\n".join(
        [
            markdown_table(
                [
                    "burst",
                    "bursts",
                    "makespan ms (median)",
                    "starts/s",
                    "first call p50 ms",
                    "throughput vs raw",
                    "lost",
                ],
                rows,
            ),
            "",
            _targets_table(document["targets"]),
        ]
    )


def render_workerapi(document: dict[str, Any]) -> str:
    rows = [
        [
            row["route"],
            row["connections"],
            row["rps"],
            row.get("p50_ms"),
            row.get("p99_ms"),
            row.get("added_p50_ms"),
            row.get("added_p99_ms"),
            row.get("server_cpu_ms_per_request"),
            row["errors"],
        ]
        for row in document["results"]
    ]
    config = document["config"]
    verification = [
        [
            where,
            result["checked_status"],
            result["checked_events"],
            result["checked_llm_calls"],
            result["lost"],
            result["duplicated"],
            result["out_of_order"],
            result["unexpected"] + result["sequence_gaps"],
        ]
        for where, result in (
            ("WatchJob from_start", document["verification"]["live"]),
            ("store, after the stop", document["verification"]["store"]),
        )
    ]
    return "\n".join(
        [
            f"{config['jobs']} jobs, {config['connections_per_route']} connections per route, "
            f"{config['duration_s']:g} s after {config['warmup_s']:g} s warm-up; "
            f"{config['pinning']}; baseline: {config['baseline']}; added = minus the baseline",
            "",
            markdown_table(
                [
                    "route",
                    "connections",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "added p50 ms",
                    "added p99 ms",
                    "server CPU ms/req",
                    "errors",
                ],
                rows,
            ),
            "",
            markdown_table(
                [
                    "read back",
                    "status lines",
                    "events",
                    "LLM calls",
                    "lost",
                    "duplicated",
                    "out of order",
                    "unexpected / gaps",
                ],
                verification,
            ),
            "",
            *_targets_notes_profiles(document),
        ]
    )
