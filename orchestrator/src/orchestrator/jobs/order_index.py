"""Jobs by creation order, for paging: a page token is found by bisection instead of by walking
every job before it.

The manager's jobs dict is the source of truth; this index follows it lazily. New jobs are
only ever added at the end of the dict with a larger order, and jobs are only removed (cleanup),
so the index can tell cheaply whether it is still right: if its last job is still in the dict
and the dict holds exactly its jobs plus the ones after that last one, only appends happened
and they are taken over in O(new jobs). Anything else (a removal) rebuilds it, in O(n).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Ordered(Protocol):
    """What the index needs of a job: its creation order."""

    @property
    def order(self) -> int: ...


J = TypeVar("J", bound=Ordered)


class CreationOrderIndex(Generic[J]):
    """The jobs of ``jobs`` sorted by creation order; see :meth:`after`."""

    def __init__(self, jobs: dict[str, J]) -> None:
        self._jobs = jobs
        self._orders: list[int] = []
        self._records: list[J] = []

    def after(self, order: int) -> Iterator[J]:
        """Every job created after ``order`` (0: all), oldest first.

        Iterate it at once: it reflects the jobs as they were when it was called.
        """
        self._refresh()
        records = self._records
        for position in range(bisect.bisect_right(self._orders, order), len(records)):
            yield records[position]

    def _refresh(self) -> None:
        if not self._append_new():
            self._rebuild()

    def _append_new(self) -> bool:
        """Takes over jobs added since the last refresh; False if something else changed."""
        jobs, records = self._jobs, self._records
        if len(jobs) == len(records) and (not records or _last(jobs) is records[-1]):
            return True  # unchanged: appends always move the last job, see the module doc
        if not records:
            return False
        last = records[-1]
        added: list[J] = []
        for job in reversed(jobs.values()):
            if job is last:
                break
            added.append(job)
        else:
            return False  # the last indexed job is gone
        if len(jobs) - len(added) != len(records):
            return False  # some older job is gone
        added.reverse()
        previous = last.order
        for job in added:
            if job.order <= previous:
                return False  # not in creation order after all: sort it out
            previous = job.order
        records.extend(added)
        self._orders.extend(job.order for job in added)
        return True

    def _rebuild(self) -> None:
        self._records = sorted(self._jobs.values(), key=lambda job: job.order)
        self._orders = [job.order for job in self._records]


def _last(jobs: dict[str, J]) -> J:
    return next(reversed(jobs.values()))
