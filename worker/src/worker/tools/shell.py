"""The ``shell`` tool: runs one command with bash (or ``/bin/sh``) in the workspace.

Each command runs in its own process group, so a timeout, the end of the command or the worker
being stopped kills everything it started. Output is captured incrementally and kept as head and
tail, so a command that prints gigabytes costs bounded memory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.termination import termination_deferred
from worker.tools.base import (
    Tool,
    ToolContext,
    ToolError,
    ToolResult,
    int_arg,
    object_schema,
    str_arg,
)

DEFAULT_TIMEOUT_S = 120
MAX_TIMEOUT_S = 600
MAX_OUTPUT_BYTES = 30_000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What commands may inherit from the worker's own environment. Everything else (the worker token,
# every IRONCLAW_* setting) stays out; granted credentials are added explicitly.
SAFE_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "TERM",
        "USER",
        "LOGNAME",
        "TZ",
        "TMPDIR",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "GOPATH",
        "GOCACHE",
        "JAVA_HOME",
    }
)
SAFE_ENV_PREFIXES = ("NPM_CONFIG_", "npm_config_")

# Output still arriving after the command ended (or was killed) is read for at most this long.
_DRAIN_S = 1.0
# Without pidfd support the exit of the command is noticed by polling at this interval.
_POLL_S = 0.05


def tool_environment(base: Mapping[str, str], credentials: Mapping[str, str]) -> dict[str, str]:
    """The environment of tool commands: the safe part of ``base`` plus the credentials."""
    env = {
        name: value
        for name, value in base.items()
        if (name in SAFE_ENV_NAMES or name.startswith(SAFE_ENV_PREFIXES))
        and not name.startswith("IRONCLAW_")
    }
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(
        (name, value) for name, value in credentials.items() if not name.startswith("IRONCLAW_")
    )
    return env


@dataclass(frozen=True)
class CommandOutcome:
    """How a command ended: its output (head and tail), exit code, and whether it timed out."""

    output: str
    exit_code: int
    timed_out: bool


def run_command(
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout_s: float,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
) -> CommandOutcome:
    """Runs ``command`` in a new process group and kills the group when it ends or times out.

    stdout and stderr are merged so their interleaving survives. Background processes the command
    left behind are killed as well once it exits.
    """
    capture = _HeadTail(max_output_bytes)
    proc: subprocess.Popen[bytes] | None = None
    try:
        # A SIGTERM during the start is held back until `proc` is set, so the finally below
        # always knows what to kill.
        with termination_deferred():
            proc = subprocess.Popen(
                _shell_argv(command, env),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        assert proc.stdout is not None
        exited = _pump(proc, capture, time.monotonic() + timeout_s)
        _kill_group(proc)
        _drain(proc.stdout.fileno(), capture)
    finally:
        # Also reached when the worker itself is being stopped mid-command: nothing survives it.
        if proc is not None:
            _kill_group(proc)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
            _reap_orphans()
    return CommandOutcome(capture.render(), proc.returncode, timed_out=not exited)


def _shell_argv(command: str, env: Mapping[str, str]) -> list[str]:
    # Not a login shell: Debian's /etc/profile resets PATH, which would drop what the image set.
    bash = shutil.which("bash", path=env.get("PATH", DEFAULT_PATH))
    if bash is not None:
        return [bash, "-c", command]
    return ["/bin/sh", "-c", command]


def _pump(proc: subprocess.Popen[bytes], capture: _HeadTail, deadline: float) -> bool:
    """Reads output until the command exits (True) or the deadline passes (False)."""
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    os.set_blocking(out_fd, False)
    exit_fd = _pidfd(proc.pid)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(out_fd, selectors.EVENT_READ)
            if exit_fd is not None:
                selector.register(exit_fd, selectors.EVENT_READ)
            while True:
                if _has_exited(proc.pid):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = remaining if exit_fd is not None else min(remaining, _POLL_S)
                for key, _ in selector.select(wait):
                    if key.fd != out_fd:
                        continue
                    chunk = _read(out_fd)
                    if chunk:
                        capture.add(chunk)
                    elif chunk is not None:
                        selector.unregister(out_fd)
    finally:
        if exit_fd is not None:
            os.close(exit_fd)


def _drain(out_fd: int, capture: _HeadTail) -> None:
    """Reads what is left in the pipe, bounded in time: a process that escaped the group (setsid)
    may hold the pipe open forever."""
    end = time.monotonic() + _DRAIN_S
    with selectors.DefaultSelector() as selector:
        selector.register(out_fd, selectors.EVENT_READ)
        while (remaining := end - time.monotonic()) > 0:
            if not selector.select(remaining):
                return
            chunk = _read(out_fd)
            if chunk is None:
                continue
            if not chunk:
                return
            capture.add(chunk)


def _read(fd: int) -> bytes | None:
    """A chunk of output, ``b""`` at end of file, or ``None`` when nothing is there yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None


def _has_exited(pid: int) -> bool:
    # WNOWAIT leaves the process unreaped, so its process group id stays valid for the kill.
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        fd: int = opener(pid)
    except OSError:
        return None
    return fd


def _reap_orphans() -> None:
    """As PID 1 of its container, the worker inherits every orphaned process; reap the dead ones
    so they do not pile up as zombies. Elsewhere orphans go to a real init, and waiting for any
    child could steal the exit status of a process someone else started."""
    if os.getpid() != 1:
        return
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _HeadTail:
    """Keeps the first and the last bytes of a stream, counting what falls in between."""

    def __init__(self, limit: int) -> None:
        self._head_limit = limit // 2
        self._tail_limit = limit - self._head_limit
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def add(self, chunk: bytes) -> None:
        self._total += len(chunk)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            # Trim only now and then: cutting on every chunk would copy the tail each time.
            if len(self._tail) > 2 * self._tail_limit:
                del self._tail[: len(self._tail) - self._tail_limit]

    def render(self) -> str:
        tail = self._tail[max(0, len(self._tail) - self._tail_limit) :]
        dropped = self._total - len(self._head) - len(tail)
        text = self._head.decode("utf-8", errors="replace")
        if dropped > 0:
            text += f"\n…[truncated {dropped} bytes]…\n"
        return text + bytes(tail).decode("utf-8", errors="replace")


def _shell(ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
    command = str_arg(args, "command")
    if not command.strip():
        raise ToolError("command must not be empty")
    timeout = int_arg(args, "timeout", DEFAULT_TIMEOUT_S, minimum=1, maximum=MAX_TIMEOUT_S)
    cwd = ctx.resolve_path(str_arg(args, "workdir", "."))
    if not cwd.is_dir():
        raise ToolError(f"workdir {ctx.display(cwd)!r} is not a directory")
    outcome = run_command(command, cwd=cwd, env=ctx.env, timeout_s=timeout)
    output = outcome.output if outcome.output else "(no output)"
    if outcome.timed_out:
        status = f"timed out after {timeout} s; the command and everything it started were killed"
    elif outcome.exit_code < 0:
        status = f"killed by signal {signal.Signals(-outcome.exit_code).name}"
    else:
        status = f"exit code {outcome.exit_code}"
    failed = outcome.timed_out or outcome.exit_code != 0
    return ToolResult(f"{output.rstrip()}\n[{status}]", is_error=failed)


SHELL = Tool(
    name="shell",
    description=(
        "Run a shell command with bash in the workspace and return its combined stdout and "
        f"stderr (the first and last {MAX_OUTPUT_BYTES // 2} bytes of long output) and exit code. "
        f"Times out after `timeout` seconds (default {DEFAULT_TIMEOUT_S}, at most "
        f"{MAX_TIMEOUT_S}); processes left running in the background are stopped when the "
        "command ends. Granted credentials are available as environment variables."
    ),
    parameters=object_schema(
        {
            "command": {"type": "string", "description": "The command line to run."},
            "timeout": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_TIMEOUT_S,
                "description": f"Seconds before it is killed (default {DEFAULT_TIMEOUT_S}).",
            },
            "workdir": {
                "type": "string",
                "description": "Directory to run in, relative to the workspace (default: root).",
            },
        },
        required=("command",),
    ),
    handler=_shell,
)
