#!/usr/bin/env python3
"""A tiny third-party-style coding agent for the orchestrator's agent-mode tests (image
ironclaw-test-agents: the worker image with this file as ``tiny-agent``). Standard library only.

Like the real CLI agents it stands in for, it knows nothing of the orchestrator: it reads its key
and base URL from ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``, sends the task to the Anthropic
Messages API with ``"stream": true`` and reads the server-sent events, then does what the answer
says, one instruction a line:

    WRITE <path> <text>   write <text> and a newline to <path> (relative to the working dir)
    SAY <text>            print <text>
    ENV <path>            write its environment to <path> as JSON (what a tool it ran could read)
    EXIT <code>           stop with that exit code
    COMPLETE <message>    report the job's result itself (POST .../complete with its key), then
                          wait to be stopped, as an agent that knows the orchestrator may

A provider error (an HTTP error or a stream's error event) is printed as the provider sent it,
and the agent exits 1.

usage: tiny-agent --model MODEL TASK
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request


def stream_answer(model, task):
    body = {
        "model": model,
        "max_tokens": 512,
        "stream": True,
        "messages": [{"role": "user", "content": task}],
    }
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"].rstrip("/") + "/v1/messages",
        data=json.dumps(body).encode(),
        method="POST",
    )
    request.add_header("x-api-key", os.environ["ANTHROPIC_API_KEY"])
    request.add_header("anthropic-version", "2023-06-01")
    request.add_header("content-type", "application/json")
    text = []
    with urllib.request.urlopen(request, timeout=60) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:") :])
            if event.get("type") == "error":  # as the SDKs do: a stream's error event raises
                raise StreamError(json.dumps(event))
            delta = event.get("delta") or {}
            if event.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
                text.append(delta["text"])
    return "".join(text)


class StreamError(Exception):
    pass


def report(message):
    job = os.environ["ANTHROPIC_BASE_URL"].rstrip("/").rsplit("/", 1)[0]  # .../worker/<id>
    request = urllib.request.Request(
        job + "/complete",
        data=json.dumps({"success": True, "message": message}).encode(),
        method="POST",
    )
    request.add_header("Authorization", "Bearer " + os.environ["ANTHROPIC_API_KEY"])
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def main(argv):
    if len(argv) != 3 or argv[0] != "--model":
        print(__doc__.rsplit("usage: ", 1)[1].strip(), file=sys.stderr)
        return 2
    model, task = argv[1], argv[2]
    print(f"tiny-agent: working on {task!r} with {model}", flush=True)
    try:
        answer = stream_answer(model, task)
    except urllib.error.HTTPError as exc:
        print(f"tiny-agent: provider error {exc.code}: {exc.read().decode()}", flush=True)
        return 1
    except StreamError as exc:
        print(f"tiny-agent: provider error in the stream: {exc}", flush=True)
        return 1
    for line in answer.splitlines():
        verb, _, rest = line.partition(" ")
        if verb == "WRITE":
            path, _, content = rest.partition(" ")
            with open(path, "w") as handle:
                handle.write(content + "\n")
            print(f"tiny-agent: wrote {path}", flush=True)
        elif verb == "ENV":
            with open(rest, "w") as handle:
                json.dump(dict(os.environ), handle)
        elif verb == "SAY":
            print(rest, flush=True)
        elif verb == "EXIT":
            return int(rest)
        elif verb == "COMPLETE":
            report(rest)
            print("tiny-agent: reported; waiting to be stopped", flush=True)
            time.sleep(300)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
