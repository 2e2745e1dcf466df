"""Agent mode in real containers: a catalogue agent (the tiny stand-in of tests/images, a CLI
that knows nothing of the orchestrator and streams the Anthropic Messages API from the URL and
key its environment names) runs in /workspace under the worker's hardening through
``ironclaw-agent-run``; the job ends with the command: 0 completes it with the last output, any
other code ends it EXITED with that code. The container and the agent hold the job's LLM key,
never the real one, and the job's usage is what the upstream served, to the token."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import (
    JobLimitOverrides,
    JobUpdate,
    LlmUsage,
    TerminalReason,
    UpdateKind,
)
from tests.conftest import ROOT
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.helpers import wait_for
from tests.integration.agents.conftest import (
    UPSTREAM_KEY,
    run_agent_job,
    tiny_entry,
    wait_until_ended,
)

pytestmark = pytest.mark.docker


async def _events(orch: Any, job_id: str) -> list[dict[str, Any]]:
    return [
        dict(update.payload)
        async for update in orch.manager.watch(job_id, from_start=True)
        if isinstance(update, JobUpdate) and update.kind is UpdateKind.EVENT
    ]


async def test_an_agent_edits_the_workspace_and_its_job_completes_with_its_last_output(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
    docker_engine: Any,
) -> None:
    orch = await agents_orch({"tiny": tiny_entry(test_agents_image)})
    workdir = project("tiny")
    upstream.enqueue_text(
        "WRITE hello.txt hello from the tiny agent\nENV seen-env.json\nSAY all done",
        input_tokens=37,
        output_tokens=11,
    )
    job_id, token = await run_agent_job(orch, "tiny", "Write hello.txt", workdir)

    # The container: the entry's image, the runner as entrypoint, the worker's hardening, and
    # an environment of the job's identity and the image's own settings only.
    inspected = docker_engine.api.inspect_container(f"ironclaw-agent-{job_id}")
    assert inspected["Config"]["Image"] == test_agents_image
    assert inspected["Config"]["Entrypoint"] == ["ironclaw-agent-run"]
    assert inspected["Args"] == []
    assert inspected["Config"]["User"] == "1000:1000"
    assert inspected["Config"]["WorkingDir"] == "/workspace"
    host = inspected["HostConfig"]
    assert host["CapDrop"] == ["ALL"]
    assert host["CapAdd"] == ["CHOWN"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] == host["MemorySwap"] == 512 << 20
    assert inspected["Config"]["Labels"]["ironclaw.mode"] == "agent"
    image_env = docker_engine.images.get(test_agents_image).attrs["Config"]["Env"]
    url = orch.manager.orchestrator_url
    assert sorted(inspected["Config"]["Env"]) == sorted(
        [
            *image_env,
            f"IRONCLAW_JOB_ID={job_id}",
            f"IRONCLAW_ORCHESTRATOR_URL={url}",
            f"IRONCLAW_WORKER_TOKEN={token}",
            "IRONCLAW_WORKSPACE=/workspace",
        ]
    )
    assert UPSTREAM_KEY not in json.dumps(inspected)

    final = await wait_until_ended(orch, job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, final.result.message
    assert final.result.message == "\n".join(
        [
            "tiny-agent: working on 'Write hello.txt' with claude-sonnet-5-5",
            "tiny-agent: wrote hello.txt",
            "all done",
        ]
    )
    assert dict(final.result.details or {}) == {"agent": "tiny", "exit_code": 0}
    assert (workdir / "hello.txt").read_text() == "hello from the tiny agent\n"

    # What the agent ran with: the job's LLM key and its route, the entry's settings, and no
    # worker token, no IRONCLAW_ variable, no real key.
    seen = json.loads((workdir / "seen-env.json").read_text())
    assert seen["ANTHROPIC_API_KEY"].startswith("ircl_")
    assert seen["ANTHROPIC_BASE_URL"] == f"{url}/worker/{job_id}/anthropic"
    assert seen["TINY_AGENT_SETTING"] == "on"
    assert not [name for name in seen if name.startswith("IRONCLAW_")]
    assert not [name for name, value in seen.items() if token in value or UPSTREAM_KEY in value]

    # The one model call went upstream streamed, with the real key and the entry's model; the
    # job's usage is exactly what the upstream served.
    assert len(upstream.requests) == 1
    served = upstream.requests[0]
    assert served.api_key == UPSTREAM_KEY
    assert served.body["stream"] is True
    assert served.body["model"] == "claude-sonnet-5-5"
    assert final.usage == LlmUsage(calls=1, input_tokens=37, output_tokens=11)

    # The output reached the job's events as it came, and the container log with the job.
    events = await _events(orch, job_id)
    said = "\n".join(
        str(event["data"].get("content", ""))
        for event in events
        if event["event_type"] == "message"
    )
    assert "tiny-agent: wrote hello.txt" in said
    # The container is removed once the job has ended, as every job's.
    await wait_for(
        lambda: (
            not docker_engine.api.containers(all=True, filters={"name": f"ironclaw-agent-{job_id}"})
        ),
        timeout=60,
        what="the agent's container to be removed",
    )


async def test_a_non_zero_exit_ends_the_job_exited_with_the_command_s_code(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
) -> None:
    orch = await agents_orch({"tiny": tiny_entry(test_agents_image)})
    upstream.enqueue_text("SAY giving up\nEXIT 3", input_tokens=5, output_tokens=2)
    job_id, _ = await run_agent_job(orch, "tiny", "Try", project("exits"))
    final = await wait_until_ended(orch, job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.EXITED, final.result.message
    assert final.result.exit_code == 3
    assert not final.result.success
    # The log tail is kept as the container goes.
    tail = await wait_for(
        lambda: orch.manager.get_job(job_id).log_tail, timeout=60, what="the log tail"
    )
    assert "giving up" in tail
    assert "agent tiny exited with 3" in tail
    assert final.usage == LlmUsage(calls=1, input_tokens=5, output_tokens=2)


async def test_a_stream_cut_by_the_budget_ends_the_agent_s_job_budget_exceeded(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
) -> None:
    # An upstream that ignores max_tokens: the route cuts the stream with Anthropic's error
    # event once it runs past the grant; the agent gives up as the provider's SDKs do, and the
    # job is typed by its budget, not as a plain exit.
    orch = await agents_orch({"tiny": tiny_entry(test_agents_image)})
    upstream.enqueue_text("SAY " + "word " * 8000, output_tokens=8000)
    limits = JobLimitOverrides(llm_max_tokens_per_call=300, llm_token_budget=8000)
    job_id, _ = await run_agent_job(orch, "tiny", "Talk", project("cut"), limits=limits)
    final = await wait_until_ended(orch, job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.BUDGET_EXCEEDED, final.result.message
    assert final.result.exit_code == 1
    assert "token_budget_exhausted" in final.result.message
    tail = await wait_for(
        lambda: orch.manager.get_job(job_id).log_tail, timeout=60, what="the log tail"
    )
    assert "provider error in the stream" in tail
    # Charged its whole reservation: what the upstream billed past the grant is unknown.
    assert final.usage.calls == 1
    assert final.usage.output_tokens == 300
    assert final.usage.input_tokens + final.usage.output_tokens <= 8000


async def test_an_agent_that_reports_its_result_ends_the_job_before_its_command_exits(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
) -> None:
    orch = await agents_orch({"tiny": tiny_entry(test_agents_image)})
    upstream.enqueue_text("WRITE done.txt yes\nCOMPLETE finished early", output_tokens=4)
    job_id, _ = await run_agent_job(orch, "tiny", "Finish", project("early"))
    final = await wait_until_ended(orch, job_id, timeout=60)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, final.result.message
    assert final.result.message == "finished early"
    assert final.usage == LlmUsage(calls=1, input_tokens=10, output_tokens=4)


async def test_a_model_outside_the_allowlist_gets_the_provider_s_error_and_nothing_goes_up(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
) -> None:
    # The entry's model is the job's; this agent asks for another, outside the allowlist too.
    entry = tiny_entry(test_agents_image)
    entry["command"] = ["tiny-agent", "--model", "claude-opus-9-9", "{task}"]
    orch = await agents_orch({"greedy": entry}, LLM_MODEL_ALLOWLIST="claude-haiku-5-5")
    job_id, _ = await run_agent_job(orch, "greedy", "Use the big model", project("greedy"))
    final = await wait_until_ended(orch, job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.EXITED, final.result.message
    assert final.result.exit_code == 1
    # The agent printed the error as the provider's API shapes it: its own error document.
    tail = await wait_for(
        lambda: orch.manager.get_job(job_id).log_tail, timeout=60, what="the log tail"
    )
    line = next(ln for ln in tail.splitlines() if "provider error 403" in ln)
    document = json.loads(line.split("provider error 403: ", 1)[1])
    assert document["type"] == "error"
    assert document["error"]["type"] == "permission_error"
    assert "claude-opus-9-9" in document["error"]["message"]
    assert upstream.requests == []
    assert final.usage.calls == 0


async def test_the_cli_runs_an_agent_by_name_and_refuses_an_unknown_one(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    orch = await agents_orch(
        {"tiny": tiny_entry(test_agents_image), "other": tiny_entry(test_agents_image)}
    )

    async def cli(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(ROOT / ".venv" / "bin" / "ironclaw"),
            "job",
            "--orchestrator",
            f"127.0.0.1:{orch.grpc_port}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(tmp_path)},
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 180)
        assert proc.returncode is not None
        return proc.returncode, (stdout + stderr).decode()

    code, text = await cli("create", "--agent", "aider", "fix it")
    assert code != 0
    assert "INVALID_ARGUMENT" in text, text
    assert "agent 'aider' is not in the catalogue (known: other, tiny)" in text

    workdir = project("cli")
    upstream.enqueue_text("WRITE hello.txt written for the cli\nSAY bye")
    code, text = await cli(
        "create", "--agent", "tiny", "--project", str(workdir), "--wait", "Write it"
    )
    assert code == 0, text
    assert (workdir / "hello.txt").read_text() == "written for the cli\n"
    job_id = text.split("job ", 1)[1].split(" ", 1)[0]
    code, text = await cli("get", job_id)
    assert code == 0, text
    assert "mode:     agent (tiny)" in text


async def test_claude_code_runs_through_the_same_catalogue(
    agents_orch: Callable[..., Any],
    fake_cli_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
) -> None:
    # deploy/agents/agents.json's claude-code entry, on the stand-in CLI's image.
    catalogue = json.loads((ROOT / "deploy" / "agents" / "agents.json").read_text())
    entry = {**catalogue["agents"]["claude-code"], "image": fake_cli_image}
    orch = await agents_orch({"claude-code": entry}, WORKER_MEMORY_MB="1024")
    workdir = project("claude")
    upstream.enqueue_tool_use(
        "Bash", {"command": "echo edited by claude > hello.txt"}, input_tokens=20, output_tokens=9
    )
    upstream.enqueue_text("Wrote hello.txt.", input_tokens=31, output_tokens=4)
    job_id, _ = await run_agent_job(orch, "claude-code", "Write hello.txt", workdir)
    final = await wait_until_ended(orch, job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, final.result.message
    assert (workdir / "hello.txt").read_text() == "edited by claude\n"
    # The prompt reached the CLI as its -p argument; its calls went up with the real key.
    assert upstream.requests[0].body["messages"][0]["content"] == "Write hello.txt"
    assert {r.api_key for r in upstream.requests} == {UPSTREAM_KEY}
    assert {r.body["model"] for r in upstream.requests} == {"claude-sonnet-5-5"}
    assert final.usage == LlmUsage(calls=2, input_tokens=51, output_tokens=13)
    assert '"result": "Wrote hello.txt."' in final.result.message


async def test_an_agent_on_its_isolated_network_reaches_its_model_route_and_nothing_else(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
) -> None:
    # The default network mode: the job's own network, a relay to the worker API, and the
    # egress gateway (which allows nothing here) for everything else.
    orch = await agents_orch({"tiny": tiny_entry(test_agents_image)}, JOB_NETWORK="isolated")
    workdir = project("isolated")
    upstream.enqueue_text("WRITE hello.txt isolated\nENV seen-env.json", output_tokens=3)
    job_id, _ = await run_agent_job(orch, "tiny", "Write hello.txt", workdir)
    final = await wait_until_ended(orch, job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, (final.result.message, final.log_tail)
    assert (workdir / "hello.txt").read_text() == "isolated\n"
    seen = json.loads((workdir / "seen-env.json").read_text())
    # Its model route is the relay's worker API, reached directly; the rest goes through the
    # gateway with the job's egress key, never the token.
    assert urllib.parse.urlsplit(seen["ANTHROPIC_BASE_URL"]).hostname == seen["NO_PROXY"]
    assert "irce_" in seen["HTTPS_PROXY"]
    assert final.usage == LlmUsage(calls=1, input_tokens=10, output_tokens=3)


async def test_an_agent_calls_a_worker_api_served_over_tls_trusting_the_orchestrators_ca(
    agents_orch: Callable[..., Any],
    test_agents_image: str,
    upstream: FakeAnthropic,
    project: Callable[[str], Path],
    docker_engine: Any,
) -> None:
    # Every address: beyond loopback and the bridge, so the worker API speaks TLS with the
    # orchestrator's own CA, which the runner and the agent (a plain urllib client) trust.
    orch = await agents_orch(
        {"tiny": tiny_entry(test_agents_image)},
        ORCHESTRATOR_HTTP_BIND="0.0.0.0",
    )
    url = orch.manager.orchestrator_url
    assert url.startswith("https://host.docker.internal:")
    workdir = project("tiny-tls")
    upstream.enqueue_text("ENV seen-env.json\nSAY over tls", input_tokens=5, output_tokens=3)
    job_id, _ = await run_agent_job(orch, "tiny", "Say it", workdir)
    env = dict(
        e.split("=", 1)
        for e in docker_engine.api.inspect_container(f"ironclaw-agent-{job_id}")["Config"]["Env"]
    )
    assert env["IRONCLAW_ORCHESTRATOR_CA"] == orch.manager.orchestrator_ca_pem
    final = await wait_until_ended(orch, job_id)
    assert final.result is not None
    assert final.result.reason is TerminalReason.COMPLETED, final.result.message
    assert final.result.message.endswith("over tls")
    seen = json.loads((workdir / "seen-env.json").read_text())
    assert seen["ANTHROPIC_BASE_URL"] == f"{url}/worker/{job_id}/anthropic"
    # One bundle in the job's private $HOME: the system's roots and the orchestrator's CA.
    assert seen["SSL_CERT_FILE"] == seen["REQUESTS_CA_BUNDLE"] == seen["NODE_EXTRA_CA_CERTS"]
    assert seen["SSL_CERT_FILE"].startswith("/home/sandbox/")
    assert "GIT_SSL_CAINFO" not in seen
    assert len(upstream.requests) == 1
