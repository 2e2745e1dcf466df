"""``GET /worker/{id}/tools``: a job is served exactly the catalogue tools it was granted, to its
own token only, with credentials referenced by name and never by value."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import CreateJobRequest, CredentialGrant
from orchestrator.errors import InvalidArgument
from orchestrator.http_api.schemas import ToolsInfo
from orchestrator.secrets import Secret
from tests.integration.worker_api.conftest import Job

pytestmark = pytest.mark.docker

WAT = b'(module (func (export "_start")))'


def write_catalogues(base: Path) -> None:
    (base / "mcp-servers.json").write_text(
        json.dumps(
            {
                "mcpServers": {
                    "gh": {
                        "command": "gh-mcp",
                        "args": ["--stdio"],
                        "env": {"GITHUB_TOKEN": "${credential:github}"},
                    },
                    "docs": {"url": "http://docs.internal:8000/mcp"},
                }
            }
        )
    )
    tools = base / "wasm-tools"
    tools.mkdir(exist_ok=True)
    (tools / "noop.wat").write_bytes(WAT)
    (tools / "noop.json").write_text(
        json.dumps({"description": "does nothing", "module": "noop.wat"})
    )


async def create(orch: Any, jobs: Any, **request: Any) -> Job:
    created = await orch.manager.create_job(CreateJobRequest(task="sleep", **request))
    jobs.created.append((orch, created.job.job_id))
    return Job(created.job.job_id, created.token)


async def test_a_job_gets_its_granted_tools_and_no_secret(
    api: Any, shared_orch: Any, jobs: Any
) -> None:
    write_catalogues(shared_orch.manager.settings.base_dir)
    github = "ghp_" + secrets.token_hex(18)
    job = await create(
        shared_orch,
        jobs,
        credentials=(CredentialGrant("github", "api_token", Secret(github), ""),),
        mcp_servers=("gh",),
        wasm_tools=("noop",),
    )
    plain = await create(shared_orch, jobs)

    reply = await api.call(job, "GET", "tools")
    assert reply.status == 200, reply.text
    ToolsInfo.model_validate(reply.body)  # what the OpenAPI document promises
    [server] = reply.body["mcp_servers"]
    assert server["name"] == "gh"
    assert server["command"] == "gh-mcp"
    assert server["env"] == {"GITHUB_TOKEN": "${credential:github}"}
    [tool] = reply.body["wasm_tools"]
    assert tool["name"] == "noop"
    assert base64.b64decode(tool["module_base64"]) == WAT
    assert reply.body["unavailable"] == []
    snapshot = shared_orch.manager.get_job(job.job_id)
    assert (snapshot.mcp_servers, snapshot.wasm_tools) == (("gh",), ("noop",))

    other = await api.call(plain, "GET", "tools")
    assert other.body == {"mcp_servers": [], "wasm_tools": [], "unavailable": []}
    stolen = await api.call(job, "GET", "tools", token=plain.token)
    stolen.expect_error(401, "invalid_token")
    api.assert_never_returned(github, job.token)


async def test_unknown_tools_and_ungranted_credentials_are_refused_before_any_container(
    shared_orch: Any, jobs: Any
) -> None:
    write_catalogues(shared_orch.manager.settings.base_dir)
    before = len(shared_orch.manager.job_ids())
    with pytest.raises(InvalidArgument, match="'nope' is not in the catalogue"):
        await shared_orch.manager.create_job(CreateJobRequest(task="x", mcp_servers=("nope",)))
    with pytest.raises(InvalidArgument, match="needs the credential grant\\(s\\) github"):
        await shared_orch.manager.create_job(CreateJobRequest(task="x", mcp_servers=("gh",)))
    assert len(shared_orch.manager.job_ids()) == before
