"""build_provider picks the provider LLM_PROVIDER names, configured from the settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.errors import ConfigError
from orchestrator.llm.anthropic_provider import AnthropicProvider
from orchestrator.llm.factory import build_provider
from orchestrator.llm.openai_provider import OpenAIProvider
from orchestrator.llm.scripted_provider import ScriptedProvider
from orchestrator.settings import Settings

HELLO = Path(__file__).parents[2] / "fixtures" / "scripts" / "hello.yaml"


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"IRONCLAW_BASE_DIR": str(tmp_path), **env})


def test_none(tmp_path: Path) -> None:
    assert build_provider(_settings(tmp_path)) is None


async def test_anthropic(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, ANTHROPIC_API_KEY="sk-ant-x", ANTHROPIC_BASE_URL="http://user:pw@127.0.0.1:9/"
    )
    provider = build_provider(settings)
    assert isinstance(provider, AnthropicProvider)
    assert provider.name == "anthropic (http://127.0.0.1:9)"
    await provider.aclose()


async def test_openai_compatible_without_a_key(tmp_path: Path) -> None:
    provider = build_provider(_settings(tmp_path, LLM_BASE_URL="http://127.0.0.1:11434/v1"))
    assert isinstance(provider, OpenAIProvider)
    assert provider.name == "openai-compatible (http://127.0.0.1:11434/v1)"
    await provider.aclose()


async def test_openai(tmp_path: Path) -> None:
    provider = build_provider(_settings(tmp_path, LLM_PROVIDER="openai", OPENAI_API_KEY="sk-x"))
    assert isinstance(provider, OpenAIProvider)
    assert provider.name == "openai"
    await provider.aclose()


def test_scripted(tmp_path: Path) -> None:
    provider = build_provider(_settings(tmp_path, LLM_SCRIPT=str(HELLO)))
    assert isinstance(provider, ScriptedProvider)
    assert provider.name == "scripted (replays hello.yaml)"


def test_a_bad_script_stops_start_up(tmp_path: Path) -> None:
    script = tmp_path / "bad.yaml"
    script.write_text("- {}\n")
    with pytest.raises(ConfigError, match=r"LLM_SCRIPT=.*turn 1"):
        build_provider(_settings(tmp_path, LLM_SCRIPT=str(script)))


def test_unknown_provider(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="LLM_PROVIDER"):
        build_provider(replace(_settings(tmp_path), llm_provider="bogus"))
