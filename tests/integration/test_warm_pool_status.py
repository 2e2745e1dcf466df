"""`ironclaw status` shows the warm pools of a running orchestrator (real engine, real slots)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.integration.test_operability import _run

pytestmark = pytest.mark.docker
IRONCLAW = str(Path(sys.executable).parent / "ironclaw")


async def test_status_shows_each_pool_from_the_orchestrator(
    start_orch: Any, make_settings: Any, base_dir: Path, worker_image: str, claude_image: str
) -> None:
    orch = await start_orch(make_settings(WARM_POOL="worker=1"))
    pool = orch.manager.warm_pool
    await wait_for(lambda: pool.states()[0].ready == 1, timeout=90, what="a ready slot")
    env = {
        "IRONCLAW_ORCHESTRATOR": f"127.0.0.1:{orch.grpc_port}",
        "IRONCLAW_BASE_DIR": str(base_dir),
        "WORKER_IMAGE": worker_image,
        "CLAUDE_CODE_IMAGE": claude_image,
        "WARM_POOL": "worker=1",
        "METRICS_PORT": str(orch.metrics_port),
    }
    code, out, err = await _run(IRONCLAW, "status", "--json", env=env)
    assert code == 0, out + err
    report = json.loads(out)
    assert report["warm_pools"] == {
        "worker": {"size": 1, "ready": 1, "starting": 0, "claims": 0, "misses": 0}
    }
    code, out, err = await _run(IRONCLAW, "status", env=env)
    assert code == 0, out + err
    assert "warm pool     worker       size=1 ready=1 starting=0 claims=0 misses=0" in out
