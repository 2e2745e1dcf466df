"""Git workspaces: what admission accepts (an https URL without user info, a ref that is no
option, a host the job may reach, a named grant injected for it), how the job learns it
(GET /job's ``git``), and the worker's clone into the empty workspace, against real git
repositories on disk."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator.domain.jobs import NO_TOOLS, CreateJobRequest, CredentialGrant, GitSource
from orchestrator.errors import InvalidArgument
from orchestrator.jobs.admission import admit
from orchestrator.secrets import Secret
from orchestrator.settings import Settings
from worker.git_checkout import CheckoutFailed, GitWorkspace, clone_workspace, git_workspace

GIT = shutil.which("git")
TOKEN = "ghp_" + "t" * 36


def tools(*_: Any) -> Any:
    return NO_TOOLS


def isolated(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(
        {
            "IRONCLAW_BASE_DIR": str(tmp_path),
            "JOB_NETWORK": "isolated",
            "EGRESS_ALLOW_HOSTS": "git.example:443,*.corp.example",
            **env,
        }
    )


def injected(name: str = "git", hosts: tuple[str, ...] = ("git.example",)) -> CredentialGrant:
    return CredentialGrant(
        name=name,
        credential_type="api_token",
        value=Secret(TOKEN),
        env_name="GIT_TOKEN",
        inject_hosts=hosts,
    )


def test_a_git_workspace_is_admitted_with_its_url_ref_and_credential(tmp_path: Path) -> None:
    request = CreateJobRequest(
        task="fix it",
        credentials=(injected(),),
        git=GitSource(
            url=" https://git.example/team/repo.git ", ref="release/1.2", credential="git"
        ),
    )
    job = admit(request, isolated(tmp_path), tools)
    assert job.git == GitSource(
        url="https://git.example/team/repo.git", ref="release/1.2", credential="git"
    )
    assert job.project_dir is None


@pytest.mark.parametrize(
    ("git", "words"),
    [
        (GitSource(url="http://git.example/repo.git"), "https://"),
        (GitSource(url="ssh://git.example/repo.git"), "https://"),
        (GitSource(url=f"https://x:{TOKEN}@git.example/repo.git"), "user info"),
        (GitSource(url="https://git.example"), "host\\[:port\\]/path"),
        (GitSource(url="https://git.example/repo.git?x=1"), "host\\[:port\\]/path"),
        (GitSource(url="https://git.example/re po.git"), "whitespace"),
        (GitSource(url="https://git.example:99999/repo.git"), "not a URL"),
        (GitSource(url="https://elsewhere.example/repo.git"), "not reachable"),
        (GitSource(url="https://git.example:8443/repo.git"), "not reachable"),
        (GitSource(url="https://git.example/r.git", ref="--upload-pack=evil"), "git.ref"),
        (GitSource(url="https://git.example/r.git", ref="a..b"), "git.ref"),
        (GitSource(url="https://git.example/r.git", ref="ma in"), "git.ref"),
        (GitSource(url="https://git.example/r.git", credential="nope"), "not a granted"),
    ],
)
def test_refused_git_workspaces_name_the_field(tmp_path: Path, git: GitSource, words: str) -> None:
    request = CreateJobRequest(task="fix it", git=git)
    with pytest.raises(InvalidArgument, match=words) as caught:
        admit(request, isolated(tmp_path), tools)
    assert TOKEN not in caught.value.message


def test_the_named_credential_must_be_injected_for_the_host(tmp_path: Path) -> None:
    request = CreateJobRequest(
        task="fix it",
        credentials=(injected(hosts=("a.corp.example",)),),
        git=GitSource(url="https://git.example/repo.git", credential="git"),
    )
    with pytest.raises(InvalidArgument, match=r"not injected for git\.example:443"):
        admit(request, isolated(tmp_path), tools)


def test_git_and_project_dir_are_exclusive(tmp_path: Path) -> None:
    request = CreateJobRequest(
        task="x", project_dir="mine", git=GitSource(url="https://git.example/repo.git")
    )
    with pytest.raises(InvalidArgument, match="exclusive"):
        admit(request, isolated(tmp_path), tools)


def test_a_job_list_narrower_than_the_host_refuses_it(tmp_path: Path) -> None:
    request = CreateJobRequest(
        task="x",
        egress_hosts=("a.corp.example",),
        git=GitSource(url="https://git.example/repo.git"),
    )
    with pytest.raises(InvalidArgument, match=r"egress\.allow_hosts"):
        admit(request, isolated(tmp_path), tools)


def test_on_the_bridge_network_the_host_is_not_checked(tmp_path: Path) -> None:
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "JOB_NETWORK": "bridge"})
    job = admit(
        CreateJobRequest(task="x", git=GitSource(url="https://anywhere.example/r.git")),
        settings,
        tools,
    )
    assert job.git is not None


def test_get_job_s_git_section_is_read_by_the_worker() -> None:
    assert git_workspace({"git": None}) is None
    assert git_workspace({}) is None
    assert git_workspace({"git": {"url": "https://h/r.git", "ref": "v1"}}) == GitWorkspace(
        "https://h/r.git", "v1"
    )


# -- the clone, against repositories on disk --------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    if GIT is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "origin"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "app.py").write_text("VERSION = 1\n")
    _git(repo, "add", "app.py")
    _git(repo, "commit", "-qm", "one")
    _git(repo, "tag", "v1")
    _git(repo, "checkout", "-qb", "feature")
    (repo / "app.py").write_text("VERSION = 2\n")
    _git(repo, "commit", "-qam", "two")
    _git(repo, "checkout", "-q", "main")
    return repo


@pytest.mark.parametrize(
    ("ref", "version"),
    [("", "VERSION = 1\n"), ("feature", "VERSION = 2\n"), ("v1", "VERSION = 1\n")],
)
def test_the_worker_clones_into_the_empty_workspace_at_the_ref(
    origin: Path, tmp_path: Path, ref: str, version: str
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    said = clone_workspace(GitWorkspace(f"file://{origin}", ref), workspace, _env())
    assert (workspace / "app.py").read_text() == version
    assert said.startswith(f"cloned file://{origin} at ")


def test_a_clone_into_a_workspace_that_is_not_empty_is_refused(
    origin: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "keep.txt").write_text("mine")
    with pytest.raises(CheckoutFailed, match="not empty"):
        clone_workspace(GitWorkspace(f"file://{origin}"), workspace, _env())
    assert sorted(p.name for p in workspace.iterdir()) == ["keep.txt"]


def test_a_failed_clone_says_why_with_secrets_masked(origin: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    with pytest.raises(CheckoutFailed, match="git checkout failed") as caught:
        clone_workspace(GitWorkspace(f"file://{origin}", "no-such-ref"), workspace, _env())
    assert "no-such-ref" in str(caught.value)
    missing = tmp_path / f"missing-{TOKEN}"
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(CheckoutFailed, match="git clone failed") as caught:
        clone_workspace(GitWorkspace(f"file://{missing}"), other, _env(), secrets=[TOKEN])
    assert TOKEN not in str(caught.value)


def _env() -> dict[str, str]:
    import os

    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}


def test_the_git_source_survives_the_store_and_the_wire() -> None:
    from ironclaw_client.api.v1 import jobs_pb2 as pb
    from orchestrator.grpc_api.convert import create_request_from_pb, job_to_pb
    from orchestrator.jobs.persistence import record_from_json, record_to_json, snapshot_from_json
    from tests.helpers import job_record

    source = GitSource(url="https://git.example/r.git", ref="v1", credential="git")
    record = job_record(git=source)
    data = record_to_json(record)
    assert snapshot_from_json(data).git == source
    assert record_from_json(data, 10).git == source
    assert job_to_pb(record.snapshot()).git == pb.GitWorkspace(
        url="https://git.example/r.git", ref="v1", credential="git"
    )
    # A record written before git workspaces has none.
    del data["git"]
    assert snapshot_from_json(data).git is None
    request = pb.CreateJobRequest(
        task="x", git=pb.GitWorkspace(url="https://git.example/r.git", ref="main")
    )
    assert create_request_from_pb(request).git == GitSource("https://git.example/r.git", "main")
    assert create_request_from_pb(pb.CreateJobRequest(task="x")).git is None
