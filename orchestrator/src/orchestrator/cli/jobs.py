"""``ironclaw job ...``: a gRPC client of the control plane."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

DEFAULT_TARGET = "localhost:50051"


def add_job_commands(job: argparse.ArgumentParser) -> None:
    job.add_argument(
        "--orchestrator",
        default=os.environ.get("IRONCLAW_ORCHESTRATOR", DEFAULT_TARGET),
        help="control plane address (default: $IRONCLAW_ORCHESTRATOR or localhost:50051)",
    )
    sub = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create a job")
    create.add_argument("task", help="what the job should do")
    create.add_argument("--project", default="", help="project dir under <base>/projects")
    create.add_argument("--mode", choices=("worker", "claude-code"), default="worker")
    create.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="NAME=ENV_VAR",
        help="grant credential NAME with the value of this shell's ENV_VAR (never from argv)",
    )
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--job-id", default="", help="client-chosen UUID (idempotent retries)")
    create.add_argument("--max-iterations", type=int, default=0)
    create.add_argument("--timeout", type=int, default=0, help="deadline in seconds")
    create.add_argument("--wait-for-prompts", action="store_true")
    create.add_argument(
        "--mcp-server",
        action="append",
        default=[],
        metavar="NAME",
        help="offer the tools of this MCP server from <base>/mcp-servers.json (repeatable)",
    )
    create.add_argument(
        "--wasm-tool",
        action="append",
        default=[],
        metavar="NAME",
        help="offer this WASM tool from <base>/wasm-tools/NAME.json (repeatable)",
    )
    create.add_argument("--wait", action="store_true", help="follow the job until it ends")
    create.add_argument("--json", action="store_true")

    get = sub.add_parser("get", help="show a job")
    get.add_argument("job_id")
    get.add_argument("--json", action="store_true")

    lst = sub.add_parser("list", help="list jobs")
    lst.add_argument(
        "--state", action="append", default=[], choices=("creating", "running", "stopped", "failed")
    )
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true")

    watch = sub.add_parser("watch", help="follow a job's progress until it ends")
    watch.add_argument("job_id")
    watch.add_argument("--after", type=int, default=0, help="resume after this sequence number")
    watch.add_argument(
        "--from-start", action="store_true", help="replay the job's history from its first update"
    )
    watch.add_argument("--json", action="store_true")

    for name, text in (("stop", "stop a job"), ("cleanup", "forget an ended job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        p.add_argument("--json", action="store_true")

    logs = sub.add_parser("logs", help="print a job's container log")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true")
    logs.add_argument("--tail", type=int, default=0)

    prompt = sub.add_parser("prompt", help="send a follow-up prompt (or --done)")
    prompt.add_argument("job_id")
    prompt.add_argument("content", nargs="?", default="")
    prompt.add_argument("--done", action="store_true")


class CliError(Exception):
    """A message for the person at the terminal."""


def run_job_command(args: argparse.Namespace) -> int:
    import grpc

    try:
        with _channel(args.orchestrator) as channel:
            return _dispatch(args, channel)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower():
            print(
                f"error: cannot reach the orchestrator at {args.orchestrator}: is `ironclaw "
                "serve` running? (set --orchestrator or IRONCLAW_ORCHESTRATOR)",
                file=sys.stderr,
            )
        else:
            print(f"error: {exc.details()} ({code.name})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _channel(target: str) -> Any:
    import grpc

    ca = os.environ.get("IRONCLAW_TLS_CA")
    if target.startswith("https://") or ca:
        with open(ca, "rb") if ca else _nothing() as handle:
            root = handle.read() if handle else None
        return grpc.secure_channel(
            target.removeprefix("https://"), grpc.ssl_channel_credentials(root)
        )
    return grpc.insecure_channel(target)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _AuthedStub:
    """Wraps the JobService stub so every call carries the admin token, when one is set."""

    def __init__(self, stub: Any, token: str | None) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __repr__(self) -> str:
        return "_AuthedStub(token=***)"

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            return method(request, metadata=self._metadata, **kwargs)

        return call


def _dispatch(args: argparse.Namespace, channel: Any) -> int:
    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc

    stub = _AuthedStub(pb_grpc.JobServiceStub(channel), os.environ.get("ORCHESTRATOR_ADMIN_TOKEN"))
    cmd = args.job_command
    if cmd == "create":
        request = pb.CreateJobRequest(
            task=args.task,
            project_dir=args.project,
            mode=pb.JOB_MODE_CLAUDE_CODE if args.mode == "claude-code" else pb.JOB_MODE_WORKER,
            credentials=_grants(args.grant),
            labels=_pairs(args.label, "--label"),
            job_id=args.job_id,
            wait_for_prompts=args.wait_for_prompts,
            mcp_servers=args.mcp_server,
            wasm_tools=args.wasm_tool,
            limits=pb.JobLimits(max_iterations=args.max_iterations, timeout_seconds=args.timeout),
        )
        response = stub.CreateJob(request, timeout=120)
        job = response.job
        if not args.wait:
            _print_job(job, args.json, "created" if not response.already_existed else "exists")
            return 0
        if not args.json:
            print(f"job {job.job_id} created; following it (Ctrl-C stops following, not the job)")
        final = _follow(stub, job.job_id, 0, args.json)
        return 0 if final is not None and final.state == pb.JOB_STATE_STOPPED else 1
    if cmd == "get":
        _print_job(stub.GetJob(pb.GetJobRequest(job_id=args.job_id), timeout=30).job, args.json)
        return 0
    if cmd == "list":
        states = [getattr(pb, f"JOB_STATE_{s.upper()}") for s in args.state]
        response = stub.ListJobs(
            pb.ListJobsRequest(states=states, page_size=args.limit), timeout=30
        )
        if args.json:
            for job in response.jobs:
                print(json.dumps(job_dict(job)))
        else:
            print(f"{'JOB ID':36}  {'STATE':8}  {'MODE':11}  {'CALLS':>5}  {'TOKENS':>8}  TASK")
            for job in response.jobs:
                d = job_dict(job)
                print(
                    f"{d['job_id']:36}  {d['state']:8}  {d['mode']:11}  "
                    f"{d['usage']['calls']:>5}  "
                    f"{d['usage']['input_tokens'] + d['usage']['output_tokens']:>8}  "
                    f"{_one_line(d['task'], 60)}"
                )
        return 0
    if cmd == "watch":
        final = _follow(stub, args.job_id, args.after, args.json, args.from_start)
        return 0 if final is not None and final.state == pb.JOB_STATE_STOPPED else 1
    if cmd == "stop":
        job = stub.StopJob(pb.StopJobRequest(job_id=args.job_id), timeout=120).job
        _print_job(job, args.json, "stopped")
        return 0
    if cmd == "cleanup":
        stub.CleanupJob(pb.CleanupJobRequest(job_id=args.job_id), timeout=60)
        print(
            json.dumps({"job_id": args.job_id, "cleaned_up": True})
            if args.json
            else f"job {args.job_id} cleaned up"
        )
        return 0
    if cmd == "logs":
        for chunk in stub.StreamLogs(
            pb.StreamLogsRequest(job_id=args.job_id, follow=args.follow, tail_lines=args.tail)
        ):
            sys.stdout.buffer.write(chunk.data)
            sys.stdout.flush()
        return 0
    if cmd == "prompt":
        if not args.done and not args.content:
            raise CliError("give the prompt text, or --done")
        stub.SendPrompt(
            pb.SendPromptRequest(job_id=args.job_id, content=args.content, done=args.done),
            timeout=30,
        )
        print("done sent" if args.done else "prompt queued")
        return 0
    raise CliError(f"unknown action {cmd}")


def _grants(specs: list[str]) -> list[Any]:
    from ironclaw_client.api.v1 import jobs_pb2 as pb

    grants = []
    for spec in specs:
        name, sep, env_var = spec.partition("=")
        if not sep or not name or not env_var:
            raise CliError(f"--grant {spec!r}: use NAME=ENV_VAR (the value is read from $ENV_VAR)")
        value = os.environ.get(env_var)
        if not value:
            raise CliError(f"--grant {name}: environment variable {env_var} is not set")
        grants.append(pb.CredentialGrant(name=name, credential_type="api_token", value=value))
    return grants


def _pairs(specs: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {spec!r}: use KEY=VALUE")
        pairs[key] = value
    return pairs


def _enum_name(prefix: str, value: str) -> str:
    return value.removeprefix(prefix)


def job_dict(job: Any) -> dict[str, Any]:
    """A job as a plain JSON-able dict (at least job_id and state)."""
    from google.protobuf import json_format

    from ironclaw_client.api.v1 import jobs_pb2 as pb

    d = json_format.MessageToDict(job, preserving_proto_field_name=True)
    d["job_id"] = job.job_id
    d["state"] = pb.JobState.Name(job.state).removeprefix("JOB_STATE_").capitalize()
    d["mode"] = "claude-code" if job.mode == pb.JOB_MODE_CLAUDE_CODE else "worker"
    d["usage"] = {
        "calls": job.usage.calls,
        "input_tokens": job.usage.input_tokens,
        "output_tokens": job.usage.output_tokens,
    }
    if job.HasField("result"):
        d["result"]["reason"] = pb.TerminalReason.Name(job.result.reason).removeprefix(
            "TERMINAL_REASON_"
        )
        d["result"]["success"] = job.result.success
    return d


def _print_job(job: Any, as_json: bool, verb: str = "") -> None:
    d = job_dict(job)
    if as_json:
        print(json.dumps(d))
        return
    head = f"job {d['job_id']}" + (f" {verb}" if verb else "")
    print(head)
    print(f"  state:    {d['state']}")
    print(f"  mode:     {d['mode']}")
    print(f"  task:     {_one_line(d['task'], 100)}")
    print(f"  project:  {job.project_dir}")
    print(
        f"  llm:      {job.llm_provider}  calls={job.usage.calls} "
        f"in={job.usage.input_tokens} out={job.usage.output_tokens}"
    )
    custom = [f"mcp:{name}" for name in job.mcp_servers] + [f"wasm:{n}" for n in job.wasm_tools]
    if custom:
        print(f"  tools:    {', '.join(custom)}")
    if job.status_message:
        print(f"  status:   {_one_line(job.status_message, 100)}")
    if job.HasField("result"):
        r = d["result"]
        print(f"  result:   {r['reason']}: {_one_line(job.result.message, 200)}")


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _follow(stub: Any, job_id: str, after: int, as_json: bool, from_start: bool = False) -> Any:
    """Prints one line per update until the job ends; returns the final job."""
    from ironclaw_client.api.v1 import jobs_pb2 as pb

    final = None
    for update in _watch(stub, job_id, after, from_start):
        if as_json:
            from google.protobuf import json_format

            print(
                json.dumps(json_format.MessageToDict(update, preserving_proto_field_name=True)),
                flush=True,
            )
        else:
            line = describe_update(update)
            if line:
                print(line, flush=True)
        if update.HasField("result"):
            final = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30).job
    if final is None:
        final = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30).job
    if not as_json:
        _print_job(final, False)
    return final


def _watch(stub: Any, job_id: str, after: int, from_start: bool) -> Iterator[Any]:
    from ironclaw_client.api.v1 import jobs_pb2 as pb

    yield from stub.WatchJob(
        pb.WatchJobRequest(job_id=job_id, after_sequence=after, from_start=from_start)
    )


def describe_update(update: Any) -> str:
    """One human line for one WatchJob item."""
    from ironclaw_client.api.v1 import jobs_pb2 as pb

    kind = update.WhichOneof("update")
    seq = f"[{update.sequence:>4}]"
    if kind == "snapshot":
        job = update.snapshot
        return (
            f"{seq} job {job.job_id} is {pb.JobState.Name(job.state)[10:].capitalize()}"
            f": {_one_line(job.task, 80)}"
        )
    if kind == "state_change":
        state = pb.JobState.Name(update.state_change.state)[10:].capitalize()
        return f"{seq} state → {state} ({update.state_change.reason})"
    if kind == "status":
        return f"{seq} status: {_one_line(update.status.message, 100)}"
    if kind == "event":
        from google.protobuf import json_format

        data = json_format.MessageToDict(update.event.data)
        etype = update.event.event_type
        if etype == "tool_use":
            args = json.dumps(data.get("input", {}))
            return f"{seq} tool  {data.get('tool_name')} {_one_line(args, 100)}"
        if etype == "tool_result":
            mark = "error" if data.get("is_error") else "ok"
            return (
                f"{seq} ←     {data.get('tool_name')} {mark}: "
                f"{_one_line(str(data.get('output', '')), 90)}"
            )
        if etype == "message":
            return (
                f"{seq} {data.get('role', 'assistant')}: {_one_line(str(data.get('content')), 100)}"
            )
        return f"{seq} {etype}: {_one_line(json.dumps(data), 100)}"
    if kind == "result":
        r = update.result
        reason = pb.TerminalReason.Name(r.reason).removeprefix("TERMINAL_REASON_")
        return f"{seq} result: {reason}: {_one_line(r.message, 200)}"
    if kind == "usage":
        u = update.usage
        return f"{seq} llm usage: {u.calls} calls, {u.input_tokens} in / {u.output_tokens} out"
    return ""
