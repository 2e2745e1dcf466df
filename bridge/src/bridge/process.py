"""One run of the ``claude`` CLI as a child process: started without a shell, its stdout read
line by line as it arrives, its stderr kept (a tail) and passed on, stopped cleanly.

The CLI writes each stream-json line to a pipe as soon as it has it (it flushes per line, as the
tests check with a tool call still running), so a plain pipe is enough: no pty, which would
also merge stderr into stdout and make the CLI think it talks to a person.

Stopping the child stops the commands its tools started too: SIGTERM to its process group (the
CLI then ends its commands itself), then SIGKILL to the group and to every process that was
below it, since the CLI starts each command in a session of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from worker.termination import termination_deferred

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
STDERR_TAIL_LINES = 40
_POLL_S = 0.2
_READ_SIZE = 1 << 16
# Output still arriving after the CLI exited is read for at most this long.
_DRAIN_S = 1.0


class ClaudeProcess:
    """A running ``claude`` whose stdout is consumed with :meth:`lines`.

    ``on_stderr`` is called (from a reader thread) with each stderr line; the last
    :data:`STDERR_TAIL_LINES` are kept in :attr:`stderr_tail` as well.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        stdin_text: str,
        on_stderr: Callable[[str], None] | None = None,
    ) -> None:
        self._on_stderr = on_stderr
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._stopping = threading.Lock()
        self._closed = threading.Event()
        self.stopped_by: str | None = None  # why stop() was called, if it was
        # Deferred: a SIGTERM arriving between the fork and the assignment must not leave an
        # untracked child behind.
        with termination_deferred():
            self._proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._stdout = self._proc.stdout
        self._threads = [
            threading.Thread(
                target=self._feed_stdin,
                args=(self._proc.stdin, stdin_text),
                name="claude-stdin",
                daemon=True,
            ),
            threading.Thread(
                target=self._read_stderr,
                args=(self._proc.stderr,),
                name="claude-stderr",
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def stderr_tail(self) -> str:
        """The last lines the CLI wrote to stderr."""
        return "\n".join(self._tail)

    def lines(self) -> Iterator[str]:
        """Each stdout line as soon as it is complete (decoded as UTF-8, bad bytes replaced).

        Ends at end of file, or shortly after the CLI exited even if a command it left running
        in the background still holds the pipe open."""
        fd = self._stdout.fileno()
        pending = b""
        exited_at: float | None = None
        while True:
            if exited_at is None and self._proc.poll() is not None:
                exited_at = time.monotonic()
            ready, _, _ = select.select([fd], [], [], _POLL_S)
            if ready:
                chunk = os.read(fd, _READ_SIZE)
                if not chunk:
                    break
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", errors="replace")
            elif exited_at is not None and time.monotonic() - exited_at > _DRAIN_S:
                break
        if pending:
            yield pending.decode("utf-8", errors="replace")

    def wait(self, timeout: float | None = None) -> int:
        """The exit code (negative: killed by that signal); what stderr still has is read first
        (for up to a second: a background command may hold it open)."""
        code = self._proc.wait(timeout)
        for thread in self._threads:
            thread.join(timeout=_DRAIN_S)
        return code

    def poll(self) -> int | None:
        return self._proc.poll()

    def stop(self, reason: str, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the CLI and everything it started; SIGKILL after ``grace_s``. Safe to
        call from any thread, more than once."""
        with self._stopping:
            if self.stopped_by is None:
                self.stopped_by = reason
            if self._proc.poll() is not None:
                self._kill_group(signal.SIGKILL)  # leftovers of an exited CLI
                return
            log.info("stopping claude (pid %d): %s", self._proc.pid, reason)
            # The CLI runs each command in a session of its own, outside its process group:
            # note them now, while they are still known as its descendants.
            started = descendants(self._proc.pid)
            self._kill_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self._proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            leftovers = started | descendants(self._proc.pid)
            self._kill_group(signal.SIGKILL)
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5.0)

    def close(self) -> None:
        """Stops the CLI if it is still running and closes the pipes."""
        if self._proc.poll() is None:
            self.stop("bridge finished")
        else:
            self._kill_group(signal.SIGKILL)
        self._closed.set()
        for thread in self._threads:
            thread.join(timeout=2 * _POLL_S + 1.0)
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _kill_group(self, sig: signal.Signals) -> None:
        # The child leads its own session, so its pid is the group id; the group outlives
        # the leader while a command it started still runs.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    @staticmethod
    def _feed_stdin(stream: IO[bytes], text: str) -> None:
        # A thread, because a long prompt would otherwise fill the pipe while the CLI is
        # already writing output nobody reads yet.
        try:
            stream.write(text.encode("utf-8"))
        except OSError:
            pass  # the CLI exited early; its exit code tells why
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _read_stderr(self, stream: IO[bytes]) -> None:
        # Raw reads with a timeout, so the thread ends when the process is closed even while
        # a command left running in the background still holds the pipe open.
        fd = stream.fileno()
        pending = b""
        while not self._closed.is_set():
            ready, _, _ = select.select([fd], [], [], _POLL_S)
            if not ready:
                continue
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            for raw in complete:
                self._stderr_line(raw)
        if pending:
            self._stderr_line(pending)

    def _stderr_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip()
        if not line:
            return
        self._tail.append(line)
        if self._on_stderr is not None:
            try:
                self._on_stderr(line)
            except Exception:
                log.exception("handling a stderr line failed")


def descendants(root: int) -> set[int]:
    """The pids of every process below ``root`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found: set[int] = set()
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def reap_orphans() -> None:
    """Collects exited processes that were re-parented to this one. Only PID 1 (the bridge in
    a container without an init) inherits them; call it when no child of its own is running."""
    if os.getpid() != 1:
        return
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
