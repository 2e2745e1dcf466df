"""WASM tools: WebAssembly modules (WASI preview 1 commands) offered to the model as tools.

Each tool is a module with a :class:`~ironclaw_contract.wasm_catalog.WasmToolManifest`. A call runs
the module's ``_start`` in a fresh wasmtime store: the arguments arrive as JSON on stdin, the
result is what the module writes to stdout, and its exit status says whether it succeeded.

What a module can reach is what WASI preview 1 gives it and nothing more: stdin, stdout, stderr,
clocks and random numbers, ``argv`` (the tool's name) and an empty environment. Files only
through ``/workspace`` when the manifest asks for it (read-only or read-write); WASI preview 1
has no sockets, and neither wasi-http nor the host's network is enabled. Each call is bounded by
the manifest's limits: fuel (instructions), linear memory, a wall-clock timeout and the size of
the output kept.

wasmtime is an optional dependency (the ``worker`` extra): without it the worker still runs its
built-in tools, and :func:`build_wasm_tools` reports each WASM tool as left out.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ironclaw_contract.wasm_catalog import WasmToolManifest
from worker.tools.base import Tool, ToolContext, ToolError, ToolResult

try:
    import wasmtime
except ImportError as exc:  # the image lacks the optional package
    _WASMTIME_MISSING: ImportError | None = exc
else:
    _WASMTIME_MISSING = None

log = logging.getLogger(__name__)

GUEST_WORKSPACE = "/workspace"
# stderr is only shown when a call fails; its end (a panic message, a usage line) is what tells.
MAX_STDERR_BYTES = 16 * 1024
# The wall-clock timeout is measured in ticks of the engine's epoch: one tick every 10 ms.
EPOCH_TICK_S = 0.01
# Tables hold function references (8 bytes an element on the host); bounded so that table.grow
# cannot take the host's memory around the linear-memory limit.
MAX_TABLES = 8
MAX_TABLE_ELEMENTS = 1_000_000
# How long to wait for the WASI context of a finished call to let go of its output callbacks.
_RELEASE_WAIT_S = 2.0

_WASI = "wasi_snapshot_preview1"
# wasmtime numbers the causes of an error when there are several: "0: ...", "1: ...".
_CAUSE_NUMBER = re.compile(r"^\d+: ")

# WASI preview 1 errno values used by poll_oneoff.
_ERRNO_SUCCESS = 0
_ERRNO_FAULT = 21
_ERRNO_INVAL = 28
_ERRNO_NOTSUP = 58
# poll_oneoff's structures: subscription (userdata, tag, clock id or fd, timeout, precision,
# flags) and event (userdata, error, type, nbytes, flags).
_SUBSCRIPTION = struct.Struct("<QB7xI4xQQH6x")
_EVENT = struct.Struct("<QHB5xQH6x")
_EVENTTYPE_CLOCK = 0
_EVENTTYPE_FD_READ = 1
_EVENTTYPE_FD_WRITE = 2
_CLOCK_REALTIME = 0
_CLOCK_MONOTONIC = 1
_SUBCLOCKFLAGS_ABSTIME = 1

OutcomeKind = Literal["exit", "fuel", "timeout", "trap", "error"]

# The call running on each thread, for host functions: wasmtime calls them on the thread that
# entered the module. Module-level so that the linker's functions hold no runtime alive.
_ACTIVE = threading.local()


@dataclass(frozen=True)
class WasmOutcome:
    """How one run of a module ended.

    ``kind`` is ``exit`` when the module exited (``exit_code`` says how; returning from
    ``_start`` is 0), ``fuel`` or ``timeout`` when a limit stopped it, ``trap`` when it trapped
    (e.g. after memory growth was refused) and ``error`` when it could not be started.
    ``stdout`` is already capped (with a truncation marker), ``stderr`` is its tail.
    """

    kind: OutcomeKind
    status: str
    stdout: str
    stderr: str
    exit_code: int | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the module exited with status 0."""
        return self.kind == "exit" and self.exit_code == 0

    def to_result(self) -> ToolResult:
        """The tool result: stdout on success; otherwise stdout, stderr and the status, as an
        error for the model to read."""
        if self.ok:
            return ToolResult(self.stdout if self.stdout else "(no output)")
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr.strip():
            parts.append(f"stderr:\n{self.stderr.rstrip()}")
        parts.append(f"[{self.status}]")
        return ToolResult("\n".join(parts), is_error=True)


class WasmToolRunner:
    """One compiled WASM tool: runs its module once per call, each time in a fresh store with
    the manifest's limits, and offers itself to the model as a :class:`Tool`."""

    def __init__(
        self,
        runtime: _Runtime,
        manifest: WasmToolManifest,
        pre: wasmtime.InstancePre,
        workspace: Path,
    ) -> None:
        self._runtime = runtime
        self._manifest = manifest
        self._pre = pre
        self._workspace = workspace

    @property
    def manifest(self) -> WasmToolManifest:
        """The tool's manifest."""
        return self._manifest

    def tool(self) -> Tool:
        """The worker tool whose calls run this module."""
        return Tool(
            name=self._manifest.name,
            description=self._manifest.description,
            parameters=self._manifest.parameters,
            handler=self._handle,
        )

    def _handle(self, ctx: ToolContext, args: Mapping[str, Any]) -> ToolResult:
        # The preopen must be the root the file tools are confined to; tools built for another
        # workspace are a wiring mistake, not something to paper over.
        if self._manifest.workspace != "none" and ctx.workspace != self._workspace:
            raise ToolError(
                f"this WASM tool was set up for the workspace {self._workspace}, "
                f"not {ctx.workspace}"
            )
        return self.run(encode_arguments(args)).to_result()

    def run(self, stdin: bytes) -> WasmOutcome:
        """Runs the module once with ``stdin``; never raises for what the module does."""
        limits = self._manifest.limits
        stdout = _HeadCapture(limits.max_output_bytes)
        stderr = _TailCapture(MAX_STDERR_BYTES)
        call = _Call(deadline=time.monotonic() + limits.timeout_s)
        started = time.monotonic()
        released = _Released()
        store = wasmtime.Store(self._runtime.engine)
        try:
            try:
                self._prepare(store, stdin, stdout, stderr, released, call)
            except (wasmtime.WasmtimeError, OSError) as exc:
                kind: OutcomeKind = "error"
                status = f"could not start: {_summary(str(exc))}"
                exit_code: int | None = None
            else:
                kind, status, exit_code = self._execute(store, call)
        finally:
            # Dropping the store releases the WASI context, whose streams hold the output
            # callbacks; it lets go of them on another thread. Waiting for that means no byte
            # of this call can arrive after its result is taken.
            store.close()
            released.wait(_RELEASE_WAIT_S)
        return WasmOutcome(
            kind=kind,
            status=status,
            stdout=stdout.render(),
            stderr=stderr.render(),
            exit_code=exit_code,
            elapsed_s=time.monotonic() - started,
        )

    def _prepare(
        self,
        store: wasmtime.Store,
        stdin: bytes,
        stdout: _HeadCapture,
        stderr: _TailCapture,
        released: _Released,
        call: _Call,
    ) -> None:
        limits = self._manifest.limits
        store.set_fuel(limits.fuel)
        # Per memory; with at most one memory that is the module's whole linear memory.
        store.set_limits(
            memory_size=limits.memory_mb * 1024 * 1024,
            memories=1,
            tables=MAX_TABLES,
            table_elements=MAX_TABLE_ELEMENTS,
        )
        # One tick more than the timeout holds: the first tick may come right after the start.
        store.set_epoch_deadline(math.ceil(limits.timeout_s / EPOCH_TICK_S) + 1)
        config = wasmtime.WasiConfig()
        config.argv = [self._manifest.name]
        # wasmtime opens the stdin file when it is configured, so it can go right after.
        fd, stdin_path = tempfile.mkstemp(prefix="ironclaw-wasm-stdin-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(stdin)
            config.stdin_file = stdin_path
        finally:
            os.unlink(stdin_path)
        config.stdout_custom = released.track(stdout.add)
        config.stderr_custom = released.track(stderr.add)
        if self._manifest.workspace != "none":
            config.preopen_dir(
                str(self._workspace),
                GUEST_WORKSPACE,
                fs_mutable=self._manifest.workspace == "read-write",
            )
        store.set_wasi(config)
        # WASI's monotonic clock counts from the creation of the context, which is now.
        call.monotonic_origin_ns = time.monotonic_ns()

    def _execute(self, store: wasmtime.Store, call: _Call) -> tuple[OutcomeKind, str, int | None]:
        limits = self._manifest.limits
        timed_out: tuple[OutcomeKind, str, int | None] = (
            "timeout",
            f"timed out after {limits.timeout_s:g} s",
            None,
        )
        try:
            with self._runtime.running(call):
                instance = self._pre.instantiate(store)
                start = instance.exports(store)["_start"]
                assert isinstance(start, wasmtime.Func)
                start(store)
        except wasmtime.ExitTrap as exc:
            return "exit", f"exit code {exc.code}", exc.code
        except wasmtime.Trap as exc:
            if call.timed_out or exc.trap_code == wasmtime.TrapCode.INTERRUPT:
                return timed_out
            if exc.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
                return "fuel", f"ran out of fuel (limit {limits.fuel})", None
            return "trap", f"trapped: {_summary(str(exc))}", None
        except wasmtime.WasmtimeError as exc:
            if call.timed_out:
                return timed_out
            return "error", f"could not run: {_summary(str(exc))}", None
        except _CallTimedOut:
            return timed_out
        except Exception as exc:
            # A host function of ours failed: report it like a trap, never crash the worker.
            if call.timed_out:
                return timed_out
            log.warning("WASM tool %s: host error: %r", self._manifest.name, exc)
            return "error", f"failed in the host: {type(exc).__name__}: {exc}", None
        return "exit", "exit code 0", 0


def build_wasm_tools(
    items: Sequence[tuple[WasmToolManifest, bytes]], workspace: Path
) -> tuple[list[Tool], list[str]]:
    """The worker tools for ``items`` (each a manifest and its module: WAT text or binary), and
    a message for each tool left out (no wasmtime, a module that does not compile or is not a
    WASI command, a repeated name). Never raises for a bad module.

    Tools that open the workspace preopen ``workspace`` as ``/workspace``; their calls must come
    with a :class:`ToolContext` for that same workspace.
    """
    runners, errors = compile_wasm_tools(items, workspace)
    return [runner.tool() for runner in runners], errors


def compile_wasm_tools(
    items: Sequence[tuple[WasmToolManifest, bytes]], workspace: Path
) -> tuple[list[WasmToolRunner], list[str]]:
    """Like :func:`build_wasm_tools`, but returns the runners, which can also run a module with
    raw stdin bytes."""
    if _WASMTIME_MISSING is not None:
        return [], [
            f"WASM tool {manifest.name!r} left out: this worker image lacks the wasmtime Python "
            "package (the 'worker' install extra)"
            for manifest, _ in items
        ]
    if not items:
        return [], []
    runtime = _Runtime()
    root = Path(workspace).resolve()
    runners: list[WasmToolRunner] = []
    errors: list[str] = []
    seen: set[str] = set()
    for manifest, module in items:
        if manifest.name in seen:
            errors.append(f"WASM tool {manifest.name!r} left out: its name is used twice")
            continue
        try:
            pre = runtime.prepare(module)
        except _ModuleRejected as exc:
            errors.append(f"WASM tool {manifest.name!r} left out: {exc}")
            continue
        seen.add(manifest.name)
        runners.append(WasmToolRunner(runtime, manifest, pre, root))
    return runners, errors


def encode_arguments(args: Mapping[str, Any]) -> bytes:
    """The arguments as the JSON a module reads on stdin (UTF-8; a string holding a lone
    surrogate, which UTF-8 cannot carry, makes it fall back to ASCII with escapes)."""
    try:
        return json.dumps(dict(args), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(dict(args)).encode("ascii")


class _ModuleRejected(Exception):
    """A module that cannot be a tool; the message says why."""


class _CallTimedOut(Exception):
    """Raised by a host function when the call's wall-clock deadline passed."""


@dataclass
class _Call:
    """The state of one running call that host functions need."""

    deadline: float
    monotonic_origin_ns: int = 0
    timed_out: bool = False

    def sleep(self, seconds: float) -> None:
        """Sleeps for ``seconds``, or until the deadline and then raises _CallTimedOut."""
        remaining = self.deadline - time.monotonic()
        if seconds < remaining:
            time.sleep(max(seconds, 0.0))
            return
        time.sleep(max(remaining, 0.0))
        self.timed_out = True
        raise _CallTimedOut


class _Runtime:
    """The engine every module of one tool set is compiled for, the linker with WASI, and the
    epoch ticker that measures the calls' wall-clock time."""

    def __init__(self) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        # Shared memories are for threads, which WASI preview 1 commands do not have.
        config.wasm_threads = False
        self.engine = wasmtime.Engine(config)
        self._linker = wasmtime.Linker(self.engine)
        self._linker.define_wasi()
        # wasmtime's poll_oneoff sleeps in the host, where neither the epoch nor fuel can stop
        # it; ours sleeps no longer than the call's deadline.
        self._linker.allow_shadowing = True
        i32 = wasmtime.ValType.i32()
        self._linker.define_func(
            _WASI,
            "poll_oneoff",
            wasmtime.FuncType([i32, i32, i32, i32], [i32]),
            _poll_oneoff,
            access_caller=True,
        )
        self._ticker = _EpochTicker(self.engine, EPOCH_TICK_S)

    def prepare(self, module: bytes) -> wasmtime.InstancePre:
        """Compiles ``module`` and links it against WASI; raises _ModuleRejected with the
        reason when it cannot be a WASI command."""
        try:
            # wasmtime takes either form: a binary module, or WAT text that it translates.
            compiled = wasmtime.Module(self.engine, module)
        except wasmtime.WasmtimeError as exc:
            raise _ModuleRejected(f"its module does not compile: {_summary(str(exc))}") from None
        entry = next((e for e in compiled.exports if e.name == "_start"), None)
        entry_type = entry.type if entry is not None else None
        if not isinstance(entry_type, wasmtime.FuncType):
            raise _ModuleRejected(
                "its module exports no _start function (the entry point of a WASI command)"
            )
        if entry_type.params or entry_type.results:
            raise _ModuleRejected("its _start function must take no parameters and return nothing")
        try:
            return self._linker.instantiate_pre(compiled)
        except wasmtime.WasmtimeError as exc:
            raise _ModuleRejected(
                f"its module imports what WASI preview 1 does not offer: {_summary(str(exc))}"
            ) from None

    @contextlib.contextmanager
    def running(self, call: _Call) -> Iterator[None]:
        """Marks ``call`` as the one running on this thread while the epoch ticks."""
        previous = getattr(_ACTIVE, "call", None)
        _ACTIVE.call = call
        try:
            with self._ticker.ticking():
                yield
        finally:
            _ACTIVE.call = previous


def _poll_oneoff(
    caller: wasmtime.Caller, in_ptr: int, out_ptr: int, count: int, nevents_ptr: int
) -> int:
    """WASI poll_oneoff: clock subscriptions sleep (bounded by the call's deadline); file
    descriptor subscriptions are ready at once, as stdio and files always are here."""
    call: _Call | None = getattr(_ACTIVE, "call", None)
    memory = caller.get("memory")
    if call is None or not isinstance(memory, wasmtime.Memory):
        return _ERRNO_INVAL
    # wasmtime hands i32 arguments over as signed numbers; pointers and counts are unsigned.
    in_ptr, out_ptr, count, nevents_ptr = (
        value & 0xFFFFFFFF for value in (in_ptr, out_ptr, count, nevents_ptr)
    )
    if count == 0:
        return _ERRNO_INVAL
    size = memory.data_len(caller)
    if (
        in_ptr + count * _SUBSCRIPTION.size > size
        or out_ptr + count * _EVENT.size > size
        or nevents_ptr + 4 > size
    ):
        return _ERRNO_FAULT
    raw = memory.read(caller, in_ptr, in_ptr + count * _SUBSCRIPTION.size)
    ready: list[bytes] = []
    clocks: list[tuple[int, int]] = []  # (nanoseconds to wait, userdata)
    for index in range(count):
        userdata, tag, ident, timeout, _precision, flags = _SUBSCRIPTION.unpack_from(
            raw, index * _SUBSCRIPTION.size
        )
        if tag == _EVENTTYPE_CLOCK:
            if ident not in (_CLOCK_REALTIME, _CLOCK_MONOTONIC):
                return _ERRNO_NOTSUP
            wait_ns = timeout
            if flags & _SUBCLOCKFLAGS_ABSTIME:
                now_ns = (
                    time.time_ns()
                    if ident == _CLOCK_REALTIME
                    else time.monotonic_ns() - call.monotonic_origin_ns
                )
                wait_ns = timeout - now_ns
            clocks.append((max(wait_ns, 0), userdata))
        elif tag in (_EVENTTYPE_FD_READ, _EVENTTYPE_FD_WRITE):
            ready.append(_EVENT.pack(userdata, _ERRNO_SUCCESS, tag, 0, 0))
        else:
            return _ERRNO_INVAL
    if not ready:
        # Only clocks: sleep until the first one is due.
        first_ns = min(wait for wait, _ in clocks)
        call.sleep(first_ns / 1e9)
        clocks = [(0, userdata) for wait, userdata in clocks if wait == first_ns]
    ready.extend(
        _EVENT.pack(userdata, _ERRNO_SUCCESS, _EVENTTYPE_CLOCK, 0, 0)
        for wait, userdata in clocks
        if wait == 0
    )
    memory.write(caller, b"".join(ready), out_ptr)
    memory.write(caller, struct.pack("<I", len(ready)), nevents_ptr)
    return _ERRNO_SUCCESS


class _EpochTicker:
    """Advances the engine's epoch every ``period_s`` while at least one call runs.

    Ticks are wall-clock time shared by every call, not timers of one call: each store's
    deadline counts ticks from its own start, so a call that ended (or timed out) leaves nothing
    behind that could interrupt a later one. The thread stops when no call is running.
    """

    def __init__(self, engine: wasmtime.Engine, period_s: float) -> None:
        self._engine = engine
        self._period_s = period_s
        self._condition = threading.Condition()
        self._running = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def ticking(self) -> Iterator[None]:
        """Keeps the epoch advancing for the duration of the block."""
        with self._condition:
            self._running += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._tick, name="wasm-epoch-ticker", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                # Only the last call's end wakes the ticker (to stop it): an earlier wake-up
                # would not be a tick.
                if self._running == 0:
                    self._condition.notify_all()

    def _tick(self) -> None:
        # Each tick comes at least a period after the previous one, so N ticks never take less
        # than N - 1 periods: a busy process makes a call stop a little late, never early.
        while True:
            next_tick = time.monotonic() + self._period_s
            with self._condition:
                while self._running > 0 and (delay := next_tick - time.monotonic()) > 0:
                    self._condition.wait(delay)
                if self._running == 0:
                    self._thread = None
                    return
            self._engine.increment_epoch()


class _Released:
    """Notices when wasmtime has dropped every output callback of one call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self._done = threading.Event()
        self._done.set()

    def track(self, callback: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """Returns a fresh callable that calls ``callback``; its release is tracked."""

        def forward(data: bytes) -> None:
            callback(data)

        with self._lock:
            self._pending += 1
            self._done.clear()
        weakref.finalize(forward, self._release)
        return forward

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._done.set()

    def wait(self, timeout_s: float) -> None:
        """Waits (at most ``timeout_s``) until every tracked callback was dropped."""
        if not self._done.wait(timeout_s):
            log.warning("WASM tool output streams were not released within %.1f s", timeout_s)


class _HeadCapture:
    """Keeps the first ``limit`` bytes of a stream and counts the rest."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()
        self._dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self._limit - len(self._data)
        if room > 0:
            self._data += chunk[:room]
        self._dropped += max(len(chunk) - max(room, 0), 0)

    def render(self) -> str:
        text = self._data.decode("utf-8", errors="replace")
        if self._dropped:
            text += f"\n…[truncated {self._dropped} bytes]…"
        return text


class _TailCapture:
    """Keeps the last ``limit`` bytes of a stream and counts what went before."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()
        self._dropped = 0

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self._limit
        if excess > 0:
            del self._data[:excess]
            self._dropped += excess

    def render(self) -> str:
        text = self._data.decode("utf-8", errors="replace")
        if self._dropped:
            text = f"…[{self._dropped} earlier bytes dropped]…\n{text}"
        return text


def _summary(message: str) -> str:
    """One line of a wasmtime error: its causes when it has them (a trap's first lines are
    only "error while executing at wasm backtrace:"), else its first two lines."""
    lines = [line.strip() for line in message.strip().splitlines()]
    if "Caused by:" in lines:
        causes = lines[lines.index("Caused by:") + 1 :]
        causes = [_CAUSE_NUMBER.sub("", cause) for cause in causes]
        picked = [cause.removeprefix("wasm trap: ") for cause in causes if cause]
    else:
        picked = [line for line in lines if line][:2]
    text = "; ".join(picked) or "unknown error"
    return text if len(text) <= 500 else text[:497] + "..."
