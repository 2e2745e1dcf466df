"""py-spy on a benchmark's server process, summarised into the costs that matter.

py-spy is not a project dependency: install it into the venv for a profiling run
(``.venv/bin/pip install py-spy``). Its collapsed stacks are written next to the results, and
summarised here three ways: own (self) time by package, own time by function, and inclusive
time of the functions on the request path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.procs import BenchError

RATE_HZ = 250
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")
_STACK_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_THREAD = re.compile(r"^thread \(\d+\): ")


def py_spy() -> str:
    """The py-spy executable: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


@contextmanager
def profile_process(
    pid: int, duration_s: float, output: Path
) -> Iterator[Callable[[], dict[str, Any]]]:
    """Samples ``pid`` for ``duration_s`` while the body runs; the yielded function waits for
    py-spy and returns the summary."""
    output.parent.mkdir(parents=True, exist_ok=True)
    seconds = max(1, round(duration_s))
    command = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(RATE_HZ),
        "--threads",
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finished() -> dict[str, Any]:
        out, _ = process.communicate(timeout=duration_s + 60)
        if process.returncode != 0 or not output.exists():
            raise BenchError(f"py-spy failed ({process.returncode}): {out.strip()[-500:]}")
        text = output.read_text(encoding="utf-8", errors="replace")
        summary = summarize_collapsed(text, duration_s=seconds)
        summary["collapsed_stacks"] = str(output)
        summary["rate_hz"] = RATE_HZ
        return summary

    try:
        yield finished
    finally:
        if process.poll() is None:
            try:
                process.wait(timeout=duration_s + 60)
            except subprocess.TimeoutExpired:
                process.kill()


def parse_frame(frame: str) -> tuple[str, str]:
    """``'Foo.bar (pkg/mod.py:12)'`` → (``'Foo.bar'``, ``'pkg/mod.py'``)."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["file"]


def package_of(file: str) -> str:
    """The top-level package (or stdlib module) a frame's file belongs to."""
    if not file:
        return "?"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py")


def summarize_collapsed(
    text: str, duration_s: float | None = None, top: int = 20
) -> dict[str, Any]:
    """Samples by thread; for the event loop's thread (``MainThread``) own time by package and
    by function and inclusive time by function, as shares of that thread's samples. Idle
    samples are not recorded, so the main thread's samples over ``duration_s * RATE_HZ`` is
    how busy the event loop was."""
    by_thread: Counter[str] = Counter()
    own_package: Counter[str] = Counter()
    own_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    main = 0
    for line in text.splitlines():
        match = _STACK_LINE.match(line.strip())
        if match is None:
            continue
        count = int(match["count"])
        raw_frames = match["stack"].split(";")
        thread = _THREAD.sub("", raw_frames[0]) if raw_frames[0].startswith("thread (") else "?"
        by_thread[thread] += count
        if thread != "MainThread":
            continue
        frames = [parse_frame(f) for f in raw_frames[1:] if f]
        if not frames:
            continue
        main += count
        function, file = frames[-1]
        own_package[package_of(file)] += count
        own_function[f"{function} ({file})"] += count
        for name in {f"{fn} ({fl})" for fn, fl in frames}:
            inclusive[name] += count

    def shares(counter: Counter[str], limit: int, total: int) -> list[dict[str, Any]]:
        return [
            {"name": name, "share": round(count / total, 4)}
            for name, count in counter.most_common(limit)
        ]

    # py-spy does not see every blocked wait as idle: the executor's, the job store's and the
    # Docker event stream's threads show up while they only wait (their stacks end in a queue
    # get or a socket read). Only the event loop's thread is analysed for that reason.
    all_samples = sum(by_thread.values())
    summary: dict[str, Any] = {
        "samples": all_samples,
        "event_loop_samples": main,
        "by_thread": shares(by_thread, top, all_samples or 1),
        "own_by_package": shares(own_package, top, main or 1),
        "own_by_function": shares(own_function, top, main or 1),
        "inclusive_by_function": shares(inclusive, top * 3, main or 1),
    }
    if duration_s:
        summary["event_loop_busy"] = round(main / (duration_s * RATE_HZ), 3)
    return summary
