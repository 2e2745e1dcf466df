"""What an operator watches: /metrics as real jobs run, `ironclaw status`, `ironclaw usage`,
and the request id from gRPC metadata in the logs. Real orchestrator, real containers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from ironclaw_client.api.v1 import jobs_pb2 as pb
from ironclaw_client.api.v1 import jobs_pb2_grpc as pb_grpc
from orchestrator.domain.jobs import CreateJobRequest, JobState
from tests.helpers import wait_for

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
HELLO_SCRIPT = ROOT / "tests/fixtures/scripts/hello.yaml"
IRONCLAW = str(Path(sys.executable).parent / "ironclaw")
MISSING_IMAGE = "ironclaw-no-such-image:missing"


async def _run(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode()


async def _scrape(orch: Any) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    url = f"http://{orch.settings.metrics_bind}:{orch.metrics_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_move_as_real_jobs_run(
    start_orch: Any, make_settings: Any, test_agent_image: str
) -> None:
    orch = await start_orch(
        make_settings(WORKER_IMAGE=test_agent_image, LLM_SCRIPT=str(HELLO_SCRIPT))
    )
    assert orch.metrics_port not in (None, orch.http_port)
    assert orch.metrics_server.host == "127.0.0.1"
    _, before = await _scrape(orch)
    assert _value(before, "ironclaw_jobs_created_total", mode="worker") == 0

    completing = await orch.manager.create_job(CreateJobRequest(task="complete OK metrics"))
    sleeping = await orch.manager.create_job(CreateJobRequest(task="sleep"))
    # One LLM call through the worker API, as the job's agent would make it.
    url = f"http://{orch.http_host}:{orch.http_port}/worker/{sleeping.job.job_id}/llm/complete"
    headers = {"Authorization": f"Bearer {sleeping.token}"}
    body = {"messages": [{"role": "user", "content": "hello"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        async with session.post(url, json=body) as response:
            assert response.status == 401
    await wait_for(
        lambda: orch.manager.get_job(completing.job.job_id).state is JobState.STOPPED,
        timeout=60,
        what="the completing job to end",
    )
    _, running = await _scrape(orch)
    assert _value(running, "ironclaw_jobs", state="running", mode="worker") == 1
    await orch.manager.stop_job(sleeping.job.job_id)

    text, after = await _scrape(orch)
    assert _value(after, "ironclaw_jobs_created_total", mode="worker") == 2
    assert _value(after, "ironclaw_job_start_seconds_count", mode="worker") == 2
    assert _value(after, "ironclaw_jobs_ended_total", mode="worker", reason="completed") == 1
    assert (
        _value(after, "ironclaw_jobs_ended_total", mode="worker", reason="stopped_by_operator") == 1
    )
    assert (
        _value(after, "ironclaw_job_duration_seconds_count", mode="worker", reason="completed") == 1
    )
    assert _value(after, "ironclaw_jobs", state="stopped", mode="worker") == 2
    assert _value(after, "ironclaw_jobs", state="running", mode="worker") == 0
    llm = {"provider": "scripted", "model": "scripted"}
    assert _value(after, "ironclaw_llm_calls_total", **llm) == 1
    assert _value(after, "ironclaw_llm_proxy_seconds_count", **llm) == 1
    assert (
        _value(after, "ironclaw_llm_tokens_total", direction="input", **llm)
        == (answer["input_tokens"])
    )
    assert (
        _value(after, "ironclaw_llm_tokens_total", direction="output", **llm)
        == (answer["output_tokens"])
    )
    route = "/worker/{job_id}/llm/complete"
    assert _value(
        after, "ironclaw_worker_api_requests_total", route=route, method="POST", code="200"
    )
    assert _value(
        after, "ironclaw_worker_api_requests_total", route=route, method="POST", code="401"
    )
    # The agent's own calls (/complete, /status) are counted by route pattern too.
    assert _value(
        after,
        "ironclaw_worker_api_requests_total",
        route="/worker/{job_id}/complete",
        method="POST",
        code="200",
    )
    # Bounded labels: no job id anywhere in the exposition.
    for job_id in (completing.job.job_id, sleeping.job.job_id):
        assert job_id not in text
        assert job_id[:8] not in text


async def test_status_reports_a_missing_image_with_the_fix(
    start_orch: Any, make_settings: Any, base_dir: Path, test_agent_image: str
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=MISSING_IMAGE, JOB_LLM_TOKEN_BUDGET="1234"))
    env = {
        "IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}",
        "IRONCLAW_BASE_DIR": str(base_dir),
        "WORKER_IMAGE": MISSING_IMAGE,
        "CLAUDE_CODE_IMAGE": test_agent_image,
        "JOB_LLM_TOKEN_BUDGET": "1234",
    }
    code, out, err = await _run(IRONCLAW, "status", env=env)
    assert code == 1, err
    assert f"{MISSING_IMAGE}  MISSING" in out
    assert "make images" in out
    assert "health: SERVING" in out

    code, out, err = await _run(IRONCLAW, "status", "--json", env=env)
    assert code == 1, err
    report = json.loads(out)
    assert report["health"] == "SERVING"
    assert report["version"] not in ("", "unknown")
    assert report["docker"]["reachable"] is True
    assert report["docker"]["version"]
    assert report["images"]["worker"] == {"image": MISSING_IMAGE, "present": False}
    assert report["images"]["claude-code"]["present"] is True
    assert report["budget_defaults"]["llm_token_budget"] == 1234
    assert set(report["jobs_by_state"]) >= {"creating", "running", "stopped", "failed"}
    [problem] = report["problems"]
    assert MISSING_IMAGE in problem["problem"]
    assert "make images" in problem["fix"]

    env["WORKER_IMAGE"] = test_agent_image
    code, out, err = await _run(IRONCLAW, "status", env=env)
    assert code == 0, out + err
    assert "no problems found" in out


async def test_status_lists_the_tool_catalogues_and_explains_a_broken_one(
    start_orch: Any, make_settings: Any, base_dir: Path, test_agent_image: str
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    env = {
        "IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}",
        "IRONCLAW_BASE_DIR": str(base_dir),
        "WORKER_IMAGE": test_agent_image,
        "CLAUDE_CODE_IMAGE": test_agent_image,
    }
    catalogue = base_dir / "mcp-servers.json"
    catalogue.write_text(json.dumps({"mcpServers": {"files": {"command": "files-mcp"}}}))
    code, out, err = await _run(IRONCLAW, "status", env=env)
    assert code == 0, out + err
    assert f"mcp servers   files  ({catalogue})" in out

    catalogue.write_text(
        json.dumps({"mcpServers": {"files": {"command": "x", "env": {"API_TOKEN": "clear"}}}})
    )
    code, out, err = await _run(IRONCLAW, "status", "--json", env=env)
    assert code == 1, err
    [problem] = json.loads(out)["problems"]
    assert "env API_TOKEN holds a value in clear" in problem["problem"]
    assert "refuses to start" in problem["fix"]

    # And the orchestrator indeed refuses to start with it: one line naming the problem.
    serve_env = {**env, "ORCHESTRATOR_PORT": "0", "ORCHESTRATOR_HTTP_PORT": "0"}
    serve_env |= {"METRICS_ENABLED": "0", "ORCHESTRATOR_PERSIST": "0", "LLM_PROVIDER": "none"}
    code, out, err = await _run(IRONCLAW, "serve", env=serve_env)
    assert code == 2, out + err
    assert "configuration error" in err
    assert "API_TOKEN holds a value in clear" in err
    assert "Traceback" not in err


async def test_status_checks_the_agent_catalogue_and_the_image_of_each_agent(
    start_orch: Any, make_settings: Any, base_dir: Path, test_agent_image: str
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    env = {
        "IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}",
        "IRONCLAW_BASE_DIR": str(base_dir),
        "WORKER_IMAGE": test_agent_image,
        "CLAUDE_CODE_IMAGE": test_agent_image,
    }
    entry = {
        "image": MISSING_IMAGE,
        "command": ["some-agent", "{task}"],
        "api": "anthropic",
        "key_env": "ANTHROPIC_API_KEY",
        "base_url_env": "ANTHROPIC_BASE_URL",
        "model": "claude-sonnet-5-5",
    }
    agents = base_dir / "agents.json"
    agents.write_text(
        json.dumps({"agents": {"gone": entry, "here": {**entry, "image": test_agent_image}}})
    )
    code, out, err = await _run(IRONCLAW, "status", "--json", env=env)
    assert code == 1, err
    report = json.loads(out)
    assert report["images"]["agent:here"] == {"image": test_agent_image, "present": True}
    assert report["images"]["agent:gone"] == {"image": MISSING_IMAGE, "present": False}
    [problem] = report["problems"]
    assert "agent:gone" in problem["problem"]
    assert "build-images.sh mini-swe-agent" in problem["fix"]

    agents.write_text(json.dumps({"agents": {"gone": {**entry, "api": "gemini"}}}))
    code, out, err = await _run(IRONCLAW, "status", "--json", env=env)
    assert code == 1, err
    [problem] = json.loads(out)["problems"]
    assert "agents.json: agent 'gone': api must be one of anthropic, openai" in problem["problem"]
    assert "refuses to start" in problem["fix"]

    serve_env = {**env, "ORCHESTRATOR_PORT": "0", "ORCHESTRATOR_HTTP_PORT": "0"}
    serve_env |= {"METRICS_ENABLED": "0", "ORCHESTRATOR_PERSIST": "0", "LLM_PROVIDER": "none"}
    code, out, err = await _run(IRONCLAW, "serve", env=serve_env)
    assert code == 2, out + err
    assert "agent 'gone': api must be one of anthropic, openai" in err
    assert "Traceback" not in err


async def test_status_explains_an_unreachable_control_plane() -> None:
    code, out, _ = await _run(IRONCLAW, "status", env={"IRONCLAW_ORCHESTRATOR": "127.0.0.1:1"})
    assert code == 1
    assert "ironclaw serve" in out
    assert "health: unreachable" in out


async def test_usage_sums_match_the_jobs_usage(
    start_orch: Any, make_settings: Any, test_agent_image: str
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    manager = orch.manager
    a = (await manager.create_job(CreateJobRequest(task="sleep"))).job.job_id
    b = (await manager.create_job(CreateJobRequest(task="sleep"))).job.job_id
    for job_id, calls in ((a, [(10, 5), (20, 7)]), (b, [(7, 3)])):
        for input_tokens, output_tokens in calls:
            held = manager.ledger.reserve(job_id, request_bytes=100, max_tokens=None)
            manager.ledger.settle(held, input_tokens, output_tokens)
    await manager.complete_job(a, True, "done")
    await manager.stop_job(b)

    env = {"IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}"}
    code, out, err = await _run(IRONCLAW, "usage", "--json", env=env)
    assert code == 0, err
    report = json.loads(out)
    rows = {row["job_id"]: row for row in report["jobs"]}
    assert set(rows) == {a, b}
    for job_id, row in rows.items():
        usage = manager.get_job(job_id).usage
        assert (row["llm_calls"], row["input_tokens"], row["output_tokens"]) == (
            usage.calls,
            usage.input_tokens,
            usage.output_tokens,
        )
        assert row["wall_seconds"] >= 0
    assert rows[a]["terminal_reason"] == "completed"
    assert rows[b]["terminal_reason"] == "stopped_by_operator"
    assert report["total"] == {
        "jobs": 2,
        "llm_calls": 3,
        "input_tokens": 37,
        "output_tokens": 15,
        "wall_seconds": pytest.approx(rows[a]["wall_seconds"] + rows[b]["wall_seconds"], abs=0.01),
    }

    code, out, err = await _run(IRONCLAW, "usage", "--since", "1h", env=env)
    assert code == 0, err
    assert a in out
    assert "TOTAL (2 jobs)" in out
    code, out, err = await _run(
        IRONCLAW, "usage", "--json", "--since", "2999-01-01T00:00Z", env=env
    )
    assert code == 0, err
    assert json.loads(out)["total"]["jobs"] == 0
    code, _, err = await _run(IRONCLAW, "usage", "--since", "yesterday-ish", env=env)
    assert code == 2
    assert "--since" in err


async def test_request_id_from_grpc_metadata_reaches_the_logs(
    start_orch: Any, make_settings: Any, test_agent_image: str
) -> None:
    orch = await start_orch(make_settings(WORKER_IMAGE=test_agent_image))
    async with aio.insecure_channel(f"127.0.0.1:{orch.grpc_port}") as channel:
        stub = pb_grpc.JobServiceStub(channel)
        with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]
        ) as logs:
            response = await stub.CreateJob(
                pb.CreateJobRequest(task="sleep"), metadata=(("x-request-id", "req-42"),)
            )
            await stub.StopJob(
                pb.StopJobRequest(job_id=response.job.job_id),
                metadata=(("x-request-id", "req-43"),),
            )
    job_id = response.job.job_id
    created = [e for e in logs if e["event"] == "job created"]
    assert created
    assert created[0]["request_id"] == "req-42"
    assert created[0]["job_id"] == job_id
    ended = [e for e in logs if e["event"] == "job ended"]
    assert ended
    assert ended[0]["request_id"] == "req-43"
    assert ended[0]["job_id"] == job_id
    # Every line about this job names it.
    about_job = [e for e in logs if e.get("request_id") in ("req-42", "req-43")]
    assert all(e.get("job_id") == job_id for e in about_job)
