"""Credentials injected at egress, from inside the real worker image on its own network
(``JOB_NETWORK=isolated``): ``git clone`` and ``git push`` over HTTPS to the test's own git
smart-HTTP server, which requires the token, succeed with the token injected by the gateway;
the placeholder sent to a second allowed host arrives there unchanged; and the container's
environment, its ``/proc/1/environ``, ``docker inspect``, its log and the orchestrator's log
hold only the placeholder, never the token.

The upstreams are the test's own HTTPS servers on the host's loopback, with certificates from a
CA the test makes (the gateway's ``EGRESS_UPSTREAM_CA``), reached through ``EGRESS_RESOLVE``:
nothing leaves the machine."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import string
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ironclaw_client.api.v1 import jobs_pb2 as pb
from tests.e2e.support import create, events, history, tool_results, wait_terminal
from tests.helpers import wait_for
from tests.integration.egress.git_server import GIT, GitServer, make_repository
from tests.integration.egress.upstreams import TestCa, Upstream, make_ca

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(GIT is None, reason="git is not installed on the host"),
]

NAMES = ["git.example", "other.example"]
TOKEN = "ghp_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(36))

# What the job sees is written to the workspace as it is: the job's reports mask anything
# token-shaped, placeholders included, so its tool output could not prove which one it held.
COMMANDS = [
    "GIT_TERMINAL_PROMPT=0 git clone -q https://git.example/repo.git clone 2>&1; echo rc=$?",
    "cd clone && echo 'from the job' > job.txt && git add job.txt"
    " && git -c user.name=job -c user.email=job@example commit -qm 'from the job'"
    " && GIT_TERMINAL_PROMPT=0 git push -q origin main 2>&1; echo rc=$?",
    'curl -sS --cacert ca.pem -H "Authorization: Bearer $GITHUB_TOKEN" https://other.example/'
    ' 2>&1; echo " rc=$?"',
    "env > seen-env.txt; { tr '\\0' '\\n' < /proc/1/environ; } > seen-proc1.txt 2>&1;"
    ' printf %s "$GITHUB_TOKEN" > seen-token.txt; touch ready;'
    " for i in $(seq 1 600); do [ -f go ] && break; sleep 0.1; done; echo waited",
]


@pytest.fixture
async def upstreams(tmp_path: Path) -> AsyncIterator[tuple[GitServer, Upstream, TestCa]]:
    (tmp_path / "ca").mkdir()
    (tmp_path / "repos").mkdir()
    ca = make_ca(tmp_path / "ca", NAMES)
    make_repository(tmp_path / "repos", "repo")
    git = GitServer(tmp_path / "repos", TOKEN, ca.server_context()).start()
    other = await Upstream(b"hello from other", tls=ca.server_context()).start()
    try:
        yield git, other, ca
    finally:
        git.close()
        await other.close()


def _script(path: Path) -> Path:
    turns = [
        {
            "content": "Working with the repository.",
            "tool_calls": [
                {"name": "shell", "arguments": {"command": command}} for command in COMMANDS
            ],
        },
        {"content": "Pushed."},
    ]
    path.write_text(json.dumps(turns))  # JSON is YAML
    return path


async def test_git_clone_and_push_with_the_token_injected_the_job_holds_a_placeholder(
    e2e: Any,
    sandbox_project: Any,
    worker_image: str,
    docker_engine: Any,
    upstreams: tuple[GitServer, Upstream, TestCa],
    tmp_path: Path,
) -> None:
    git, other, ca = upstreams
    project = sandbox_project("inject")
    shutil.copy(ca.ca_file, project / "ca.pem")
    with capture_logs() as logs:
        run = await e2e(
            _script(tmp_path / "inject.yaml"),
            JOB_NETWORK="isolated",
            JOB_RELAY_IMAGE=worker_image,
            EGRESS_ALLOW_HOSTS="git.example:443,other.example:443",
            EGRESS_RESOLVE=(
                f"git.example=127.0.0.1:{git.port},other.example=127.0.0.1:{other.port}"
            ),
            EGRESS_UPSTREAM_CA=str(ca.ca_file),
        )
        grant = pb.CredentialGrant(
            name="github",
            value=TOKEN,
            inject_hosts=["git.example"],
            inject_format=pb.CREDENTIAL_INJECT_FORMAT_BASIC,
        )
        job = await create(
            run.stub, "Push to the repository", project_dir=str(project), credentials=[grant]
        )

        # While the job waits, look at its container from outside.
        await wait_for(lambda: (project / "ready").exists(), timeout=120, what="the job's env")
        (container,) = docker_engine.containers.list(
            filters={"label": f"ironclaw.job_id={job.job_id}"}
        )
        inspected = json.dumps(container.attrs)
        container_log = container.logs().decode("utf-8", "replace")
        (project / "go").write_text("")
        final = await wait_terminal(run.stub, job.job_id, timeout=180)

    assert final.state == pb.JOB_STATE_STOPPED, final.result.message
    updates = await history(run.stub, job.job_id)
    outputs = [r["output"] for r in tool_results(updates, "shell")]
    assert len(outputs) == len(COMMANDS), outputs
    cloned, pushed, to_other, waited = outputs
    assert re.search(r"^rc=0$", cloned, re.MULTILINE), cloned
    assert re.search(r"^rc=0$", pushed, re.MULTILINE), pushed
    assert "hello from other rc=0" in to_other, to_other
    assert "waited" in waited

    # The clone and the push went through with the token, which the job never held.
    assert (project / "clone" / "README").read_text() == "seeded\n"
    assert GIT is not None
    process = await asyncio.create_subprocess_exec(
        GIT,
        "--git-dir",
        str(git.root / "repo.git"),
        "show",
        "main:job.txt",
        stdout=asyncio.subprocess.PIPE,
    )
    shown, _ = await process.communicate()
    assert shown == b"from the job\n"
    assert git.refused == 0
    assert git.authorizations  # every one the token, or the server would have refused it

    placeholder = (project / "seen-token.txt").read_text()
    assert placeholder.startswith("ghp_ironclawplaceholder"), placeholder
    seen_env = (project / "seen-env.txt").read_text()
    seen_proc = (project / "seen-proc1.txt").read_text()
    assert f"GITHUB_TOKEN={placeholder}" in seen_env
    assert "SSL_CERT_FILE=" in seen_env
    assert "GIT_SSL_CAINFO=" in seen_env
    # The second allowed host got the placeholder as the job sent it.
    (head,) = other.heads
    assert f"Bearer {placeholder}".encode() in head

    for where, text in {
        "env": seen_env,
        "/proc/1/environ": seen_proc,
        "docker inspect": inspected,
        "the container's log": container_log,
        "the tool output": json.dumps(outputs),
        "the orchestrator's log": repr(logs),
        "the second host": head.decode("latin-1"),
    }.items():
        assert TOKEN not in text, f"the token is in {where}"
    assert logs, "the orchestrator logged nothing: the capture is broken"

    audit = [e.data for e in events(updates) if e.event_type == "egress"]
    injected = [a for a in audit if a.get("injected")]
    assert injected, audit
    assert all(a["host"] == "git.example" for a in injected), audit
    assert all(a["injected"] == ["github"] for a in injected), audit
    assert next(a for a in audit if a["host"] == "other.example").get("injected") is None
    assert TOKEN not in json.dumps(audit)
