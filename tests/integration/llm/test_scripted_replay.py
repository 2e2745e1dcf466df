"""A scripted provider built from the settings replays its script per job, also when jobs
interleave their calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator.llm.factory import build_provider
from orchestrator.llm.scripted_provider import EXHAUSTED_CONTENT
from orchestrator.llm.types import ChatMessage, CompletionRequest, LlmProvider
from orchestrator.settings import Settings

SCRIPT = Path(__file__).parents[2] / "fixtures" / "scripts" / "build_and_test.yaml"


async def _run_job(provider: LlmProvider, job: str, started: asyncio.Barrier) -> list[str]:
    """Plays a worker's loop: call, answer every tool call, call again until a final answer."""
    conversation = [ChatMessage("system", f"job {job}"), ChatMessage("user", "Build and test")]
    seen: list[str] = []
    await started.wait()
    for _ in range(10):
        result = await provider.complete(
            CompletionRequest(messages=tuple(conversation), model="scripted", max_tokens=100)
        )
        seen.append(result.finish_reason)
        conversation.append(ChatMessage("assistant", result.content, tool_calls=result.tool_calls))
        if not result.tool_calls:
            seen.append(result.content or "")
            break
        conversation += [
            ChatMessage("tool", f"{job}: ok", tool_call_id=call.id) for call in result.tool_calls
        ]
        await asyncio.sleep(0)  # let the other jobs' calls interleave with this one's
    return seen


async def test_concurrent_jobs_each_replay_the_whole_script(tmp_path: Path) -> None:
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "LLM_SCRIPT": str(SCRIPT)})
    provider = build_provider(settings)
    assert provider is not None
    assert provider.name == "scripted (replays build_and_test.yaml)"
    started = asyncio.Barrier(3)

    runs = await asyncio.gather(*(_run_job(provider, job, started) for job in "abc"))

    expected = [
        "tool_use",
        "tool_use",
        "tool_use",
        "stop",
        "The project builds and its test passes.",
    ]
    assert runs == [expected, expected, expected]


async def test_a_job_past_the_end_is_told_the_script_is_exhausted(tmp_path: Path) -> None:
    settings = Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), "LLM_SCRIPT": str(SCRIPT)})
    provider = build_provider(settings)
    assert provider is not None
    conversation = tuple(ChatMessage("assistant", f"turn {n}") for n in range(4))
    result = await provider.complete(
        CompletionRequest(messages=conversation, model="scripted", max_tokens=100)
    )
    assert (result.content, result.finish_reason) == (EXHAUSTED_CONTENT, "stop")
