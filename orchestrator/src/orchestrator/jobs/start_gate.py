"""Holding a job's worker-API calls until its container has been verified.

A job's container starts calling the worker API (``GET /job``, ``GET /credentials``) as soon as
it runs, while the orchestrator is still checking that it mounted the right directory. Calls
are accepted while the job is ``Creating`` (SPEC), so instead of refusing them, which would cost
the worker a retry back-off, they wait for the job to leave ``Creating``: served once it is
``Running``, refused with the revoked token once it failed.
"""

from __future__ import annotations

import asyncio

from orchestrator.domain.jobs import JobState
from orchestrator.jobs.record import JobRecord

# Beyond this a held call is answered 503 with Retry-After (the worker retries): a start that
# slow means an engine in trouble, and a connection should not wait on it indefinitely.
START_HOLD_S = 30.0


async def wait_while_creating(job: JobRecord, timeout_s: float) -> bool:
    """Waits until the job is no longer ``Creating``; False if it still is after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while job.state is JobState.CREATING:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        waiter: asyncio.Future[None] = loop.create_future()
        job.wake_on_change(waiter)
        try:
            await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            pass
        finally:
            if not waiter.done() or waiter.cancelled():
                job.forget_waiter(waiter)
    return True
