#!/usr/bin/env bash
# `make demo`: an orchestrator, a real worker job in a real container, to completion.
#
# Puts a small project with a failing test under <base>/projects/demo, asks a worker job to
# make the tests pass, follows it live, then shows the fix, the passing tests, that the
# container is gone and that the job's token is dead. The project's tests never run on the
# host: what the job left there is its code, so they run in a fresh container hardened like a
# job's (run-sandboxed.sh), removed by the demo's cleanup. Uses a real model when one is
# configured (ANTHROPIC_API_KEY, or OPENAI_API_KEY / LLM_BASE_URL); otherwise the scripted
# provider replays deploy/demo/fix-the-tests.yaml and the same real tools run in the container.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
IRONCLAW="$BIN/ironclaw"

export IRONCLAW_BASE_DIR=${IRONCLAW_BASE_DIR:-$ROOT/build/demo}
export ORCHESTRATOR_PORT=${ORCHESTRATOR_PORT:-50051}
export ORCHESTRATOR_HTTP_PORT=${ORCHESTRATOR_HTTP_PORT:-50052}
export IRONCLAW_ORCHESTRATOR=${IRONCLAW_ORCHESTRATOR:-127.0.0.1:$ORCHESTRATOR_PORT}
export LOG_FORMAT=${LOG_FORMAT:-console}
# The image build-images.sh just made for this checkout (IRONCLAW_IMAGE_TAG), for the job and
# for running the tests.
export WORKER_IMAGE=${WORKER_IMAGE:-ironclaw-worker:${IRONCLAW_IMAGE_TAG:-latest}}
PROJECT="$IRONCLAW_BASE_DIR/projects/demo"
LOG="$IRONCLAW_BASE_DIR/orchestrator.log"
# On the containers that run the project's tests (not ironclaw.instance: the orchestrator would
# take them for job containers without a job and remove them).
TESTS_LABEL="ironclaw.demo=$IRONCLAW_BASE_DIR"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# The project's tests, in a fresh hardened container over the project (mounted read-only).
project_tests() {
    deploy/scripts/run-sandboxed.sh --label "$TESTS_LABEL" "$PROJECT" python3 -m unittest "$@"
}

SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    # A test run interrupted with the demo (its `docker run --rm` client killed) leaves its
    # container behind.
    docker ps -aq --filter "label=$TESTS_LABEL" | xargs -r docker rm -f >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "Images (built only when missing or out of date)"
deploy/scripts/build-images.sh worker

if [[ -z "${LLM_PROVIDER:-}" ]]; then
    if [[ -n "${ANTHROPIC_API_KEY:-}" ]]; then
        export LLM_PROVIDER=anthropic
    elif [[ -n "${OPENAI_API_KEY:-}" || -n "${LLM_BASE_URL:-}" ]]; then
        export LLM_PROVIDER=openai
    else
        export LLM_PROVIDER=scripted
        export LLM_SCRIPT="$ROOT/deploy/demo/fix-the-tests.yaml"
    fi
fi
echo "LLM provider: $LLM_PROVIDER${LLM_SCRIPT:+ (replays $LLM_SCRIPT)}"

step "A small project with a failing test: $PROJECT"
rm -rf "$PROJECT"
mkdir -p "$IRONCLAW_BASE_DIR/projects"
cp -r deploy/demo/project "$PROJECT"
# The job runs as uid 1000 without DAC_OVERRIDE: the project must be its own.
if [[ $(id -u) -eq 0 ]]; then chown -R 1000:1000 "$PROJECT"; else chmod -R a+rwX "$PROJECT"; fi
(project_tests 2>&1 | tail -n 1) || true

step "Starting the orchestrator (log: $LOG)"
"$IRONCLAW" serve >"$LOG" 2>&1 &
SERVER_PID=$!
"$PY" - <<'PY'
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target = os.environ["IRONCLAW_ORCHESTRATOR"]
deadline = time.monotonic() + 30
while True:
    try:
        with grpc.insecure_channel(target) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                print(f"orchestrator is serving on {target}")
                break
    except grpc.RpcError:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"orchestrator did not become healthy; see {os.environ['IRONCLAW_BASE_DIR']}/orchestrator.log")
    time.sleep(0.2)
PY

step "Creating a worker job"
JOB_JSON=$("$IRONCLAW" job create --project "$PROJECT" --json \
    "The unit tests in this project fail (run: python3 -m unittest -v). Find the bug, fix it, and make all tests pass.")
JOB_ID=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["job_id"])' "$JOB_JSON")
echo "job $JOB_ID"
# An operator with engine access can read the token from the container; we keep it only to
# show below that it dies with the job.
TOKEN=$(docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' \
    "ironclaw-worker-$JOB_ID" 2>/dev/null | sed -n 's/^IRONCLAW_WORKER_TOKEN=//p' || true)

step "Live progress (ironclaw job watch)"
"$IRONCLAW" job watch --from-start "$JOB_ID" || true

step "The fix"
diff -u deploy/demo/project/calc.py "$PROJECT/calc.py" || true

step "The tests, run in a fresh container ($WORKER_IMAGE: uid 1000, no network, no capabilities, read-only)"
project_tests -v

step "The container is gone"
for _ in $(seq 1 100); do
    [[ -z $(docker ps -aq --filter "label=ironclaw.job_id=$JOB_ID") ]] && break
    sleep 0.2
done
remaining=$(docker ps -aq --filter "label=ironclaw.job_id=$JOB_ID")
if [[ -n "$remaining" ]]; then echo "container still present: $remaining"; exit 1; fi
echo "no container labelled ironclaw.job_id=$JOB_ID"

step "The job's token is dead"
if [[ -n "$TOKEN" ]]; then
    HTTP_HOST=$(sed -n 's/.*worker_api=\([0-9.]*\):.*/\1/p' "$LOG" | head -n 1)
    TOKEN="$TOKEN" "$PY" - "$HTTP_HOST" "$ORCHESTRATOR_HTTP_PORT" "$JOB_ID" <<'PY'
import os, sys, urllib.error, urllib.request
host, port, job_id = sys.argv[1:4]
request = urllib.request.Request(f"http://{host}:{port}/worker/{job_id}/job")
request.add_header("Authorization", "Bearer " + os.environ["TOKEN"])
try:
    urllib.request.urlopen(request, timeout=5)
    sys.exit("the token still works")
except urllib.error.HTTPError as exc:
    print(f"GET /worker/{job_id}/job with the job's token -> {exc.code} {exc.read().decode()}")
    sys.exit(0 if exc.code == 401 else 1)
PY
else
    echo "(the job ended before its token could be read from the container)"
fi

step "Stopping the orchestrator"
cleanup
trap - EXIT
echo "done"
