"""Child processes of a benchmark: each server and the load generator run in their own process,
so none shares an event loop (or a GIL) with what it measures.

A child announces itself with one stdout line ``READY {json}``; later stdout lines are JSON
messages (``{"event": ...}``) read by a thread into a queue. Its stderr goes to a log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
LOG_DIR = RESULTS_DIR / "logs"
READY = "READY "


class BenchError(Exception):
    """A benchmark could not run; the message says why and where to look."""


def emit(message: Mapping[str, Any]) -> None:
    """Writes one protocol line to stdout (used by the child side)."""
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def announce_ready(payload: Mapping[str, Any]) -> None:
    """The child's first stdout line: it serves from now on."""
    sys.stdout.write(READY + json.dumps(payload) + "\n")
    sys.stdout.flush()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for servers that cannot report the one they bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


class Child:
    """One child process; use as a context manager so it is always stopped."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cpus: set[int] | None = None,
        ready_timeout_s: float = 60.0,
        wait_ready: bool = True,
    ) -> None:
        self.name = name
        self._argv = list(argv)
        self._env = dict(os.environ if env is None else env)
        self._cpus = cpus
        self._ready_timeout_s = ready_timeout_s
        self._wait_ready = wait_ready
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self.log_path = LOG_DIR / f"{name}.log"
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def __enter__(self) -> Child:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w", encoding="utf-8")
        cpus = self._cpus

        def pin() -> None:
            # Runs in the child before exec: every thread it starts inherits the CPU set.
            if cpus:
                os.sched_setaffinity(0, cpus)

        self._process = subprocess.Popen(
            self._argv,
            cwd=ROOT,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            # preexec_fn runs before exec, while this process's other threads only wait on pipes.
            preexec_fn=pin if cpus else None,
        )
        threading.Thread(target=self._pump, name=f"{self.name}-stdout", daemon=True).start()
        try:
            if self._wait_ready:
                self.ready = self._await_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _pump(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _await_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + self._ready_timeout_s
        while True:
            line = self._next_line(deadline - time.monotonic())
            if line.startswith(READY):
                ready: dict[str, Any] = json.loads(line[len(READY) :])
                return ready

    def _next_line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise BenchError(
                f"{self.name}: no answer in time; its log: {self.log_path}\n{self.log_tail()}"
            ) from None
        if line is None:
            code = self._process.wait() if self._process else None
            raise BenchError(
                f"{self.name} exited (code {code}); its log: {self.log_path}\n{self.log_tail()}"
            )
        return line

    def wait_message(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any]:
        """The next JSON message on stdout matching ``predicate`` (others are dropped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._next_line(deadline - time.monotonic())
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and predicate(message):
                return message

    def wait_exit(self, timeout_s: float) -> int:
        assert self._process is not None
        return self._process.wait(timeout=timeout_s)

    def output_lines(self, timeout_s: float) -> list[str]:
        """Every stdout line until the child exits (for one-shot children)."""
        deadline = time.monotonic() + timeout_s
        lines: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise BenchError(f"{self.name} did not finish in {timeout_s:.0f} s") from None
            if line is None:
                return lines
            lines.append(line)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its live descendants, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            # Fields after the command name (which may hold spaces) start at ") ".
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (OSError, ValueError):
            continue
    return total


def load_average() -> list[float]:
    """The host's 1, 5 and 15 minute load averages (other work on a shared machine)."""
    return [round(value, 2) for value in os.getloadavg()]


def code_version() -> dict[str, Any]:
    """The commit measured, and whether the work tree had uncommitted changes."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes": bool(status)}


def python_module(module: str, *args: str) -> list[str]:
    """argv running ``module`` with this interpreter (the project venv's under ``make``)."""
    return [sys.executable, "-m", module, *args]
