"""The LLM ledger: every model call of every job is reserved before it goes upstream and settled
when its answer is in, so a job's budgets hold however many calls it runs at once.

One ledger for every door (the worker API's ``llm/complete*`` routes through the proxy, the
Anthropic route of Claude Code jobs). A reservation takes the call's worst case out of what the
job may still spend: one call, and the request's input tokens, bounded above by the size of the
request in bytes (a token of a byte-level tokenizer covers at least one byte) plus a fixed
overhead for what a provider adds unseen (the system prompt of tool use), plus the output it may
ask for. ``max_tokens`` is capped to what is left, so the upstream can never be asked for more
than the budget allows; the reservation is then replaced by the usage the upstream reports.

Everything here runs on the event loop without suspending between the check and the update,
which is what makes a reservation atomic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ironclaw_contract.worker_api import Refusal
from orchestrator.domain.jobs import JobLimits
from orchestrator.errors import BudgetExceeded, InvalidArgument
from orchestrator.jobs.record import JobRecord

# Tokens a provider may add to a call beyond its request's bytes (tool-use system prompts are a
# few hundred); part of every reservation.
OVERHEAD_TOKENS = 1024
# A call granted fewer output tokens than this (or than it asked for, if less) would spend its
# input for next to nothing: it is refused as over budget instead.
MIN_USEFUL_OUTPUT_TOKENS = 128
# A stream whose text passes this many characters per output token granted has run past what
# the upstream was asked for (tokenizers average 3-4.5 characters a token, a run of whitespace
# in code a few more): the door cuts it, and settles it at its whole reservation.
CHARS_PER_TOKEN_CEILING = 6


@dataclass
class Reservation:
    """One call's hold on a job's budgets, from before it goes upstream until it is settled."""

    job: JobRecord
    tokens: int  # the worst case held: input bound plus ``max_tokens``
    max_tokens: int  # what the call may ask the upstream for (0 for a call without output)
    open: bool = True

    @property
    def job_id(self) -> str:
        return self.job.job_id


class LlmLedger:
    """Reserves, settles and releases LLM calls against each job's budgets."""

    def __init__(
        self,
        lookup: Callable[[str], JobRecord],
        on_usage: Callable[[JobRecord], None],
    ) -> None:
        # ``lookup`` raises JobNotFound; ``on_usage`` records and announces a job's new usage.
        self._lookup = lookup
        self._on_usage = on_usage

    def limits(self, job_id: str) -> JobLimits:
        return self._lookup(job_id).limits

    def reserve(
        self,
        job_id: str,
        *,
        request_bytes: int,
        max_tokens: int | None,
        generates: bool = True,
    ) -> Reservation:
        """Holds one call's worst case against the job's budgets, or raises BudgetExceeded.

        ``request_bytes`` is the size of what goes upstream; ``max_tokens`` what the caller
        asked for (None: the job's per-call cap). ``generates=False`` is a call that produces
        no tokens (``count_tokens``): it holds a call, and nothing of the token budget.
        The reservation's ``max_tokens`` is what the call must send upstream.
        """
        job = self._lookup(job_id)
        limits = job.limits
        usage = job.usage
        if limits.llm_call_budget and usage.calls + job.reserved_calls >= limits.llm_call_budget:
            raise self._refuse(
                job,
                f"LLM call budget exhausted: {usage.calls} of {limits.llm_call_budget} calls used"
                + _in_flight(job.reserved_calls, "call"),
                Refusal.CALL_BUDGET,
            )
        if max_tokens is not None and max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be a positive integer, got {max_tokens}")
        wanted = min(max_tokens or limits.llm_max_tokens_per_call, limits.llm_max_tokens_per_call)
        input_bound = request_bytes + OVERHEAD_TOKENS if generates else 0
        granted = wanted if generates else 0
        if limits.llm_token_budget and generates:
            spent = usage.total_tokens + job.reserved_tokens
            left = limits.llm_token_budget - spent - input_bound
            if left < min(wanted, MIN_USEFUL_OUTPUT_TOKENS):
                raise self._refuse(
                    job,
                    f"LLM token budget exhausted: {usage.total_tokens} of "
                    f"{limits.llm_token_budget} tokens used"
                    + _in_flight(job.reserved_tokens, "token")
                    + f"; this call may need up to {input_bound} input tokens",
                    Refusal.TOKEN_BUDGET,
                )
            granted = min(wanted, left)
        reservation = Reservation(job=job, tokens=input_bound + granted, max_tokens=granted)
        job.reserved_calls += 1
        job.reserved_tokens += reservation.tokens
        return reservation

    def settle(self, reservation: Reservation, input_tokens: int, output_tokens: int) -> None:
        """The call was answered (or broke off) upstream: its real usage replaces the hold."""
        if not self._close(reservation):
            return
        job = reservation.job
        job.usage = job.usage.plus(max(0, input_tokens), max(0, output_tokens), calls=1)
        self._on_usage(job)

    def settle_cut(self, reservation: Reservation) -> None:
        """A stream ran past its grant and was cut: what the upstream billed past the grant is
        unknown, so the worst case held is spent. The cut counts as the job's token budget
        running out: if its agent then gives up (exits without a result), the job ends
        BUDGET_EXCEEDED rather than as a plain exit."""
        reservation.job.budget_refused = Refusal.TOKEN_BUDGET.value
        self.settle(
            reservation, reservation.tokens - reservation.max_tokens, reservation.max_tokens
        )

    def release(self, reservation: Reservation) -> None:
        """The call never reached the upstream: nothing of it is spent."""
        self._close(reservation)

    def note_refusal(self, job_id: str, refusal: Refusal | None) -> None:
        """A door refused a call by the job's policy (a model not allowed): a later failure
        of the job is typed BUDGET_EXCEEDED, and ``GET /job`` tells the agent why."""
        if refusal is not None:
            self._lookup(job_id).budget_refused = refusal.value

    def _close(self, reservation: Reservation) -> bool:
        if not reservation.open:
            return False
        reservation.open = False
        job = reservation.job
        job.reserved_calls -= 1
        job.reserved_tokens -= reservation.tokens
        return True

    @staticmethod
    def _refuse(job: JobRecord, message: str, refusal: Refusal) -> BudgetExceeded:
        job.budget_refused = refusal.value
        return BudgetExceeded(message, refusal=refusal)


def _in_flight(amount: int, unit: str) -> str:
    if not amount:
        return ""
    return f" and {amount} {unit}{'s' if amount != 1 else ''} held by calls in flight"
