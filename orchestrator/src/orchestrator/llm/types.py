"""Provider-neutral LLM request and response types shared by the proxy and its providers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_use", "content_filter"]


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for; ``arguments`` is the decoded JSON object."""

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class ChatMessage:
    """One conversation message in the worker API's shape.

    ``extras`` holds provider-specific fields (e.g. ``reasoning``) that must round-trip untouched.
    """

    role: Role
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model; ``parameters`` is a JSON schema object."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True)
class CompletionRequest:
    """What the proxy sends to a provider, after budgets and the allowlist were applied."""

    messages: tuple[ChatMessage, ...]
    model: str
    max_tokens: int
    temperature: float | None = None
    stop_sequences: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CompletionResult:
    """A provider's answer in the worker API's shape."""

    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    input_tokens: int
    output_tokens: int
    extras: Mapping[str, Any] = field(default_factory=dict)


class LlmProvider(Protocol):
    """One upstream model provider. Implementations raise ``ProviderError`` on failure."""

    @property
    def name(self) -> str:
        """What the provider is, as shown in logs and ``GetJob`` (e.g. ``openai``)."""
        ...

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        """Sends one completion request upstream."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...
