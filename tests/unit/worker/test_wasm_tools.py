"""WASM tools run with the real wasmtime: the shipped word-count tool, the limits (fuel,
timeout, memory, output), the workspace preopen, and modules that cannot be tools.

The modules are hand-written WAT in tests/fixtures/wasm; each says what it does. Without the
wasmtime package these tests skip locally and fail under CI (CI=true).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ironclaw_contract.wasm_catalog import (
    WasmLimits,
    WasmToolManifest,
    WorkspaceAccess,
    parse_wasm_manifest,
)
from tests.conftest import IN_CI, ROOT
from worker.tools import ToolContext, ToolRegistry, default_tools, tool_environment
from worker.tools import wasm as wasm_module
from worker.tools.wasm import WasmOutcome, WasmToolRunner, build_wasm_tools, compile_wasm_tools

FIXTURES = ROOT / "tests" / "fixtures" / "wasm"
WORD_COUNT_MANIFEST = ROOT / "deploy" / "wasm-tools" / "word-count.json"
# Whether the worker could import wasmtime (what decides whether it offers WASM tools).
HAS_WASMTIME = wasm_module._WASMTIME_MISSING is None

# WASI preview 1 errno values the tests expect.
ERRNO_BADF = 8
ERRNO_NOENT = 44

# The Unicode White_Space property, the word separators word-count documents.
WHITE_SPACE = frozenset(
    [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029]
) | {0x202F, 0x205F, 0x3000}


@pytest.fixture
def needs_wasmtime() -> None:
    if HAS_WASMTIME:
        return
    if IN_CI:
        pytest.fail("CI=true but the wasmtime package is not installed (the 'worker' extra)")
    pytest.skip("the wasmtime package is not installed (the 'worker' extra)")


Build = Callable[..., WasmToolRunner]


@pytest.fixture
def build(needs_wasmtime: None, workspace: Path) -> Build:
    """Compiles one module (a fixture's file name, or WAT/binary bytes) into a runner."""

    def make(
        module: str | bytes,
        *,
        name: str = "tool",
        access: WorkspaceAccess = "none",
        **limits: Any,
    ) -> WasmToolRunner:
        source = (FIXTURES / module).read_bytes() if isinstance(module, str) else module
        manifest = WasmToolManifest(
            name=name,
            description=f"test module {name}",
            module="module.wat",
            workspace=access,
            limits=WasmLimits(**limits),
        )
        runners, errors = compile_wasm_tools([(manifest, source)], workspace)
        assert errors == []
        assert len(runners) == 1
        return runners[0]

    return make


def _word_count_item() -> tuple[WasmToolManifest, bytes]:
    document = json.loads(WORD_COUNT_MANIFEST.read_text())
    manifest = parse_wasm_manifest("word-count", document, str(WORD_COUNT_MANIFEST))
    return manifest, (WORD_COUNT_MANIFEST.parent / manifest.module).read_bytes()


@pytest.fixture
def word_count(needs_wasmtime: None, workspace: Path) -> WasmToolRunner:
    runners, errors = compile_wasm_tools([_word_count_item()], workspace)
    assert errors == []
    return runners[0]


@pytest.fixture
def wasm_registry(needs_wasmtime: None, context: ToolContext) -> ToolRegistry:
    """The built-in tools plus the shipped word-count tool, as the agent would offer them."""
    tools, errors = build_wasm_tools([_word_count_item()], context.workspace)
    assert errors == []
    return ToolRegistry(context, [*default_tools(), *tools])


def _reference_counts(text: str) -> dict[str, int]:
    words = 0
    in_word = False
    for char in text:
        if ord(char) in WHITE_SPACE:
            in_word = False
        elif not in_word:
            words += 1
            in_word = True
    return {"lines": text.count("\n"), "words": words, "chars": len(text)}


def _lines(outcome: WasmOutcome) -> list[str]:
    return outcome.stdout.splitlines()


# ---------------------------------------------------------------- the word-count example


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hello world", {"lines": 0, "words": 2, "chars": 11}),
        ("", {"lines": 0, "words": 0, "chars": 0}),
        ("one\ntwo three\n\nfour", {"lines": 3, "words": 4, "chars": 19}),
        ("  padded\t\ttabs  \r\n", {"lines": 1, "words": 2, "chars": 18}),
        ('say "hi" \\ back/slash', {"lines": 0, "words": 4, "chars": 21}),
        ("ctrl\x01\x1fchars\x7f", {"lines": 0, "words": 1, "chars": 12}),
        ("héllo wörld\n日本語 🙂\n", {"lines": 2, "words": 4, "chars": 18}),
        ("👩‍👩‍👧 family", {"lines": 0, "words": 2, "chars": 12}),
        (
            "ideographic\u3000space\u00a0nbsp\u2028sep\u0085nel",
            {"lines": 0, "words": 5, "chars": 30},
        ),
        ("zero\u200bwidth", {"lines": 0, "words": 1, "chars": 10}),
    ],
)
def test_word_count_counts_lines_words_and_characters(
    wasm_registry: ToolRegistry, text: str, expected: dict[str, int]
) -> None:
    assert _reference_counts(text) == expected  # the expectations follow the documented rules
    result = wasm_registry.call("word-count", {"text": text})
    assert not result.is_error, result.output
    assert json.loads(result.output) == expected


def test_word_count_decodes_every_json_escape(word_count: WasmToolRunner) -> None:
    # ASCII-only JSON: every non-ASCII character arrives as \uXXXX, astral ones as surrogate
    # pairs, and a lone surrogate stays one character.
    text = 'tab\there\nquote " back \\ slash / bell \b feed \f cr \r é 日 😀 \ud800 end'
    stdin = json.dumps({"text": text}, ensure_ascii=True).encode()
    assert b"\\ud83d\\ude00" in stdin
    outcome = word_count.run(stdin)
    assert outcome.ok, outcome
    assert json.loads(outcome.stdout) == _reference_counts(text)
    # The escaped key, escaped slashes and the surrogate pair, spelled by hand.
    outcome = word_count.run(b'{"te\\u0078t": "a\\/b \\uD83D\\uDE00\\u00e9\\n"}')
    assert json.loads(outcome.stdout) == {"lines": 1, "words": 2, "chars": 7}


def test_word_count_reads_only_the_top_level_text_and_the_last_one(
    word_count: WasmToolRunner,
) -> None:
    stdin = (
        json.dumps(
            {
                "nested": {"text": "not this one"},
                "list": [1, -2.5e-3, True, False, None, {"text": "nor this"}, ["text"]],
                "text": "first",
            }
        )[:-1]
        + ', "text": "the last one wins"}'
    )
    outcome = word_count.run(stdin.encode())
    assert outcome.ok, outcome
    assert json.loads(outcome.stdout) == {"lines": 0, "words": 4, "chars": 17}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, 'missing the "text" argument'),
        ({"txt": "typo"}, 'missing the "text" argument'),
        ({"text": 5}, 'the "text" argument must be a string'),
        ({"text": None}, 'the "text" argument must be a string'),
        ({"text": ["a", "b"]}, 'the "text" argument must be a string'),
    ],
)
def test_word_count_bad_arguments_are_an_error_result(
    wasm_registry: ToolRegistry, arguments: dict[str, Any], message: str
) -> None:
    result = wasm_registry.call("word-count", arguments)
    assert result.is_error
    assert f"word-count: {message}" in result.output
    assert result.output.endswith("[exit code 2]")


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"", "must be a JSON object"),
        (b'["text"]', "must be a JSON object"),
        (b'{"text": "unterminated', "not valid JSON"),
        (b'{"text": "a"} trailing', "not valid JSON"),
        (b'{"text": "bad \\x escape"}', "not valid JSON"),
        (b'{"text": "raw \x01 control"}', "not valid JSON"),
        (b'{"text": "\\u12"}', "not valid JSON"),
        (b'{"n": 012, "text": "a"}', "not valid JSON"),
        (b'{"n": tru, "text": "a"}', "not valid JSON"),
        (b'{"text" "a"}', "not valid JSON"),
        (b'{"a": ' + b"[" * 300 + b"]" * 300 + b', "text": "a"}', "nested too deeply"),
    ],
)
def test_word_count_invalid_json_exits_2(
    word_count: WasmToolRunner, stdin: bytes, message: str
) -> None:
    outcome = word_count.run(stdin)
    assert (outcome.kind, outcome.exit_code) == ("exit", 2)
    assert outcome.stdout == ""
    assert message in outcome.stderr


def test_word_count_handles_a_megabyte_of_text(word_count: WasmToolRunner) -> None:
    text = "lorem ipsum dolor sit amet, é😀\n" * 32_000
    outcome = word_count.run(json.dumps({"text": text}, ensure_ascii=False).encode())
    assert outcome.ok, outcome.status
    assert json.loads(outcome.stdout) == _reference_counts(text)


# ---------------------------------------------------------------- what a module receives


def test_arguments_arrive_as_json_on_stdin_with_argv_and_no_environment(
    build: Build, workspace: Path
) -> None:
    runner = build("echo.wat", name="echo")
    # What shell commands get (credentials included) is not for modules.
    context = ToolContext(workspace=workspace, env={"PATH": "/bin", "GITHUB_TOKEN": "ghp_x"})
    result = runner.tool().handler(context, {"text": 'héllo "q"', "n": [1, 2]})
    assert not isinstance(result, str)
    assert not result.is_error, result.output
    stdin, rest = result.output.split("\n", 1)
    assert json.loads(stdin) == {"text": 'héllo "q"', "n": [1, 2]}
    assert "héllo" in stdin  # UTF-8, not \u escapes
    assert rest == "argv=echo environ=0\n"


def test_a_lone_surrogate_falls_back_to_ascii_json(build: Build) -> None:
    outcome = build("echo.wat").run(wasm_module.encode_arguments({"text": "\ud800"}))
    assert outcome.stdout.startswith('{"text": "\\ud800"}')


def test_binary_modules_work_like_wat(build: Build) -> None:
    import wasmtime

    binary = bytes(wasmtime.wat2wasm((FIXTURES / "echo.wat").read_text()))
    assert binary.startswith(b"\0asm")
    outcome = build(binary, name="echo").run(b"{}")
    assert outcome.ok
    assert outcome.stdout == "{}\nargv=echo environ=0\n"


# ---------------------------------------------------------------- limits


def test_an_endless_loop_is_stopped_by_the_timeout(build: Build) -> None:
    runner = build("spin.wat", timeout_s=0.3, fuel=10**12)
    started = time.monotonic()
    outcome = runner.run(b"{}")
    elapsed = time.monotonic() - started
    assert outcome.kind == "timeout"
    assert outcome.status == "timed out after 0.3 s"
    assert 0.3 <= elapsed < 5
    result = outcome.to_result()
    assert result.is_error
    assert result.output == "[timed out after 0.3 s]"


def test_an_endless_loop_is_stopped_by_fuel(build: Build) -> None:
    runner = build("spin.wat", fuel=1_000_000, timeout_s=60)
    started = time.monotonic()
    outcome = runner.run(b"{}")
    assert time.monotonic() - started < 5
    assert outcome.kind == "fuel"
    assert outcome.to_result().output == "[ran out of fuel (limit 1000000)]"


def test_a_timed_out_call_leaves_nothing_that_interrupts_later_calls(
    needs_wasmtime: None, workspace: Path
) -> None:
    source = (FIXTURES / "spin.wat").read_bytes()
    quick = WasmToolManifest("quick", "d", "s.wat", limits=WasmLimits(timeout_s=0.05, fuel=10**12))
    # A fraction of a second of work, far within its timeout.
    slow = WasmToolManifest("slow", "d", "s.wat", limits=WasmLimits(timeout_s=30, fuel=10**8))
    (quick_runner, slow_runner), errors = compile_wasm_tools(
        [(quick, source), (slow, source)], workspace
    )
    assert errors == []
    for _ in range(5):
        assert quick_runner.run(b"").kind == "timeout"
        outcome = slow_runner.run(b"")
        # Fuel ends it, not an interrupt left over from the quick calls.
        assert outcome.kind == "fuel", outcome.status


def test_concurrent_calls_each_get_their_own_timeout(needs_wasmtime: None, workspace: Path) -> None:
    source = (FIXTURES / "spin.wat").read_bytes()
    short = WasmToolManifest("short", "d", "s.wat", limits=WasmLimits(timeout_s=0.2, fuel=10**12))
    long = WasmToolManifest("long", "d", "s.wat", limits=WasmLimits(timeout_s=1.0, fuel=10**12))
    runners, errors = compile_wasm_tools([(short, source), (long, source)], workspace)
    assert errors == []
    outcomes: dict[str, WasmOutcome] = {}

    def call(runner: WasmToolRunner) -> None:
        outcomes[runner.manifest.name] = runner.run(b"")

    threads = [threading.Thread(target=call, args=(runner,)) for runner in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes["short"].kind == outcomes["long"].kind == "timeout"
    assert 0.2 <= outcomes["short"].elapsed_s < 1.0
    assert outcomes["long"].elapsed_s >= 1.0


def test_a_short_sleep_completes_and_a_long_one_is_cut_by_the_timeout(build: Build) -> None:
    runner = build("sleep.wat", timeout_s=0.5)
    outcome = runner.run(b'{"ms": 30}')
    assert outcome.ok, outcome.status
    assert outcome.elapsed_s >= 0.03
    assert outcome.stdout == "events=1 userdata=42 error=0 type=0\n"
    # An hour-long sleep in the host, where the epoch cannot interrupt it.
    started = time.monotonic()
    outcome = runner.run(b'{"ms": 3600000}')
    assert outcome.kind == "timeout"
    assert 0.5 <= time.monotonic() - started < 5


def test_poll_oneoff_answers_ready_files_at_once_and_waits_for_absolute_clocks(
    build: Build,
) -> None:
    outcome = build("poll.wat", timeout_s=5).run(b"{}")
    assert outcome.ok, outcome.status
    fd_line, abs_line = _lines(outcome)
    # stdin is ready: the hour-long clock next to it does not hold the call up.
    assert fd_line == "fd: events=1 userdata=2 type=1"
    match = re.fullmatch(r"abs: events=1 userdata=3 type=0 waited_ms=(\d+)", abs_line)
    assert match, abs_line
    assert 30 <= int(match[1]) < 2000
    assert outcome.elapsed_s < 2


def test_memory_growth_beyond_the_limit_is_refused(build: Build) -> None:
    # The module asks for 16 MiB more: refused under a 1 MiB limit, it traps.
    refused = build("grow_memory.wat", memory_mb=1).run(b"")
    assert refused.kind == "trap"
    assert refused.status == "trapped: wasm `unreachable` instruction executed"
    assert refused.stderr == "memory.grow refused\n"
    result = refused.to_result()
    assert result.is_error
    assert "memory.grow refused" in result.output
    assert "[trapped: wasm `unreachable` instruction executed]" in result.output
    # The same module within a 64 MiB limit gets its memory.
    granted = build("grow_memory.wat", memory_mb=64).run(b"")
    assert granted.ok
    assert granted.stdout == "grew\n"


def test_a_module_whose_initial_memory_exceeds_the_limit_does_not_start(build: Build) -> None:
    runner = build(b'(module (memory 32) (func (export "_start")))', memory_mb=1)
    outcome = runner.run(b"")
    assert outcome.kind == "error"
    assert "exceeds memory limits" in outcome.status
    assert outcome.to_result().is_error


def test_output_beyond_the_limit_is_truncated(build: Build) -> None:
    # 4 MiB on stdout, 1 MiB on stderr, then exit status 1.
    outcome = build("flood.wat", max_output_bytes=1000).run(b"")
    assert (outcome.kind, outcome.exit_code) == ("exit", 1)
    dropped = 4 * 1024 * 1024 - 1000
    assert outcome.stdout == "x" * 1000 + f"\n…[truncated {dropped} bytes]…"
    stderr_dropped = 1024 * 1024 - wasm_module.MAX_STDERR_BYTES
    assert outcome.stderr == (
        f"…[{stderr_dropped} earlier bytes dropped]…\n" + "e" * wasm_module.MAX_STDERR_BYTES
    )
    result = outcome.to_result()
    assert result.is_error
    assert result.output.endswith("e\n[exit code 1]")


def test_a_missing_workspace_is_reported_not_raised(build: Build, workspace: Path) -> None:
    runner = build("escape.wat", access="read-only")
    workspace.rmdir()
    outcome = runner.run(b"")
    assert outcome.kind == "error"
    assert outcome.status.startswith("could not start: ")
    assert outcome.to_result().is_error


def test_a_trap_is_reported_with_its_message(build: Build) -> None:
    source = b'(module (memory 1) (func (export "_start") (drop (i32.load (i32.const 999999)))))'
    outcome = build(source).run(b"")
    assert outcome.kind == "trap"
    assert "out of bounds memory access" in outcome.status
    assert "\n" not in outcome.status


# ---------------------------------------------------------------- the workspace preopen


def _escape_attempts(outcome: WasmOutcome) -> dict[tuple[int, str], int]:
    attempts = {}
    for line in _lines(outcome):
        match = re.fullmatch(r"fd=(\d+) path=(\S+) errno=(\d+)", line)
        if match:
            attempts[(int(match[1]), match[2])] = int(match[3])
    return attempts


@pytest.mark.parametrize("access", ["read-only", "read-write"])
def test_nothing_outside_the_preopen_can_be_opened(
    build: Build, workspace: Path, outside: Path, access: WorkspaceAccess
) -> None:
    (workspace / "inside.txt").write_text("inside\n")
    # A symlink in the workspace that leads outside it.
    (workspace / "escape-link").symlink_to(outside, target_is_directory=True)
    outcome = build("escape.wat", access=access).run(b"")
    lines = _lines(outcome)
    # Control: the same call opens a file in the preopen, so a failure below is the sandbox.
    assert lines[0] == "control fd=3 path=inside.txt errno=0"
    attempts = _escape_attempts(outcome)
    escapes = {
        "../" * 16 + "etc/passwd",
        "../outside/secret.txt",
        "/etc/passwd",
        "escape-link/secret.txt",
    }
    assert {path for _, path in attempts} >= escapes
    for path in escapes:
        errno = attempts[(3, path)]
        # Refused by the sandbox, not merely missing: each of these exists on the host.
        assert errno not in (0, ERRNO_NOENT), (path, errno)
        # No further preopens exist.
        assert attempts[(4, path)] == attempts[(5, path)] == ERRNO_BADF
    assert lines[-1] == "escapes=0"
    assert (outcome.kind, outcome.exit_code) == ("exit", 1)


def test_without_a_preopen_nothing_can_be_opened(build: Build, workspace: Path) -> None:
    (workspace / "inside.txt").write_text("inside\n")
    outcome = build("escape.wat").run(b"")
    lines = _lines(outcome)
    assert lines[0] == f"control fd=3 path=inside.txt errno={ERRNO_BADF}"
    assert set(_escape_attempts(outcome).values()) == {ERRNO_BADF}
    assert lines[-1] == "escapes=0"
    assert outcome.exit_code == 1


def _prepare_workspace(workspace: Path) -> None:
    (workspace / "existing.txt").write_text("original\n")
    (workspace / "doomed.txt").write_text("delete me\n")


def test_a_read_only_workspace_cannot_be_changed(build: Build, workspace: Path) -> None:
    _prepare_workspace(workspace)
    outcome = build("write_workspace.wat", access="read-only").run(b"")
    assert (outcome.kind, outcome.exit_code) == ("exit", 1), outcome.stdout
    for line in _lines(outcome):
        assert not line.endswith(" errno=0"), line
    assert sorted(p.name for p in workspace.iterdir()) == ["doomed.txt", "existing.txt"]
    assert (workspace / "existing.txt").read_text() == "original\n"


def test_a_read_write_workspace_can_be_changed(build: Build, workspace: Path) -> None:
    _prepare_workspace(workspace)
    outcome = build("write_workspace.wat", access="read-write").run(b"")
    assert outcome.ok, outcome.stdout
    assert _lines(outcome) == [
        "create errno=0",
        "overwrite errno=0",
        "mkdir errno=0",
        "unlink errno=0",
    ]
    assert sorted(p.name for p in workspace.iterdir()) == [
        "existing.txt",
        "wasm-created.txt",
        "wasm-dir",
    ]
    assert (workspace / "wasm-created.txt").read_text() == "created by wasm\n"
    assert (workspace / "existing.txt").read_text() == "overwritten by wasm\n"
    assert (workspace / "wasm-dir").is_dir()


def test_a_call_for_another_workspace_is_refused(
    needs_wasmtime: None, workspace: Path, tmp_path: Path
) -> None:
    manifest = WasmToolManifest("writer", "d", "w.wat", workspace="read-write")
    tools, errors = build_wasm_tools(
        [(manifest, (FIXTURES / "write_workspace.wat").read_bytes())], workspace
    )
    assert errors == []
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    registry = ToolRegistry(
        ToolContext(workspace=elsewhere, env=tool_environment(os.environ, {})), tools
    )
    result = registry.call("writer", {})
    assert result.is_error
    assert "was set up for the workspace" in result.output
    assert list(workspace.iterdir()) == list(elsewhere.iterdir()) == []


# ---------------------------------------------------------------- modules that cannot be tools


def test_bad_modules_are_reported_and_left_out(needs_wasmtime: None, workspace: Path) -> None:
    def item(name: str, module: bytes) -> tuple[WasmToolManifest, bytes]:
        return WasmToolManifest(name, "d", f"{name}.wat"), module

    items = [
        item("broken", b"(module (func"),
        item("garbage", b"\xff\xfe not a module"),
        item("bad-binary", b"\0asm\x01\0\0\0 truncated"),
        item("no-start", b'(module (func (export "main")))'),
        item("start-memory", b'(module (memory (export "_start") 1))'),
        item("start-args", b'(module (func (export "_start") (param i32)))'),
        item("foreign-import", b'(module (import "env" "f" (func)) (func (export "_start")))'),
        item("good", (FIXTURES / "echo.wat").read_bytes()),
        item("good", (FIXTURES / "spin.wat").read_bytes()),
    ]
    tools, errors = build_wasm_tools(items, workspace)
    assert [tool.name for tool in tools] == ["good"]
    assert len(errors) == 8
    reasons = {}
    for error in errors:
        match = re.fullmatch(r"WASM tool '([^']+)' left out: (.*)", error)
        assert match, error
        reasons[match[1]] = match[2]
    assert reasons["broken"].startswith("its module does not compile: expected `)`")
    assert reasons["garbage"].startswith("its module does not compile")
    assert reasons["bad-binary"].startswith("its module does not compile")
    assert reasons["no-start"] == (
        "its module exports no _start function (the entry point of a WASI command)"
    )
    assert reasons["start-memory"] == reasons["no-start"]
    assert reasons["start-args"] == "its _start function must take no parameters and return nothing"
    assert "env::f" in reasons["foreign-import"]
    assert reasons["good"] == "its name is used twice"
    # The one that was kept works.
    result = ToolRegistry(ToolContext(workspace=workspace), tools).call("good", {"a": 1})
    assert result.output == '{"a": 1}\nargv=good environ=0\n'


def test_without_wasmtime_every_tool_is_reported(
    monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    monkeypatch.setattr(wasm_module, "_WASMTIME_MISSING", ImportError("No module named 'wasmtime'"))
    items = [
        (WasmToolManifest("one", "d", "one.wat"), b"(module)"),
        (WasmToolManifest("two", "d", "two.wasm"), b"\0asm"),
    ]
    tools, errors = build_wasm_tools(items, workspace)
    assert tools == []
    assert errors == [
        f"WASM tool {name!r} left out: this worker image lacks the wasmtime Python package "
        "(the 'worker' install extra)"
        for name in ("one", "two")
    ]
