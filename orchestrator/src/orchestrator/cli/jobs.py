"""``ironclaw job ...``: a thin layer over ``ironclaw_client.Client``; argument parsing and
printing only. The client owns the wire: the stubs, the admin token, TLS, retries and the
watch that resumes after a reconnect."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ironclaw_client import Client, Job, JobUpdate

DEFAULT_TARGET = "localhost:50051"
# One-shot commands report an unreachable orchestrator quickly; a follow rides out a restart.
CALL_RECONNECT_S = 2.0
FOLLOW_RECONNECT_S = 60.0


def add_job_commands(job: argparse.ArgumentParser) -> None:
    job.add_argument(
        "--orchestrator",
        default=os.environ.get("IRONCLAW_ORCHESTRATOR", DEFAULT_TARGET),
        help="control plane address (default: $IRONCLAW_ORCHESTRATOR or localhost:50051)",
    )
    sub = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create a job")
    create.add_argument("task", help="what the job should do")
    where = create.add_mutually_exclusive_group()
    where.add_argument("--project", default="", help="project dir under <base>/projects")
    where.add_argument(
        "--upload",
        default="",
        metavar="PATH",
        help="upload this directory (or .tar / .tar.gz file) as the job's workspace",
    )
    where.add_argument(
        "--git", default="", metavar="URL", help="clone the workspace from this https git URL"
    )
    create.add_argument("--git-ref", default="", metavar="REF", help="branch, tag or commit")
    create.add_argument(
        "--git-token",
        default="",
        metavar="NAME=ENV_VAR",
        help="grant NAME with the value of $ENV_VAR, injected at egress for the --git host "
        "(HTTP Basic, as git over HTTPS expects): the job never holds it",
    )
    create.add_argument(
        "--mode",
        choices=("worker", "claude-code", "agent"),
        default="worker",
        help="worker (default), claude-code, or agent (implied by --agent)",
    )
    create.add_argument(
        "--agent",
        default="",
        metavar="NAME",
        help="run this agent of the operator's catalogue, <base>/agents.json (agent mode)",
    )
    create.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="NAME=ENV_VAR",
        help="grant credential NAME with the value of this shell's ENV_VAR (never from argv)",
    )
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument(
        "--node-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="on a Swarm: run only on a node with this label (repeatable)",
    )
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

    download = sub.add_parser(
        "download", help="save a job's workspace as a .tar.gz (or unpack it into a directory)"
    )
    download.add_argument("job_id")
    download.add_argument(
        "-o",
        "--output",
        default="",
        help="file to write (default: <job_id>.tar.gz); an existing directory: unpack into it",
    )

    prompt = sub.add_parser("prompt", help="send a follow-up prompt (or --done)")
    prompt.add_argument("job_id")
    prompt.add_argument("content", nargs="?", default="")
    prompt.add_argument("--done", action="store_true")


class CliError(Exception):
    """A message for the person at the terminal."""


def open_client(target: str) -> Client:
    """The client for ``--orchestrator``; admin token and TLS CA from the environment."""
    from ironclaw_client import Client

    try:
        return Client(target, reconnect_timeout=CALL_RECONNECT_S)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def report_client_errors(target: str, action: Any) -> int:
    """Runs ``action()`` with the CLI's error reporting: a message and an exit code, never a
    traceback."""
    from ironclaw_client import IronclawError, TLSError, Unavailable

    try:
        return int(action())
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TLSError as exc:
        print(
            f"error: TLS with the orchestrator at {target} failed: {exc.message} (set "
            "IRONCLAW_TLS_CA to the CA of its certificate)",
            file=sys.stderr,
        )
        return 1
    except Unavailable:
        print(
            f"error: cannot reach the orchestrator at {target}: is `ironclaw "
            "serve` running? (set --orchestrator or IRONCLAW_ORCHESTRATOR)",
            file=sys.stderr,
        )
        return 1
    except IronclawError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run_job_command(args: argparse.Namespace) -> int:
    def action() -> int:
        with open_client(args.orchestrator) as client:
            return _dispatch(args, client)

    return report_client_errors(args.orchestrator, action)


def _dispatch(args: argparse.Namespace, client: Client) -> int:
    from ironclaw_client import JobLimits, JobMode, JobState

    cmd = args.job_command
    if cmd == "create":
        project_dir = args.project
        if args.upload:
            uploaded = client.upload_workspace(args.upload)
            project_dir = uploaded.project_dir
            print(
                f"workspace {uploaded.workspace_id} uploaded ({uploaded.entries} entries, "
                f"{uploaded.unpacked_bytes} bytes unpacked)",
                file=sys.stderr,
            )
        grants = _grants(args.grant)
        git = None
        if args.git:
            git, token = _git_source(args.git, args.git_ref, args.git_token)
            grants += token
        elif args.git_ref or args.git_token:
            raise CliError("--git-ref and --git-token need --git URL")
        created = client.create_job(
            args.task,
            job_id=args.job_id or None,
            project_dir=project_dir,
            git=git,
            mode=JobMode(args.mode),
            credentials=grants,
            labels=_pairs(args.label, "--label"),
            node_labels=_pairs(args.node_label, "--node-label"),
            wait_for_prompts=args.wait_for_prompts,
            mcp_servers=args.mcp_server,
            wasm_tools=args.wasm_tool,
            agent=args.agent,
            limits=JobLimits(max_iterations=args.max_iterations, timeout_seconds=args.timeout),
        )
        job = created.job
        if not args.wait:
            _print_job(job, args.json, "exists" if created.already_existed else "created")
            return 0
        if not args.json:
            print(f"job {job.job_id} created; following it (Ctrl-C stops following, not the job)")
        final = _follow(client, job.job_id, 0, args.json)
        return 0 if final.state is JobState.STOPPED else 1
    if cmd == "get":
        _print_job(client.get_job(args.job_id), args.json)
        return 0
    if cmd == "list":
        import itertools

        states = [JobState(s) for s in args.state]
        limit = max(1, args.limit)
        jobs = list(
            itertools.islice(client.list_jobs(states=states, page_size=min(limit, 1000)), limit)
        )
        if args.json:
            for job in jobs:
                print(json.dumps(job_dict(job)))
        else:
            print(f"{'JOB ID':36}  {'STATE':8}  {'MODE':11}  {'CALLS':>5}  {'TOKENS':>8}  TASK")
            for job in jobs:
                d = job_dict(job)
                print(
                    f"{d['job_id']:36}  {d['state']:8}  {d['mode']:11}  "
                    f"{d['usage']['calls']:>5}  "
                    f"{d['usage']['input_tokens'] + d['usage']['output_tokens']:>8}  "
                    f"{_one_line(d['task'], 60)}"
                )
        return 0
    if cmd == "watch":
        final = _follow(client, args.job_id, args.after, args.json, args.from_start)
        return 0 if final.state is JobState.STOPPED else 1
    if cmd == "stop":
        _print_job(client.stop_job(args.job_id), args.json, "stopped")
        return 0
    if cmd == "cleanup":
        client.cleanup_job(args.job_id)
        print(
            json.dumps({"job_id": args.job_id, "cleaned_up": True})
            if args.json
            else f"job {args.job_id} cleaned up"
        )
        return 0
    if cmd == "logs":
        if args.follow:
            client.reconnect_timeout = FOLLOW_RECONNECT_S
        for data in client.logs(args.job_id, follow=args.follow, tail_lines=args.tail):
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        return 0
    if cmd == "download":
        client.reconnect_timeout = FOLLOW_RECONNECT_S
        saved = client.download_workspace(args.job_id, args.output or f"{args.job_id}.tar.gz")
        print(f"workspace of job {args.job_id} saved to {saved}")
        return 0
    if cmd == "prompt":
        if not args.done and not args.content:
            raise CliError("give the prompt text, or --done")
        client.send_prompt(args.job_id, args.content, done=args.done)
        print("done sent" if args.done else "prompt queued")
        return 0
    raise CliError(f"unknown action {cmd}")


def _grants(specs: list[str]) -> list[Any]:
    from ironclaw_client import CredentialGrant

    grants = []
    for spec in specs:
        name, sep, env_var = spec.partition("=")
        if not sep or not name or not env_var:
            raise CliError(f"--grant {spec!r}: use NAME=ENV_VAR (the value is read from $ENV_VAR)")
        value = os.environ.get(env_var)
        if not value:
            raise CliError(f"--grant {name}: environment variable {env_var} is not set")
        grants.append(CredentialGrant(name=name, value=value))
    return grants


def _git_source(url: str, ref: str, token_spec: str) -> tuple[Any, list[Any]]:
    """``--git`` and its options as the client's GitWorkspace and the injected grant."""
    import urllib.parse

    from ironclaw_client import CredentialGrant, GitWorkspace

    if not token_spec:
        return GitWorkspace(url=url, ref=ref), []
    name, sep, env_var = token_spec.partition("=")
    if not sep or not name or not env_var:
        raise CliError(f"--git-token {token_spec!r}: use NAME=ENV_VAR")
    value = os.environ.get(env_var)
    if not value:
        raise CliError(f"--git-token {name}: environment variable {env_var} is not set")
    try:
        host = urllib.parse.urlsplit(url).netloc.rpartition("@")[2]
    except ValueError:
        host = ""
    if not host:
        raise CliError(f"--git {url!r} names no host")
    grant = CredentialGrant(name=name, value=value, inject_hosts=(host,), inject_format="basic")
    return GitWorkspace(url=url, ref=ref, credential=name), [grant]


def _pairs(specs: list[str], flag: str) -> dict[str, str]:
    pairs = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {spec!r}: use KEY=VALUE")
        pairs[key] = value
    return pairs


def _as_dict(message: Any) -> dict[str, Any]:
    """The wire form of a client value as JSON-able data (what --json prints)."""
    from google.protobuf import json_format

    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


def job_dict(job: Job) -> dict[str, Any]:
    """A job as a plain JSON-able dict (at least job_id and state)."""
    d = _as_dict(job.proto) if job.proto is not None else {}
    d["job_id"] = job.job_id
    d["state"] = job.state.value.capitalize()
    d["mode"] = job.mode.value
    d["usage"] = {
        "calls": job.usage.calls,
        "input_tokens": job.usage.input_tokens,
        "output_tokens": job.usage.output_tokens,
    }
    d.setdefault("task", job.task)
    if job.result is not None:
        d.setdefault("result", {})
        d["result"]["reason"] = job.result.reason.name
        d["result"]["success"] = job.result.success
    return d


def _print_job(job: Job, as_json: bool, verb: str = "") -> None:
    d = job_dict(job)
    if as_json:
        print(json.dumps(d))
        return
    head = f"job {d['job_id']}" + (f" {verb}" if verb else "")
    print(head)
    print(f"  state:    {d['state']}")
    print(f"  mode:     {d['mode']}" + (f" ({job.agent})" if job.agent else ""))
    print(f"  task:     {_one_line(job.task, 100)}")
    print(f"  project:  {job.project_dir}")
    if job.proto is not None and job.proto.HasField("git"):
        git = job.proto.git
        print(f"  git:      {git.url}" + (f" at {git.ref}" if git.ref else ""))
    print(
        f"  llm:      {job.llm_provider}  calls={job.usage.calls} "
        f"in={job.usage.input_tokens} out={job.usage.output_tokens}"
    )
    custom = [f"mcp:{name}" for name in job.mcp_servers] + [f"wasm:{n}" for n in job.wasm_tools]
    if custom:
        print(f"  tools:    {', '.join(custom)}")
    if job.status_message:
        print(f"  status:   {_one_line(job.status_message, 100)}")
    if job.result is not None:
        print(f"  result:   {job.result.reason.name}: {_one_line(job.result.message, 200)}")


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _follow(
    client: Client, job_id: str, after: int, as_json: bool, from_start: bool = False
) -> Job:
    """Prints one line per update until the job ends (riding out an orchestrator restart);
    returns the final job."""
    client.reconnect_timeout = FOLLOW_RECONNECT_S
    for update in client.watch(job_id, after_sequence=after, from_start=from_start):
        if as_json:
            print(json.dumps(_as_dict(update.proto)), flush=True)
        else:
            line = describe_update(update)
            if line:
                print(line, flush=True)
    final = client.get_job(job_id)
    if not as_json:
        _print_job(final, False)
    return final


def describe_update(update: JobUpdate) -> str:
    """One human line for one WatchJob item."""
    from ironclaw_client import (
        Event,
        ResultUpdate,
        Snapshot,
        StateChanged,
        StatusUpdate,
        UsageUpdate,
    )

    seq = f"[{update.sequence:>4}]"
    if isinstance(update, Snapshot):
        job = update.job
        return (
            f"{seq} job {job.job_id} is {job.state.value.capitalize()}: {_one_line(job.task, 80)}"
        )
    if isinstance(update, StateChanged):
        return f"{seq} state → {update.state.value.capitalize()} ({update.reason})"
    if isinstance(update, StatusUpdate):
        return f"{seq} status: {_one_line(update.message, 100)}"
    if isinstance(update, Event):
        data = dict(update.data)
        etype = update.event_type
        if etype == "tool_use":
            args = json.dumps(data.get("input", {}))
            return f"{seq} tool  {data.get('tool_name')} {_one_line(args, 100)}"
        if etype == "tool_result":
            mark = "error" if data.get("is_error") else "ok"
            return (
                f"{seq} ←     {data.get('tool_name')} {mark}: "
                f"{_one_line(str(data.get('output', '')), 90)}"
            )
        if etype == "egress":
            return f"{seq} {_egress_line(data)}"
        if etype == "message":
            return (
                f"{seq} {data.get('role', 'assistant')}: {_one_line(str(data.get('content')), 100)}"
            )
        return f"{seq} {etype}: {_one_line(json.dumps(data), 100)}"
    if isinstance(update, ResultUpdate):
        r = update.result
        return f"{seq} result: {r.reason.name}: {_one_line(r.message, 200)}"
    if isinstance(update, UsageUpdate):
        u = update.usage
        return f"{seq} llm usage: {u.calls} calls, {u.input_tokens} in / {u.output_tokens} out"
    return ""


def _egress_line(data: dict[str, Any]) -> str:
    """``egress → pypi.org:443 allowed (1.2 KiB out, 38.0 KiB in)`` or the refusal's reason."""
    target = f"{data.get('host')}:{data.get('port')}"
    if data.get("outcome") == "allowed":
        sent, received = int(data.get("bytes_sent") or 0), int(data.get("bytes_received") or 0)
        grants = data.get("injected") or []
        names = ", ".join(map(str, grants)) if isinstance(grants, list) else str(grants)
        injected = f", {names} injected" if names else ""
        return (
            f"egress → {target} allowed ({sent / 1024:.1f} KiB out, "
            f"{received / 1024:.1f} KiB in{injected})"
        )
    why = data.get("message") or data.get("reason")
    return f"egress → {target} refused: {_one_line(str(why), 100)}"
