"""ClaudeProcess with stand-in children: lines as they come, stderr tail, and a stop that also
ends commands started in sessions of their own (as the CLI starts them)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bridge.process import ClaudeProcess, descendants


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) is as good as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_lines_come_one_by_one_and_stdin_and_stderr_are_handled(tmp_path: Path) -> None:
    script = (
        'read -r prompt; echo "got $prompt"; echo oops >&2; '
        "sleep 1.5; printf 'last line without newline'"
    )
    process = ClaudeProcess(
        ["sh", "-c", script], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, stdin_text="hi\n"
    )
    started = time.monotonic()
    lines = process.lines()
    assert next(lines) == "got hi"
    assert time.monotonic() - started < 1.2  # not held back until the process ends
    assert list(lines) == ["last line without newline"]
    assert process.wait() == 0
    assert process.stderr_tail == "oops"
    process.close()


def test_stop_ends_a_child_that_ignores_sigterm_and_its_detached_commands(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"trap '' TERM; setsid sleep 31.7 & echo $! > {pid_file}; echo started; wait"
    process = ClaudeProcess(
        ["sh", "-c", script], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, stdin_text=""
    )
    assert next(process.lines()) == "started"
    detached = int(pid_file.read_text())
    assert detached in descendants(process.pid)
    # `$!` is known as soon as the shell forks, before the child has run setsid(1): wait for it.
    deadline = time.monotonic() + 5
    while os.getsid(detached) == os.getsid(process.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.getsid(detached) != os.getsid(process.pid)

    started = time.monotonic()
    process.stop("test", grace_s=0.5)
    assert time.monotonic() - started < 5
    assert process.stopped_by == "test"
    assert process.poll() is not None
    deadline = time.monotonic() + 5
    while _alive(detached) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(detached)
    process.close()


def test_lines_end_soon_after_exit_even_if_a_background_command_holds_stdout(
    tmp_path: Path,
) -> None:
    process = ClaudeProcess(
        ["sh", "-c", "setsid sleep 32.9 & echo bye"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        stdin_text="",
    )
    started = time.monotonic()
    assert list(process.lines()) == ["bye"]
    assert time.monotonic() - started < 5
    assert process.wait() == 0
    process.close()
    subprocess.run(["pkill", "-f", "sleep 32.9"], check=False)
