"""LiteLLM's proxy as the comparison point of the proxy benchmark, in its own venv.

``litellm[proxy]==1.100.0`` is installed into ``bench/.venv-litellm`` on first use (newer
releases' proxy extra is not installable here) and started with one uvicorn worker in front
of the same fake upstream, with a master key so that it, too, authenticates every request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.procs import ROOT, BenchError, Child

LITELLM_SPEC = "litellm[proxy]==1.100.0"
VENV = ROOT / "bench" / ".venv-litellm"
MARKER = VENV / ".installed"
MODEL_NAME = "bench-model"
MASTER_KEY = "sk-bench-litellm-master"
INSTALL_TIMEOUT_S = 900.0


def ensure_venv(log: Path) -> Path:
    """The ``litellm`` executable, installing it on first use; raises BenchError with pip's
    last lines when it cannot be installed."""
    executable = VENV / "bin" / "litellm"
    if MARKER.is_file() and MARKER.read_text().strip() == LITELLM_SPEC and executable.exists():
        return executable
    print(f"bench: installing {LITELLM_SPEC} into {VENV} (first use only) ...", file=sys.stderr)
    log.parent.mkdir(parents=True, exist_ok=True)
    if VENV.exists():
        shutil.rmtree(VENV)
    with log.open("w", encoding="utf-8") as out:
        steps = [
            [sys.executable, "-m", "venv", str(VENV)],
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", LITELLM_SPEC],
        ]
        for step in steps:
            try:
                result = subprocess.run(
                    step, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                raise BenchError(f"installing {LITELLM_SPEC} timed out; see {log}") from None
            if result.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise BenchError(f"cannot install {LITELLM_SPEC} (see {log}):\n{tail}")
    MARKER.write_text(LITELLM_SPEC + "\n")
    return executable


def write_config(directory: Path, upstream_base_url: str) -> Path:
    """A proxy config with one model routed to the fake upstream (YAML is a superset of
    JSON, so no YAML library is needed)."""
    config = {
        "model_list": [
            {
                "model_name": MODEL_NAME,
                "litellm_params": {
                    "model": "openai/gpt-4o-mini",
                    "api_base": upstream_base_url,
                    "api_key": "sk-bench-upstream",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {"master_key": MASTER_KEY},
    }
    path = directory / "litellm-config.yaml"
    path.write_text(json.dumps(config, indent=2))
    return path


def litellm_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            # No network here: use the model cost map bundled with the package.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
        }
    )
    env.pop("DATABASE_URL", None)
    return env


def start(
    executable: Path, config: Path, port: int, cpus: set[int] | None, ready_timeout_s: float = 120
) -> Child:
    """Starts the proxy and waits until it answers its liveliness probe."""
    child = Child(
        "litellm",
        [
            str(executable),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ],
        env=litellm_env(),
        cpus=cpus,
        wait_ready=False,
    )
    child.__enter__()
    try:
        _wait_live(f"http://127.0.0.1:{port}/health/liveliness", ready_timeout_s, child)
    except BaseException:
        child.stop()
        raise
    return child


def _wait_live(url: str, timeout_s: float, child: Child) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise BenchError(f"LiteLLM did not come up in {timeout_s:.0f} s:\n{child.log_tail()}")
