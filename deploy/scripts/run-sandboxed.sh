#!/usr/bin/env bash
# Run a command over a project in a fresh container hardened like a job's, never on the host.
#
# usage: run-sandboxed.sh [--image IMAGE] [--label KEY=VALUE]... PROJECT_DIR COMMAND [ARG...]
#   --image   default: $WORKER_IMAGE, else ironclaw-worker:${IRONCLAW_IMAGE_TAG:-latest}
#   --label   added to the container (repeatable), so a caller can remove it by label
#
# What a job's code left in a project (its tests, its build) is the job's code: running it on
# the host, as whoever started the command, would run it outside any sandbox. This runs COMMAND
# in /workspace of a new container from the worker image with the job's hardening: user 1000,
# every capability dropped (not even a job's CHOWN), no-new-privileges, no network at all, the
# memory (no swap), CPU shares and pids limits and OCI runtime of WORKER_MEMORY_MB,
# WORKER_CPU_SHARES, WORKER_PIDS_LIMIT and WORKER_RUNTIME (the orchestrator's defaults), a
# read-only root filesystem with a private tmpfs /tmp, and the project mounted read-only. HOME
# is /tmp and PYTHONDONTWRITEBYTECODE=1, so caches land nowhere; pytest also wants
# `-p no:cacheprovider`. The container is removed when COMMAND ends; its exit code is this
# script's.
set -euo pipefail

usage() { sed -n '4,6s/^# \{0,1\}//p' "$0" >&2; }

image="${WORKER_IMAGE:-ironclaw-worker:${IRONCLAW_IMAGE_TAG:-latest}}"
labels=(--label ironclaw.sandboxed-run=1)
while (($#)); do
    case "$1" in
        --image) image=${2:?--image needs a value}; shift 2 ;;
        --label) labels+=(--label "${2:?--label needs KEY=VALUE}"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        -*) printf 'run-sandboxed: unknown option %s\n' "$1" >&2; usage; exit 2 ;;
        *) break ;;
    esac
done
if (($# < 2)); then
    usage
    exit 2
fi
project=$(cd "$1" && pwd -P)
shift

runtime=()
[[ -n "${WORKER_RUNTIME:-}" ]] && runtime=(--runtime "$WORKER_RUNTIME")
memory="${WORKER_MEMORY_MB:-2048}m"

exec docker run --rm "${labels[@]}" "${runtime[@]}" \
    --network none \
    --user 1000:1000 \
    --cap-drop ALL \
    --security-opt no-new-privileges:true \
    --read-only \
    --tmpfs /tmp:rw,nosuid,nodev,size=512m \
    --memory "$memory" --memory-swap "$memory" \
    --cpu-shares "${WORKER_CPU_SHARES:-1024}" \
    --pids-limit "${WORKER_PIDS_LIMIT:-1024}" \
    --volume "$project:/workspace:ro" \
    --workdir /workspace \
    --env HOME=/tmp \
    --env PYTHONDONTWRITEBYTECODE=1 \
    --entrypoint "$1" \
    "$image" "${@:2}"
