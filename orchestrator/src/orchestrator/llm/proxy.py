"""The LLM proxy: applies a job's model allowlist, reserves the call on the job's ledger, calls
the provider with keys the container never sees, and settles the usage the provider reports."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.errors import (
    BudgetExceeded,
    InvalidArgument,
    OrchestratorError,
    ProviderNotConfigured,
)
from orchestrator.jobs.manager import ContainerJobManager
from orchestrator.llm import policy
from orchestrator.llm.types import (
    ChatMessage,
    CompletionRequest,
    CompletionResult,
    LlmProvider,
    ToolCall,
    ToolSpec,
)
from orchestrator.logging import get_logger
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.metrics import Metrics

log = get_logger(__name__)
_MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "tool_call_id"})


class LlmProxy:
    """One per orchestrator; stateless per call apart from the job's usage on the manager."""

    def __init__(
        self,
        settings: Settings,
        provider: LlmProvider | None,
        manager: ContainerJobManager,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._provider = provider
        self._manager = manager
        self._metrics = metrics if metrics is not None else manager.metrics

    @property
    def provider_name(self) -> str:
        return self._provider.name if self._provider is not None else "none"

    async def complete(
        self,
        job_id: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        request_bytes: int,
        max_tokens: int | None,
        model: str | None,
        temperature: float | None,
        stop_sequences: Sequence[str] | None,
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | Mapping[str, Any] | None = None,
    ) -> CompletionResult:
        """One completion for one job; raises BudgetExceeded, ProviderError,
        ProviderNotConfigured. ``request_bytes`` is the size of the job's request, which bounds
        the input tokens the ledger reserves."""
        ledger = self._manager.ledger
        if self._provider is None:
            raise ProviderNotConfigured(
                "no LLM provider is configured on the orchestrator: set LLM_PROVIDER with "
                "ANTHROPIC_API_KEY, OPENAI_API_KEY/LLM_BASE_URL, or LLM_SCRIPT"
            )
        try:
            resolved_model = policy.resolve_model(
                model, self._settings.llm_model, self._settings.llm_model_allowlist
            )
        except BudgetExceeded as exc:
            ledger.note_refusal(job_id, exc.refusal)
            self._count_error(model or "", exc)
            raise
        try:
            reservation = ledger.reserve(job_id, request_bytes=request_bytes, max_tokens=max_tokens)
        except OrchestratorError as exc:
            self._count_error(resolved_model, exc)
            raise
        request = CompletionRequest(
            messages=tuple(_message(m) for m in messages),
            model=resolved_model,
            max_tokens=reservation.max_tokens,
            temperature=temperature,
            stop_sequences=tuple(stop_sequences or ()),
            tools=tuple(
                ToolSpec(
                    name=t["name"],
                    description=t.get("description", ""),
                    parameters=t.get("parameters") or {"type": "object"},
                )
                for t in tools
            ),
            tool_choice=tool_choice,
        )
        started = time.monotonic()
        try:
            result = await self._provider.complete(request)
        except InvalidArgument as exc:
            # Refused before anything was sent upstream: it must not use up the budget.
            ledger.release(reservation)
            self._count_error(resolved_model, exc)
            raise
        except BaseException as exc:
            # Sent, or maybe sent: the call counts, with the tokens nobody reported.
            ledger.settle(reservation, 0, 0)
            if isinstance(exc, Exception):
                self._count_error(resolved_model, exc)
            raise
        ledger.settle(reservation, result.input_tokens, result.output_tokens)
        if self._metrics is not None:
            self._metrics.llm_call(
                self.provider_name,
                resolved_model,
                time.monotonic() - started,
                result.input_tokens,
                result.output_tokens,
            )
        return result

    def _count_error(self, model: str, exc: BaseException) -> None:
        if self._metrics is not None:
            kind = exc.kind.name.lower() if isinstance(exc, OrchestratorError) else "internal"
            self._metrics.llm_error(self.provider_name, model, kind)

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()


def _message(raw: Mapping[str, Any]) -> ChatMessage:
    calls = tuple(
        ToolCall(id=c["id"], name=c["name"], arguments=c.get("arguments") or {})
        for c in raw.get("tool_calls") or ()
    )
    return ChatMessage(
        role=raw["role"],
        content=raw.get("content"),
        tool_calls=calls,
        tool_call_id=raw.get("tool_call_id"),
        extras={k: v for k, v in raw.items() if k not in _MESSAGE_FIELDS},
    )
