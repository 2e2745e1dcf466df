"""The examples of client/README.md (and the one in the main README) run as written, in a
fresh interpreter, against a real orchestrator found through IRONCLAW_ORCHESTRATOR, while the
test plays the job's agent."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from tests.client.conftest import Running
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "client" / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
MAIN_EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_a_sync_and_an_async_example_of_about_ten_lines() -> None:
    assert len(EXAMPLES) == 2
    assert "Client()" in EXAMPLES[0]
    assert "AsyncClient()" in EXAMPLES[1]
    for example in EXAMPLES:
        assert len([line for line in example.splitlines() if line.strip()]) <= 13


def test_the_main_readme_shows_the_same_sync_example() -> None:
    assert len(MAIN_EXAMPLES) == 1

    def code(example: str) -> list[str]:
        return [line.split("  #")[0].rstrip() for line in example.splitlines()]

    assert code(MAIN_EXAMPLES[0]) == code(EXAMPLES[0])


@pytest.mark.parametrize("index", [0, 1, 2], ids=["sync", "async", "main-readme"])
async def test_a_readme_example_runs(fake_orch: Running, index: int) -> None:
    env = {**os.environ, "IRONCLAW_ORCHESTRATOR": fake_orch.target}
    env.pop("ORCHESTRATOR_ADMIN_TOKEN", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        [*EXAMPLES, *MAIN_EXAMPLES][index],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        spec = await wait_for(lambda: fake_orch.backend.created, what="the example's job")
        job_id = spec[0].labels["ironclaw.job_id"]
        agent = await fake_orch.agent(job_id)
        record = fake_orch.orch.manager._table.record(job_id)
        assert record is not None
        # Report progress only once the example watches (before that it would only see the
        # latest status in its snapshot).
        await wait_for(lambda: record._waiters, what="the example's watch")
        await agent.status("running the tests", 1)
        await agent.status("fixed test_parse", 2)
        await agent.complete("All tests pass.")
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        "[1] running the tests",
        "[2] fixed test_parse",
        "COMPLETED All tests pass.",
    ]
