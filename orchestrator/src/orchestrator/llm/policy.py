"""Per-job LLM policy: which model a call may use and how many tokens it may ask for (whether the
job's budget still allows the call is the ledger's, ``orchestrator.jobs.ledger``).

These are pure functions, applied by the proxy before every provider call so that each door
(the worker API's completion routes and the Claude Code passthrough) enforces the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable

from orchestrator.errors import InvalidArgument, ModelNotAllowed


def resolve_model(requested: str | None, default_model: str, allowlist: Iterable[str]) -> str:
    """Returns the model a call will use, or raises :class:`ModelNotAllowed` if it is refused.

    No requested model means the default. The default is always allowed (the operator chose
    it); with an empty allowlist it is the *only* model allowed, so a job can never pick an
    arbitrary, possibly far more expensive, model on its own.
    """
    if requested is None or not requested.strip():
        if not default_model:
            raise InvalidArgument("no model was requested and LLM_MODEL sets no default")
        return default_model
    model = requested.strip()
    allowed = [name for name in dict.fromkeys([default_model, *allowlist]) if name]
    if model not in allowed:
        names = ", ".join(allowed) or "none"
        raise ModelNotAllowed(f"model {model!r} is not allowed for this job (allowed: {names})")
    return model


def cap_max_tokens(requested: int | None, cap: int) -> int:
    """Returns the ``max_tokens`` to send upstream: the request's value clamped to ``cap``.

    The cap bounds a single answer, not the job's spend (that is the ledger's), so a
    request above it is clamped rather than refused: clients routinely ask for more than any
    operator cap (the Claude Code CLI asks for 32000), and refusing would fail every such call
    while clamping costs nothing. A model that hits the ceiling says so with
    ``finish_reason="length"``.
    """
    if requested is None:
        return cap
    if requested < 1:
        raise InvalidArgument(f"max_tokens must be a positive integer, got {requested}")
    return min(requested, cap)
