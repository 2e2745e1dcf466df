"""A workspace cloned from git by the job's own container before its agent starts, on an
isolated network through the egress gateway, from the test's git smart-HTTP server that
requires a token: the gateway injects it, the job never holds it (not in its workspace, not in
the clone's config), and without it the clone fails and the job says why."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import create, history, tool_results, wait_terminal
from tests.integration.egress.git_server import GIT, GitServer, make_repository
from tests.integration.egress.upstreams import TestCa, make_ca

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(GIT is None, reason="git is not installed on the host"),
]

TOKEN = "ghp_" + "gitWorkspaceE2eToken0123456789abcdef"[:36]


@pytest.fixture
async def git_server(tmp_path: Path) -> AsyncIterator[tuple[GitServer, TestCa]]:
    (tmp_path / "ca").mkdir()
    (tmp_path / "repos").mkdir()
    ca = make_ca(tmp_path / "ca", ["git.example"])
    make_repository(tmp_path / "repos", "repo")
    server = GitServer(tmp_path / "repos", TOKEN, ca.server_context()).start()
    try:
        yield server, ca
    finally:
        server.close()


async def test_the_container_clones_the_workspace_with_the_token_injected_at_egress(
    e2e: Any, worker_image: str, base_dir: Path, git_server: tuple[GitServer, TestCa]
) -> None:
    server, ca = git_server
    run = await e2e(
        "git_workspace.yaml",
        JOB_NETWORK="isolated",
        JOB_RELAY_IMAGE=worker_image,
        EGRESS_ALLOW_HOSTS="git.example:443",
        EGRESS_RESOLVE=f"git.example=127.0.0.1:{server.port}",
        EGRESS_UPSTREAM_CA=str(ca.ca_file),
    )
    grant = pb.CredentialGrant(
        name="github",
        value=TOKEN,
        inject_hosts=["git.example"],
        inject_format=pb.CREDENTIAL_INJECT_FORMAT_BASIC,
    )
    url = "https://git.example/repo.git"
    job = await create(
        run.stub,
        "Look at the repository",
        credentials=[grant],
        git=pb.GitWorkspace(url=url, ref="main", credential="github"),
    )
    assert job.git.url == url
    final = await wait_terminal(run.stub, job.job_id, timeout=180)
    assert final.state == pb.JOB_STATE_STOPPED, final.result.message

    updates = await history(run.stub, job.job_id)
    (output,) = [r["output"] for r in tool_results(updates, "shell")]
    assert "seeded" in output
    assert "seed" in output.splitlines()
    assert url in output
    project = base_dir / "projects" / job.job_id
    assert (project / "README").read_text() == "seeded\n"
    assert server.refused == 0
    assert server.authorizations  # the clone carried the token, injected by the gateway
    for path in project.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path

    # Without the grant nothing is injected (and the tunnel's TLS is the server's own, which
    # the job does not trust): the clone fails, and the job before its agent starts.
    denied = await create(run.stub, "Look again", git=pb.GitWorkspace(url=url))
    final = await wait_terminal(run.stub, denied.job_id, timeout=180)
    assert final.state == pb.JOB_STATE_FAILED
    assert final.result.reason == pb.TERMINAL_REASON_FAILED
    assert "git clone failed" in final.result.message
    assert tool_results(await history(run.stub, denied.job_id), "shell") == []
