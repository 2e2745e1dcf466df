#!/usr/bin/env python3
"""A tiny stand-in agent for the orchestrator's own tests (image ironclaw-test-agent).

It makes the real worker-API calls a job container makes, then does what its task says:
  sleep            report status, then wait to be stopped
  exit N           exit with code N without reporting a result
  oom              allocate memory until the kernel kills it
  complete OK|FAIL [message]   report a result through /complete, then exit 0
  env              report the names of its environment variables as an event, then sleep
  python CODE      run CODE (the rest of the task) with `call` at hand, then sleep
Like the worker, it retries a 503 (a job still starting) after its Retry-After.
Standard library only.
"""

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request


def call(method, path, body=None):
    url = os.environ["IRONCLAW_ORCHESTRATOR_URL"] + f"/worker/{os.environ['IRONCLAW_JOB_ID']}{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", "Bearer " + os.environ["IRONCLAW_WORKER_TOKEN"])
    if data is not None:
        request.add_header("Content-Type", "application/json")
    give_up = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > give_up:
                raise
            time.sleep(float(exc.headers.get("Retry-After") or 1))


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Started without arguments, in either mode: the job comes from GET /job.
    job = call("GET", "/job")
    words = job["task_description"].split()
    action = words[0] if words else "sleep"
    print(f"test agent: {action}", flush=True)
    if action == "exit":
        return int(words[1])
    if action == "oom":
        hog = []
        while True:
            hog.append(bytearray(16 * 1024 * 1024))
            for page in range(0, len(hog[-1]), 4096):
                hog[-1][page] = 1
    if action == "complete":
        success = words[1] == "OK"
        call("POST", "/complete", {"success": success, "message": " ".join(words[2:])})
        return 0
    if action == "python":
        code = job["task_description"].split(None, 1)[1]
        exec(compile(code, "<task>", "exec"), {"__name__": "__task__", "call": call})
        while True:
            time.sleep(3600)
    if action == "env":
        call(
            "POST",
            "/event",
            {"event_type": "status", "data": {"message": ",".join(sorted(os.environ))}},
        )
    call("POST", "/status", {"message": "test agent sleeping", "iteration": 1})
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
