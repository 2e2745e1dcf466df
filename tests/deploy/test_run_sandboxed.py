"""deploy/scripts/run-sandboxed.sh (how `make demo` runs a job-edited project's tests): the
command runs in a fresh container from the worker image with a job's hardening, read-only over
the project, and nothing is left behind. Observed from inside the container, where it counts."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.docker

RUN_SANDBOXED = ROOT / "deploy" / "scripts" / "run-sandboxed.sh"

# What the process sees of itself: identity, capabilities, network, filesystems, cgroup limits
# (v2 paths first, then v1).
PROBE = r"""
import errno, json, os, pathlib
import helper  # an import writes __pycache__ wherever it can

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()

def can_write(path):
    try:
        pathlib.Path(path, "probe-" + str(os.getpid())).write_text("x")
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def first(*paths):
    for path in paths:
        if os.path.exists(path):
            return open(path).read().strip()

print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "cap_eff": status("CapEff"), "cap_bnd": status("CapBnd"),
    "no_new_privs": status("NoNewPrivs"),
    "interfaces": sorted(r.split(":")[0].strip() for r in open("/proc/net/dev").readlines()[2:]),
    "cwd": os.getcwd(), "home": os.environ.get("HOME"),
    "dont_write_bytecode": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    "write_root": can_write("/"), "write_usr": can_write("/usr"),
    "write_workspace": can_write("/workspace"), "write_tmp": can_write("/tmp"),
    "memory": first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
    "swap": first("/sys/fs/cgroup/memory.swap.max"),
    "memory_and_swap": first("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
    "pids": first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"),
    "worker_token": os.environ.get("IRONCLAW_WORKER_TOKEN"),
}))
"""


@pytest.fixture
def label(docker_engine: Any) -> Iterator[str]:
    value = f"ironclaw.test.sandboxed-run={uuid.uuid4().hex}"
    yield value
    for row in docker_engine.api.containers(all=True, filters={"label": value}):
        docker_engine.api.remove_container(row["Id"], force=True)


def _run_sandboxed(
    image: str, label: str, project: Path, *command: str, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUN_SANDBOXED), "--image", image, "--label", label, str(project), *command],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_runs_as_a_hardened_job_would_and_leaves_nothing(
    docker_engine: Any, worker_image: str, label: str, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "probe.py").write_text(PROBE)
    (project / "helper.py").write_text("VALUE = 1\n")

    result = _run_sandboxed(
        worker_image,
        label,
        project,
        "python3",
        "probe.py",
        WORKER_MEMORY_MB="300",
        WORKER_PIDS_LIMIT="77",
        IRONCLAW_WORKER_TOKEN="irc_" + "x" * 43,  # the host's environment stays out
    )

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["uid"], seen["gid"], seen["groups"]) == (1000, 1000, [1000])
    assert int(seen["cap_eff"], 16) == 0
    assert int(seen["cap_bnd"], 16) == 0  # dropped for good, not merely unused
    assert seen["no_new_privs"] == "1"
    assert seen["interfaces"] == ["lo"]  # no network at all
    assert (seen["cwd"], seen["home"], seen["dont_write_bytecode"]) == ("/workspace", "/tmp", "1")
    assert seen["write_root"] == seen["write_usr"] == seen["write_workspace"] == "EROFS"
    assert seen["write_tmp"] == "ok"
    assert int(seen["memory"]) == 300 * 1024 * 1024
    # No swap: cgroup v2 shows none allowed, v1 memory+swap equal to memory (when accounted).
    assert seen["swap"] in (None, "0")
    assert seen["memory_and_swap"] in (None, seen["memory"])
    assert seen["pids"] == "77"
    assert seen["worker_token"] is None
    assert sorted(p.name for p in project.iterdir()) == ["helper.py", "probe.py"]  # no cache
    assert docker_engine.api.containers(all=True, filters={"label": label}) == []


def test_the_exit_code_is_the_commands(
    docker_engine: Any, worker_image: str, label: str, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    result = _run_sandboxed(worker_image, label, project, "sh", "-c", "echo failing >&2; exit 7")

    assert (result.returncode, result.stderr.strip()) == (7, "failing")
    assert docker_engine.api.containers(all=True, filters={"label": label}) == []


def test_usage_errors_name_the_usage(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(RUN_SANDBOXED), "--bogus", str(tmp_path), "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "unknown option --bogus" in result.stderr
    assert "usage: run-sandboxed.sh" in result.stderr
