#!/usr/bin/env python3
"""A stand-in for the Claude Code CLI (``claude -p --output-format stream-json ...``) for the
orchestrator's container tests (image ironclaw-test-claude: the Claude Code image with this
file as its ``claude``). Standard library only.

It does what the real CLI does, as far as the bridge and the orchestrator can tell: reads the
prompt from ``-p PROMPT`` or stdin, calls the Anthropic Messages API at ``$ANTHROPIC_BASE_URL`` with
``$ANTHROPIC_API_KEY`` (aliases mapped by ``$ANTHROPIC_DEFAULT_<ALIAS>_MODEL``), runs each
``Bash`` tool call with ``bash -c`` in its own environment (as the real CLI's Bash tool does:
whatever the agent runs can read that environment), prints stream-json lines (``system/init``,
``assistant``, ``user`` tool results, one ``result``) and exits 0, or 1 after an API error, whose
result says only "API Error: <status>".
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

BASH_TOOL = {
    "name": "Bash",
    "description": "Run a shell command",
    "input_schema": {
        "type": "object",
        "properties": {"command": {"type": "string"}},
        "required": ["command"],
    },
}


def emit(line):
    print(json.dumps(line), flush=True)


def option(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def model_id(name):
    return os.environ.get(f"ANTHROPIC_DEFAULT_{name.upper()}_MODEL", name)


def call_model(model, messages):
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"].rstrip("/") + "/v1/messages",
        data=json.dumps(
            {"model": model, "max_tokens": 1024, "messages": messages, "tools": [BASH_TOOL]}
        ).encode(),
        method="POST",
    )
    request.add_header("x-api-key", os.environ["ANTHROPIC_API_KEY"])
    request.add_header("anthropic-version", "2023-06-01")
    request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code, None


def main():
    argv = sys.argv[1:]
    session = option(argv, "--resume") or str(uuid.uuid4())
    max_turns = int(option(argv, "--max-turns", "10"))
    model = model_id(option(argv, "--model", "sonnet"))
    # `claude -p PROMPT` as a plain CLI is called; `claude -p` (a flag) reads it from stdin, as
    # the bridge calls it.
    given = option(argv, "-p")
    prompt = given if given is not None and not given.startswith("-") else sys.stdin.read()
    started = time.monotonic()
    emit(
        {
            "type": "system",
            "subtype": "init",
            "session_id": session,
            "cwd": os.getcwd(),
            "model": model,
            "tools": option(argv, "--tools", "").split(","),
        }
    )
    messages = [{"role": "user", "content": prompt}]
    usage = {"input_tokens": 0, "output_tokens": 0}
    turns = 0

    def result(is_error, text, **extra):
        emit(
            {
                "type": "result",
                "subtype": extra.pop("subtype", "success"),
                "is_error": is_error,
                "result": text,
                "session_id": session,
                "num_turns": turns,
                "duration_ms": int((time.monotonic() - started) * 1000) + 1,
                "total_cost_usd": 0.001 * turns,
                "usage": usage,
                **extra,
            }
        )

    while True:
        if turns >= max_turns:
            result(True, "", subtype="error_max_turns")
            return 1
        turns += 1
        status, answer = call_model(model, messages)
        if answer is None:
            result(True, f"API Error: {status}", api_error_status=status)
            return 1
        for key in usage:
            usage[key] += answer.get("usage", {}).get(key, 0)
        content = answer["content"]
        emit({"type": "assistant", "message": {"content": content}, "session_id": session})
        calls = [block for block in content if block["type"] == "tool_use"]
        if not calls:
            text = "".join(block.get("text", "") for block in content if block["type"] == "text")
            result(False, text)
            return 0
        messages.append({"role": "assistant", "content": content})
        results = []
        for block in calls:
            ran = subprocess.run(
                ["bash", "-c", block["input"]["command"]],
                capture_output=True,
                text=True,
                timeout=120,
            )
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": block["id"],
                    "content": ran.stdout + ran.stderr,
                    "is_error": ran.returncode != 0,
                }
            )
        emit({"type": "user", "message": {"content": results}, "session_id": session})
        messages.append({"role": "user", "content": results})


if __name__ == "__main__":
    sys.exit(main())
