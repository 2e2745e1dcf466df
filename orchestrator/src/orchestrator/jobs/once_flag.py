"""A flag set once and never cleared, that can be awaited."""

from __future__ import annotations

import asyncio


class OnceFlag:
    """What ``asyncio.Event`` offers for a flag that is only ever set (a job's teardown being
    over), without its cost until someone has to wait: an Event with its waiter deque is about
    0.7 KiB, and thousands of ended jobs only ever need the flag itself."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: asyncio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Sets the flag and wakes every waiter."""
        self._set = True
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> bool:
        """Returns (True) once the flag is set."""
        if not self._set:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        return True
