"""Builds the configured LLM provider from the settings."""

from __future__ import annotations

from orchestrator.errors import ConfigError
from orchestrator.llm.types import LlmProvider
from orchestrator.settings import Settings


def build_provider(settings: Settings) -> LlmProvider | None:
    """Returns the provider ``LLM_PROVIDER`` names, or None when it is ``none``.

    A script file is loaded and validated here, so a bad one stops start-up with a ConfigError
    rather than failing the first job. Each SDK is imported only when its provider is chosen:
    an orchestrator that replays a script never loads either.
    """
    kind = settings.llm_provider
    if kind == "none":
        return None
    if kind == "anthropic":
        if settings.anthropic_api_key is None:
            raise ConfigError("LLM_PROVIDER=anthropic needs ANTHROPIC_API_KEY")
        from orchestrator.llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider(
            settings.anthropic_api_key,
            base_url=settings.anthropic_base_url or None,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )
    if kind == "openai":
        from orchestrator.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(
            settings.openai_api_key,
            base_url=settings.llm_base_url,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
        )
    if kind == "scripted":
        if settings.llm_script is None:
            raise ConfigError("LLM_PROVIDER=scripted needs LLM_SCRIPT (a response file)")
        from orchestrator.llm.scripted_provider import ScriptedProvider

        return ScriptedProvider.from_file(settings.llm_script)
    raise ConfigError(f"LLM_PROVIDER={kind!r} must be one of anthropic, openai, scripted, none")
