"""What a job container may write and how much CPU it may take, on the real engine, with the
host config the Docker backend gives every job (built by the same two pure functions) and the
real worker image running a shell in place of the agent."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.containers.backend import ContainerSpec
from orchestrator.containers.docker_backend import host_config_arguments
from orchestrator.containers.spec import build_container_spec
from orchestrator.domain.jobs import JobMode
from tests.helpers import TEST_LIMITS

pytestmark = pytest.mark.docker


def _job_spec(settings: Any, project: Path) -> ContainerSpec:
    now = datetime.now(UTC)
    return build_container_spec(
        settings=settings,
        job_id=str(uuid.uuid4()),
        mode=JobMode.WORKER,
        limits=TEST_LIMITS,
        created_at=now,
        token="irc_" + "t" * 43,
        orchestrator_url="http://host.docker.internal:1",
        project_dir=str(project),
    )


@pytest.fixture
def run_in_job_container(
    docker_engine: Any, make_settings: Callable[..., Any], worker_image: str, base_dir: Path
) -> Iterator[Callable[..., tuple[str, str]]]:
    """Starts ``bash -c script`` in a job container; returns (container id, its project)."""
    created: list[str] = []

    def run(script: str, **settings_env: str) -> tuple[str, str]:
        project = base_dir / "projects" / uuid.uuid4().hex[:8]
        project.mkdir()
        os.chown(project, 1000, 1000)
        spec = _job_spec(make_settings(WORKER_IMAGE=worker_image, **settings_env), project)
        api = docker_engine.api
        container = api.create_container(
            image=spec.image,
            entrypoint=["bash", "-c"],
            command=[script],
            labels=dict(spec.labels),
            user=spec.user,
            working_dir=spec.working_dir,
            host_config=api.create_host_config(**host_config_arguments(spec)),
        )
        created.append(container["Id"])
        api.start(container["Id"])
        return container["Id"], str(project)

    yield run
    for container_id in created:
        with contextlib.suppress(Exception):
            docker_engine.api.remove_container(container_id, force=True)


def _output_when_done(docker_engine: Any, container_id: str, timeout: float = 120) -> str:
    result = docker_engine.api.wait(container_id, timeout=timeout)
    output = docker_engine.api.logs(container_id).decode(errors="replace")
    assert result["StatusCode"] == 0, output
    return str(output)


WRITES = r"""
set -u
# /var/tmp is writable by everyone in the image: only the read-only root refuses it.
for dir in / /usr /etc /opt/ironclaw /var/tmp; do
    if error=$(touch "$dir/ironclaw-probe" 2>&1); then echo "WROTE $dir"
    else echo "REFUSED $dir: $error"; fi
done
fill() {  # fill DIR MiB: writes MiB of data, says whether all of it fitted
    if dd if=/dev/zero of="$1/fill" bs=1M count="$2" status=none 2>/dev/null; then
        echo "FITTED $1 $2"
    else
        echo "FULL $1 $2 after $(( $(stat -c %s "$1/fill") >> 20 )) MiB"
    fi
    rm -f "$1/fill"
}
fill /tmp 24; fill /tmp 40
fill "$HOME" 40; fill "$HOME" 56
echo "HOME=$HOME"
printf 'echo home exec ok\n' > "$HOME/run.sh" && chmod +x "$HOME/run.sh" && "$HOME/run.sh"
dd if=/dev/zero of=/workspace/out bs=1M count=8 status=none && echo "WORKSPACE ok"
"""


def test_a_job_writes_only_to_its_workspace_and_bounded_tmp_and_home(
    run_in_job_container: Callable[..., tuple[str, str]], docker_engine: Any
) -> None:
    container_id, project = run_in_job_container(
        WRITES, WORKER_TMP_MB="32", WORKER_HOME_MB="48", WORKER_MEMORY_MB="512"
    )
    output = _output_when_done(docker_engine, container_id)
    for directory in ("/", "/usr", "/etc", "/opt/ironclaw", "/var/tmp"):
        assert f"REFUSED {directory}:" in output, output
    assert "/var/tmp/ironclaw-probe': Read-only file system" in output
    assert "WROTE" not in output
    assert "FITTED /tmp 24" in output
    assert "FULL /tmp 40 after 32 MiB" in output
    assert "FITTED /home/sandbox 40" in output
    assert "FULL /home/sandbox 56 after 48 MiB" in output
    assert "HOME=/home/sandbox" in output
    assert "home exec ok" in output
    assert "WORKSPACE ok" in output
    assert (Path(project) / "out").stat().st_size == 8 << 20
    host = docker_engine.api.inspect_container(container_id)["HostConfig"]
    assert host["ReadonlyRootfs"] is True


TOOLCHAINS = r"""
set -eu
cd /workspace
git init -q repo && cd repo
git -c user.name=job -c user.email=job@example.invalid commit -q --allow-empty -m first
echo "GIT $(git log --oneline | wc -l) commit"
cd /workspace
mkdir -p pkg/probe && printf 'NAME = "probe"
' > pkg/probe/__init__.py
printf '[project]
name = "probe"
version = "1"
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
' > pkg/pyproject.toml
python3 -m venv --system-site-packages "$HOME/venv"
"$HOME/venv/bin/pip" install -q --no-index --no-build-isolation \
    --disable-pip-version-check ./pkg
echo "PIP $("$HOME/venv/bin/python" -c 'import probe; print(probe.NAME)')"
mkdir -p npmpkg
printf '{"name": "npmprobe", "version": "1.0.0", "main": "index.js"}' > npmpkg/package.json
printf 'module.exports = "npm ok";' > npmpkg/index.js
mkdir -p app && cd app && npm init -y > /dev/null
npm install --offline --no-audit --no-fund ../npmpkg > /dev/null
echo "NPM $(node -e 'console.log(require("npmprobe"))')"
cd /workspace && cargo new -q --vcs none hello && cd hello
cargo build -q --offline && echo "CARGO $(./target/debug/hello)"
"""


def test_git_pip_npm_and_cargo_work_with_the_read_only_root(
    run_in_job_container: Callable[..., tuple[str, str]], docker_engine: Any
) -> None:
    container_id, _ = run_in_job_container(TOOLCHAINS, WORKER_MEMORY_MB="1024")
    output = _output_when_done(docker_engine, container_id, timeout=300)
    assert "GIT 1 commit" in output
    assert "PIP probe" in output
    assert "NPM npm ok" in output
    assert "CARGO Hello, world!" in output
    assert docker_engine.api.inspect_container(container_id)["HostConfig"]["ReadonlyRootfs"]


def test_with_the_read_only_root_turned_off_the_image_is_writable_again(
    run_in_job_container: Callable[..., tuple[str, str]], docker_engine: Any
) -> None:
    container_id, _ = run_in_job_container(
        "touch /var/tmp/ironclaw-probe && echo WROTE", WORKER_READ_ONLY_ROOTFS="0"
    )
    assert "WROTE" in _output_when_done(docker_engine, container_id)


def _cgroup_quota(docker_engine: Any, container_id: str) -> tuple[int, int]:
    """(quota, period) in microseconds, read inside the container (cgroup v1 or v2)."""
    exec_id = docker_engine.api.exec_create(
        container_id,
        [
            "sh",
            "-c",
            "cat /sys/fs/cgroup/cpu.max 2>/dev/null || "
            "(cd /sys/fs/cgroup/cpu && echo $(cat cpu.cfs_quota_us) $(cat cpu.cfs_period_us))",
        ],
    )
    quota, period = docker_engine.api.exec_start(exec_id).decode().split()
    return int(quota), int(period)


def _throttled(docker_engine: Any, container_id: str) -> int:
    exec_id = docker_engine.api.exec_create(
        container_id,
        ["sh", "-c", "cat /sys/fs/cgroup/cpu.stat 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.stat"],
    )
    stats = dict(
        line.split()
        for line in docker_engine.api.exec_start(exec_id).decode().splitlines()
        if line.strip()
    )
    return int(stats["nr_throttled"])


def test_a_cpu_burning_job_is_held_to_its_quota(
    run_in_job_container: Callable[..., tuple[str, str]], docker_engine: Any
) -> None:
    # Two busy loops want two CPUs; the quota gives them half of one.
    container_id, _ = run_in_job_container(
        "burn() { while :; do :; done; }; burn & burn & wait", WORKER_CPUS="0.5"
    )
    host = docker_engine.api.inspect_container(container_id)["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    quota, period = _cgroup_quota(docker_engine, container_id)
    assert quota * 2 == period  # the kernel's CFS quota: 0.5 CPU per period
    # The scheduler holds it there: the cgroup is throttled (a count, not a timing).
    deadline = time.monotonic() + 30
    while _throttled(docker_engine, container_id) == 0:
        assert time.monotonic() < deadline, "the busy job was never throttled"
        time.sleep(0.2)
