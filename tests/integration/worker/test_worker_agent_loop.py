"""The real agent loop against the fake worker API and its scripted model."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.fakes.fake_worker_api import FakeWorkerApi, text_answer, tool_answer, tool_call

RunAgent = Callable[..., Awaitable[int]]


async def test_runs_tools_and_feeds_results_back(
    fake_api: FakeWorkerApi, run_agent: RunAgent, workspace: Path
) -> None:
    write = tool_call("write_file", {"path": "notes/hello.txt", "content": "hello\n"})
    cat = tool_call("shell", {"command": "cat notes/hello.txt"})
    fake_api.script = [
        tool_answer(write, cat, content="Writing the file, then checking it."),
        text_answer("Created notes/hello.txt containing hello."),
    ]

    assert await run_agent() == 0

    assert (workspace / "notes" / "hello.txt").read_text() == "hello\n"
    first, second = fake_api.llm_requests
    assert {t["name"] for t in first["tools"]} == {
        "shell",
        "read_file",
        "write_file",
        "edit_file",
        "list_dir",
        "glob",
        "grep",
    }
    assert first["messages"][0]["role"] == "system"
    assert str(workspace.resolve()) in first["messages"][0]["content"]
    assert first["messages"][1] == {"role": "user", "content": fake_api.task}
    # The second call carries the assistant turn and one tool message per call, in order.
    assistant, write_result, cat_result = second["messages"][2:]
    assert assistant == {
        "role": "assistant",
        "content": "Writing the file, then checking it.",
        "tool_calls": [write, cat],
    }
    assert write_result["role"] == "tool"
    assert write_result["tool_call_id"] == write["id"]
    assert "created notes/hello.txt" in write_result["content"]
    assert cat_result == {
        "role": "tool",
        "tool_call_id": cat["id"],
        "content": "hello\n[exit code 0]",
    }


async def test_events_and_statuses_arrive_in_order(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    call = tool_call("shell", {"command": "echo hi"})
    fake_api.script = [tool_answer(call, content="Checking."), text_answer("All done.")]

    assert await run_agent() == 0

    assert fake_api.events == [
        ("message", {"role": "assistant", "content": "Checking."}),
        ("tool_use", {"tool_name": "shell", "tool_use_id": call["id"], "input": call["arguments"]}),
        (
            "tool_result",
            {
                "tool_name": "shell",
                "tool_use_id": call["id"],
                "output": "hi\n[exit code 0]",
                "is_error": False,
            },
        ),
        ("message", {"role": "assistant", "content": "All done."}),
    ]
    assert fake_api.statuses == [("iteration 1", 1), ("iteration 2", 2)]
    assert fake_api.completions == [{"success": True, "message": "All done.", "iterations": 2}]
    # Each status precedes its LLM call.
    routes = [
        r.route for r in fake_api.requests if r.route in ("status", "llm/complete_with_tools")
    ]
    assert routes == ["status", "llm/complete_with_tools"] * 2


async def test_tool_errors_go_back_to_the_model(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    escape = tool_call("read_file", {"path": "../../etc/passwd"})
    unknown = tool_call("launch_missiles", {})
    fake_api.script = [tool_answer(escape, unknown), text_answer("Could not read it.")]

    assert await run_agent() == 0

    results = [data for kind, data in fake_api.events if kind == "tool_result"]
    assert [r["is_error"] for r in results] == [True, True]
    assert "outside the workspace" in results[0]["output"]
    assert "unknown tool 'launch_missiles'" in results[1]["output"]
    tool_messages = fake_api.llm_requests[1]["messages"][-2:]
    assert [m["tool_call_id"] for m in tool_messages] == [escape["id"], unknown["id"]]
    assert fake_api.completions[0]["success"] is True


async def test_follow_up_after_the_final_answer_reaches_the_model(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.script = [text_answer("First answer."), text_answer("Also added a README.")]
    fake_api.prompts.append({"content": "Please also add a README.", "done": False})

    assert await run_agent() == 0

    second = fake_api.llm_requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "First answer."}
    assert second[-1] == {"role": "user", "content": "Please also add a README."}
    assert fake_api.completions == [
        {"success": True, "message": "Also added a README.", "iterations": 2}
    ]
    # Polled once after each final answer; the second poll found nothing queued (204).
    assert [r.status for r in fake_api.to("prompt")] == [200, 204]


async def test_follow_up_between_turns_comes_before_the_next_call(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    call = tool_call("shell", {"command": "true"})
    fake_api.script = [tool_answer(call), text_answer("Done, with tests.")]
    fake_api.prompts.append({"content": "Run the tests too.", "done": False})

    assert await run_agent() == 0

    second = fake_api.llm_requests[1]["messages"]
    assert second[-2]["role"] == "tool"
    assert second[-1] == {"role": "user", "content": "Run the tests too."}


async def test_done_prompt_finishes_after_the_current_answer(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.script = [text_answer("First."), text_answer("Last.")]
    fake_api.prompts.extend(
        [
            {"content": "One more thing, then stop.", "done": True},
            {"content": "never read", "done": False},
        ]
    )

    assert await run_agent() == 0

    assert len(fake_api.llm_requests) == 2
    assert len(fake_api.to("prompt")) == 1
    assert fake_api.completions == [{"success": True, "message": "Last.", "iterations": 2}]


async def test_max_iterations_ends_in_failure(fake_api: FakeWorkerApi, run_agent: RunAgent) -> None:
    def always_a_tool(body: Mapping[str, Any]) -> dict[str, Any]:
        fake_api.script.append(always_a_tool)
        return tool_answer(tool_call("shell", {"command": "true"}))

    fake_api.script = [always_a_tool]
    fake_api.max_iterations = 3

    assert await run_agent(max_iterations=50) == 1

    assert len(fake_api.llm_requests) == 3
    [completion] = fake_api.completions
    assert completion["success"] is False
    assert completion["message"].startswith("max iterations (3) reached")
    assert completion["iterations"] == 3
    assert completion["details"] == {"reason": "max_iterations"}


async def test_configured_max_iterations_applies_when_the_job_sets_none(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.script = [tool_answer(tool_call("shell", {"command": "true"})) for _ in range(5)]

    assert await run_agent(max_iterations=2) == 1

    assert len(fake_api.llm_requests) == 2
    assert fake_api.completions[0]["details"] == {"reason": "max_iterations"}


async def test_token_rejected_stops_at_once_without_completing(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.script = [text_answer("never delivered")]
    fake_api.revoke_on("llm/complete_with_tools")

    assert await run_agent() == 3

    assert fake_api.completions == []
    last = fake_api.requests[-1]
    assert (last.route, last.status) == ("llm/complete_with_tools", 401)
    assert len(fake_api.to("llm/complete_with_tools")) == 1


async def test_budget_exhausted_is_reported_with_the_server_message(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.fail(
        "llm/complete_with_tools",
        429,
        error="budget_exceeded",
        message="token budget exceeded: 10500 of 10000 tokens used",
        refusal="token_budget_exhausted",
    )

    assert await run_agent() == 1

    assert fake_api.completions == [
        {
            "success": False,
            "message": "LLM call refused: token budget exceeded: 10500 of 10000 tokens used",
            "iterations": 1,
            "details": {"reason": "budget_exceeded", "refusal": "token_budget_exhausted"},
        }
    ]
    assert len(fake_api.to("llm/complete_with_tools")) == 1


async def test_a_model_refusal_ends_the_job_like_a_budget_by_its_code(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.fail(
        "llm/complete_with_tools",
        403,
        error="permission_denied",
        message="anything at all",
        refusal="model_not_allowed",
    )
    assert await run_agent() == 1
    [completion] = fake_api.completions
    assert completion["details"] == {"reason": "budget_exceeded", "refusal": "model_not_allowed"}


async def test_a_429_without_a_refusal_code_is_an_llm_error_whatever_it_says(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.fail(
        "llm/complete_with_tools",
        429,
        error="budget_exceeded",
        message="LLM token budget exhausted: 30 of 30 tokens used",
    )
    assert await run_agent() == 1
    [completion] = fake_api.completions
    assert completion["details"] == {"reason": "llm_error", "status": 429}


async def test_retries_on_503_then_succeeds(fake_api: FakeWorkerApi, run_agent: RunAgent) -> None:
    fake_api.fail("llm/complete_with_tools", 503, times=2, error="unavailable")
    fake_api.script = [text_answer("Done despite the hiccup.")]

    assert await run_agent() == 0

    assert [r.status for r in fake_api.to("llm/complete_with_tools")] == [503, 503, 200]
    assert fake_api.completions == [
        {"success": True, "message": "Done despite the hiccup.", "iterations": 1}
    ]


async def test_passed_deadline_fails_before_any_llm_call(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.deadline = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()

    assert await run_agent() == 1

    assert fake_api.llm_requests == []
    [completion] = fake_api.completions
    assert completion["success"] is False
    assert completion["details"] == {"reason": "deadline"}


async def test_deadline_passing_mid_job_stops_the_loop(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    deadline = datetime(2030, 1, 1, tzinfo=UTC)
    fake_api.deadline = deadline.isoformat()
    fake_api.script = [tool_answer(tool_call("shell", {"command": "true"})) for _ in range(5)]
    # The clock moves past the deadline once the first LLM call has been made.
    clock = lambda: deadline if fake_api.llm_requests else deadline - timedelta(minutes=1)  # noqa: E731

    assert await run_agent(clock=clock) == 1

    assert len(fake_api.llm_requests) == 1
    assert fake_api.completions[0]["details"] == {"reason": "deadline"}
    assert fake_api.completions[0]["iterations"] == 1


async def test_crash_is_reported_exactly_once(fake_api: FakeWorkerApi, run_agent: RunAgent) -> None:
    fake_api.fail("credentials", 500, error="internal", message="store unavailable")

    assert await run_agent() == 4

    assert fake_api.llm_requests == []
    assert fake_api.completions == [
        {
            "success": False,
            "message": "worker crashed: WorkerApiError: 500 internal: store unavailable",
            "iterations": 0,
            "details": {"reason": "crash"},
        }
    ]


async def test_complete_is_sent_once_even_when_it_fails(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    fake_api.script = [text_answer("done")]
    fake_api.fail("complete", 422, error="invalid_body", message="nope")

    assert await run_agent() == 4

    assert len(fake_api.completions) == 1


async def test_credentials_reach_commands_but_never_the_model_or_the_token(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    secret = "ghp_0123456789abcdefSECRET"
    fake_api.credentials = {"github": secret}
    # Output masking replaces only the exact value, so "***" proves the variable holds it.
    check = tool_call(
        "shell",
        {"command": 'echo "$GITHUB_TOKEN"; printenv IRONCLAW_WORKER_TOKEN || echo no-token'},
    )
    fake_api.script = [tool_answer(check), text_answer("checked")]
    worker_env = {"PATH": os.environ["PATH"], "IRONCLAW_WORKER_TOKEN": fake_api.token}

    assert await run_agent(base_env=worker_env) == 0

    [result] = [data for kind, data in fake_api.events if kind == "tool_result"]
    assert result["output"] == "***\nno-token\n[exit code 0]"
    assert "GITHUB_TOKEN" in fake_api.llm_requests[0]["messages"][0]["content"]
    # The value itself went nowhere: not to the model, not into any event.
    assert all(secret not in json.dumps(r.body) for r in fake_api.requests)
    assert all(fake_api.token not in json.dumps(r.body) for r in fake_api.requests)


async def test_provider_extras_round_trip_and_reasoning_is_an_event(
    fake_api: FakeWorkerApi, run_agent: RunAgent
) -> None:
    call = tool_call("shell", {"command": "true"})
    answer = tool_answer(call)
    answer["reasoning"] = "I should check first."
    fake_api.script = [answer, text_answer("ok")]

    assert await run_agent() == 0

    assert fake_api.llm_requests[1]["messages"][2]["reasoning"] == "I should check first."
    assert fake_api.events[0] == ("reasoning", {"text": "I should check first."})


async def test_long_tool_output_is_bounded_in_events(
    fake_api: FakeWorkerApi, run_agent: RunAgent, workspace: Path
) -> None:
    content = ("x" * 99 + "\n") * 400
    (workspace / "big.txt").write_text(content)
    fake_api.script = [tool_answer(tool_call("read_file", {"path": "big.txt"})), text_answer("ok")]

    assert await run_agent() == 0

    [result] = [data for kind, data in fake_api.events if kind == "tool_result"]
    assert result["output"].endswith("…[truncated 24000 chars]")
    # The model itself got the whole (tool-capped) output.
    assert fake_api.llm_requests[1]["messages"][-1]["content"] == content
