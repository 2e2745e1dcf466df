"""The agent catalogue's rules, as both sides of the container boundary apply them: what an entry
may hold, how a bad one is named, how its command is rendered (never through a shell), and that
no secret can sit in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ironclaw_contract.agent_catalog import (
    AgentConfigError,
    AgentEntry,
    parse_agent_catalog,
    parse_agent_entry,
    render_command,
)
from tests.conftest import ROOT

MINI: dict[str, Any] = {
    "image": "ironclaw-agent-mini-swe-agent:latest",
    "command": ["mini", "-y", "-m", "anthropic/{model}", "-t", "{task}"],
    "api": "anthropic",
    "key_env": "ANTHROPIC_API_KEY",
    "base_url_env": ["ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL"],
    "model": "claude-sonnet-5-5",
    "env": {"MSWEA_CONFIGURED": "true"},
}


def test_an_entry_is_parsed_with_its_lists_and_defaults() -> None:
    entries = parse_agent_catalog({"agents": {"mini": MINI}})
    entry = entries["mini"]
    assert entry.command == ("mini", "-y", "-m", "anthropic/{model}", "-t", "{task}")
    assert entry.key_env == ("ANTHROPIC_API_KEY",)  # one name or a list of them
    assert entry.base_url_env == ("ANTHROPIC_API_BASE", "ANTHROPIC_BASE_URL")
    assert entry.model_env == ()
    assert dict(entry.env) == {"MSWEA_CONFIGURED": "true"}
    # The wire shape (the store, GET /job) reads back to the same entry.
    assert AgentEntry.from_wire(json.loads(json.dumps(entry.to_wire()))) == entry


def test_a_command_line_string_is_split_like_a_shell_would_but_never_run_by_one() -> None:
    entry = parse_agent_entry("x", {**MINI, "command": "tool --message '{task}' --x 'a b'"})
    assert entry.command == ("tool", "--message", "{task}", "--x", "a b")
    task = 'fix it; rm -rf / $(reboot) `id` "quoted" {model}'
    argv = render_command(entry.command, task, "m-1")
    # The task is one argument, whatever it holds; {model} inside the task is not expanded
    # again, only the template's own placeholders are.
    assert argv == ["tool", "--message", task.replace("{model}", "m-1"), "--x", "a b"]
    assert render_command(("a", "{model}/{task}"), "t", "m") == ["a", "m/t"]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"command": ["mini", "-t", "fixed"]}, "must hold {task}"),
        ({"command": ["{task}"]}, "command\\[0\\] is the program"),
        ({"command": []}, "non-empty list"),
        ({"command": "mini '{task}"}, "does not parse"),
        ({"api": "gemini"}, "api must be one of anthropic, openai"),
        ({"image": "bad image"}, "image must be"),
        ({"model": ""}, "model must be"),
        ({"key_env": []}, "key_env must name at least one"),
        ({"key_env": "IRONCLAW_WORKER_TOKEN"}, "'IRONCLAW_WORKER_TOKEN' is reserved"),
        ({"base_url_env": "LD_PRELOAD"}, "is reserved"),
        ({"model_env": ["PATH"]}, "is reserved"),
        ({"env": {"HTTPS_PROXY": "http://x"}}, "is reserved"),
        ({"env": {"OPENAI_API_KEY": "x"}}, "looks like a secret"),
        ({"env": {"SETTING": "sk-ant-api03-" + "a" * 40}}, "looks like a secret"),
        ({"command": ["t", "--key", "sk-ant-api03-" + "a" * 40, "{task}"]}, "secrets never"),
        ({"workdir": "/"}, "unknown field 'workdir'"),
    ],
)
def test_a_bad_entry_is_refused_naming_the_entry_and_the_problem(
    change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(AgentConfigError, match=f"agents.json: agent 'mini': .*{problem}"):
        parse_agent_catalog({"agents": {"mini": {**MINI, **change}}})


def test_bad_names_and_shapes_of_the_catalogue_are_refused() -> None:
    with pytest.raises(AgentConfigError, match="agent name 'Mini!' is invalid"):
        parse_agent_catalog({"agents": {"Mini!": MINI}})
    with pytest.raises(AgentConfigError, match=r'expected \{"agents"'):
        parse_agent_catalog({"mini": MINI})
    with pytest.raises(AgentConfigError, match="must be an object"):
        parse_agent_catalog({"agents": [MINI]})


def test_the_example_catalogue_parses() -> None:
    path = ROOT / "deploy" / "agents" / "agents.json"
    entries = parse_agent_catalog(json.loads(Path(path).read_text()), str(path))
    assert {"mini-swe-agent", "claude-code"} <= set(entries)
    assert entries["claude-code"].image.startswith("ironclaw-claude:")
