"""A Claude Code job in a real container: the real image's bridge drives a stand-in CLI
(tests/images/fake_claude.py, speaking stream-json) whose model calls go through the
orchestrator's Anthropic route to a fake upstream. What the agent's own commands can reach is
what matters: the CLI's ANTHROPIC_API_KEY (the job's LLM key) opens the Anthropic route and
nothing else of the job; the worker token is nowhere in the CLI's environment; a budget refusal
ends the job BUDGET_EXCEEDED from the orchestrator's refusal code, not from any wording."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import (
    CreateJobRequest,
    JobLimitOverrides,
    JobMode,
    JobSnapshot,
    JobUpdate,
    TerminalReason,
    UpdateKind,
)
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.helpers import wait_for

pytestmark = pytest.mark.docker

UPSTREAM_KEY = "sk-ant-upstream-" + "c" * 24

# Run by the agent (the CLI's Bash tool): what the job's key opens, and what the CLI holds.
PROBE = r"""
import json, os, urllib.error, urllib.request

key = os.environ["ANTHROPIC_API_KEY"]
anthropic = os.environ["ANTHROPIC_BASE_URL"]
job = anthropic.rsplit("/", 1)[0]  # http://.../worker/<id>


def status(method, url, body=None, headers=()):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    for name, value in headers:
        request.add_header(name, value)
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


bearer = [("Authorization", "Bearer " + key)]
as_cli = [("x-api-key", key), ("anthropic-version", "2023-06-01")]
event = {"event_type": "status", "data": {"message": "forged by the agent"}}
probes = {
    "credentials": status("GET", job + "/credentials", headers=bearer),
    "credentials x-api-key": status("GET", job + "/credentials", headers=as_cli),
    "job": status("GET", job + "/job", headers=bearer),
    "tools": status("GET", job + "/tools", headers=bearer),
    "event": status("POST", job + "/event", event, bearer),
    "status": status("POST", job + "/status", {"message": "forged", "iteration": 9}, bearer),
    "llm/complete": status(
        "POST", job + "/llm/complete", {"messages": [{"role": "user", "content": "x"}]}, bearer
    ),
    "complete": status("POST", job + "/complete", {"success": True, "message": "forged"}, bearer),
    "anthropic": status(
        "POST",
        anthropic + "/v1/messages",
        {"model": "sonnet", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
        as_cli,
    ),
}
json.dump({"probes": probes, "env": dict(os.environ)}, open("probe.json", "w"))
print("probed")
"""


@pytest.fixture
async def upstream() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(api_key=UPSTREAM_KEY) as fake:
        yield fake


@pytest.fixture
def project(base_dir: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        path = base_dir / "projects" / name
        path.mkdir(parents=True)
        os.chown(path, 1000, 1000)
        return path

    return make


@pytest.fixture
async def claude_orch(
    start_orch: Any, make_settings: Any, fake_cli_image: str, upstream: FakeAnthropic
) -> Any:
    return await start_orch(
        make_settings(
            CLAUDE_CODE_IMAGE=fake_cli_image,
            CLAUDE_CODE_MEMORY_MB="512",
            ANTHROPIC_API_KEY=UPSTREAM_KEY,
            ANTHROPIC_BASE_URL=upstream.url,
            LLM_PROVIDER="none",
        )
    )


async def _run_to_the_end(orch: Any, request: CreateJobRequest) -> JobSnapshot:
    created = await orch.manager.create_job(request)
    job_id = created.job.job_id
    await wait_for(
        lambda: orch.manager.get_job(job_id).state.is_terminal,
        timeout=120,
        what="the Claude Code job to end",
    )
    snapshot: JobSnapshot = orch.manager.get_job(job_id)
    return snapshot


def _inspect(docker_engine: Any, job_id: str) -> Any:
    return docker_engine.api.inspect_container(f"ironclaw-claude-{job_id}")


async def test_the_agent_s_key_opens_the_model_route_and_nothing_else_of_its_job(
    claude_orch: Any,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
    docker_engine: Any,
    fake_cli_image: str,
) -> None:
    workdir = project("probe")
    (workdir / "probe.py").write_text(PROBE)
    upstream.enqueue_tool_use("Bash", {"command": "python3 probe.py"}, text="Probing.")
    upstream.enqueue_text("pong", input_tokens=3, output_tokens=1)  # the probe's own call
    upstream.enqueue_text("Probed every route.", input_tokens=30, output_tokens=5)
    created = await claude_orch.manager.create_job(
        CreateJobRequest(
            task="Probe the routes", mode=JobMode.CLAUDE_CODE, project_dir=str(workdir)
        )
    )
    job_id = created.job.job_id
    token = created.token
    assert token is not None

    # The container: its identity (and the image's own environment), no command.
    inspected = _inspect(docker_engine, job_id)
    image_env = docker_engine.images.get(fake_cli_image).attrs["Config"]["Env"]
    url = claude_orch.manager.orchestrator_url
    assert sorted(inspected["Config"]["Env"]) == sorted(
        [
            *image_env,
            f"IRONCLAW_JOB_ID={job_id}",
            f"IRONCLAW_ORCHESTRATOR_URL={url}",
            f"IRONCLAW_WORKER_TOKEN={token}",
            "IRONCLAW_WORKSPACE=/workspace",
        ]
    )
    assert inspected["Args"] == []
    assert inspected["Config"]["Entrypoint"] == ["ironclaw-claude-bridge"]

    await wait_for(
        lambda: claude_orch.manager.get_job(job_id).state.is_terminal,
        timeout=120,
        what="the Claude Code job to end",
    )
    final = claude_orch.manager.get_job(job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, final.result.message
    assert final.result.message == "Probed every route."

    probe = json.loads((workdir / "probe.json").read_text())
    assert probe["probes"] == {
        "credentials": 401,
        "credentials x-api-key": 401,
        "job": 401,
        "tools": 401,
        "event": 401,
        "status": 401,
        "llm/complete": 401,
        "complete": 401,
        "anthropic": 200,
    }
    env = probe["env"]
    assert env["ANTHROPIC_API_KEY"].startswith("ircl_")
    assert env["ANTHROPIC_BASE_URL"] == f"{url}/worker/{job_id}/anthropic"
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "claude-sonnet-5-5"
    assert not [name for name in env if name.startswith("IRONCLAW_")]
    assert not [name for name, value in env.items() if token in value]
    assert not [name for name, value in env.items() if UPSTREAM_KEY in value]

    # Nothing the agent forged reached the job; every model call went out with the real key.
    updates = [
        u
        async for u in claude_orch.manager.watch(job_id, from_start=True)
        if isinstance(u, JobUpdate)
    ]
    events = [u.payload for u in updates if u.kind in (UpdateKind.EVENT, UpdateKind.STATUS)]
    assert any(u.kind is UpdateKind.EVENT for u in updates)
    assert "forged" not in json.dumps(events, default=str)
    assert len(upstream.requests) == 3
    assert {r.api_key for r in upstream.requests} == {UPSTREAM_KEY}
    assert {r.body["model"] for r in upstream.requests} == {"claude-sonnet-5-5"}
    assert final.usage.calls == 3


async def test_a_budget_refusal_ends_the_job_budget_exceeded_by_its_code(
    claude_orch: Any, upstream: FakeAnthropic
) -> None:
    upstream.enqueue_tool_use("Bash", {"command": "echo one"}, input_tokens=10, output_tokens=5)
    upstream.enqueue_text("never asked for")
    final = await _run_to_the_end(
        claude_orch,
        CreateJobRequest(
            task="Count",
            mode=JobMode.CLAUDE_CODE,
            limits=JobLimitOverrides(llm_call_budget=1),
        ),
    )
    assert final.result is not None
    assert final.result.reason is TerminalReason.BUDGET_EXCEEDED, final.result.message
    details = dict(final.result.details or {})
    assert (details["reason"], details["refusal"]) == ("budget_exceeded", "call_budget_exhausted")
    # The stand-in says only "API Error: 429": the bridge asked the orchestrator why.
    assert final.result.message == (
        "the job's LLM policy refused a model call (call_budget_exhausted): API Error: 429"
    )
    assert upstream.pending == 1
    assert final.usage.calls == 1


async def test_the_bridge_and_the_cli_reach_a_worker_api_served_over_tls(
    start_orch: Any,
    make_settings: Any,
    fake_cli_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
) -> None:
    # Every address: beyond loopback and the bridge, so TLS with the orchestrator's own CA.
    orch = await start_orch(
        make_settings(
            CLAUDE_CODE_IMAGE=fake_cli_image,
            CLAUDE_CODE_MEMORY_MB="512",
            ANTHROPIC_API_KEY=UPSTREAM_KEY,
            ANTHROPIC_BASE_URL=upstream.url,
            LLM_PROVIDER="none",
            ORCHESTRATOR_HTTP_BIND="0.0.0.0",
        )
    )
    url = orch.manager.orchestrator_url
    assert url.startswith("https://")
    workdir = project("tls")
    dump = 'python3 -c \'import json, os; json.dump(dict(os.environ), open("env.json", "w"))\''
    upstream.enqueue_tool_use("Bash", {"command": dump}, text="Looking.")
    upstream.enqueue_text("Done over TLS.", input_tokens=3, output_tokens=2)
    final = await _run_to_the_end(
        orch,
        CreateJobRequest(task="Look", mode=JobMode.CLAUDE_CODE, project_dir=str(workdir)),
    )
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, final.result.message
    assert final.result.message == "Done over TLS."
    env = json.loads((workdir / "env.json").read_text())
    assert env["ANTHROPIC_BASE_URL"].startswith(f"{url}/worker/")
    # Node's extra roots: a bundle in the CLI's private $HOME holding the orchestrator's CA.
    bundle = env["NODE_EXTRA_CA_CERTS"]
    assert bundle == env["SSL_CERT_FILE"]
    assert bundle.startswith(env["HOME"])
    assert "GIT_SSL_CAINFO" not in env
    assert len(upstream.requests) == 2
