#!/usr/bin/env bash
# Build the project's images without a container registry or PyPI access during the build.
#
# usage: build-images.sh [worker] [claude] [orchestrator] [test] [mini-swe-agent] [aider-chat]
#                        [--force]                                          (default: worker)
#   worker          ironclaw-worker:latest        Dockerfile.worker
#   claude          ironclaw-claude:latest        Dockerfile.claude (on top of the worker image)
#   orchestrator    ironclaw-orchestrator:latest  Dockerfile.orchestrator
#   test            ironclaw-test-agent:latest    tests/images/Dockerfile.test-agent
#   mini-swe-agent  ironclaw-agent-mini-swe-agent:latest  deploy/agents/Dockerfile.mini-swe-agent
#   aider-chat      ironclaw-agent-aider-chat:latest      deploy/agents/Dockerfile.aider-chat
#                   (optional, for agent mode; on top of the worker image; their wheels are
#                   built on the host from PyPI into build/wheels/agents/<name>)
#   --force         rebuild even when the image is up to date
#
# IRONCLAW_IMAGE_TAG (default latest) replaces the tag of every image: several checkouts that
# share one engine (a test run of each) then never run each other's images.
#
# An image is up to date when its label ironclaw.source-hash matches the sha256 over the files
# that go into it (the distributions it installs, .dockerignore and its Dockerfile) and its layers start with those of the current base image. Anything else
# triggers a rebuild, so callers (tests, make) can run this every time; an unchanged image
# costs a few `docker image inspect` calls. Base image: bootstrap-base-image.sh.
set -euo pipefail

usage() { sed -n '4,18s/^# \{0,1\}//p' "$0" >&2; }

SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPTS/../.." && pwd)
cd "$ROOT"

log() { printf 'build-images: %s\n' "$*" >&2; }

force=0
want_worker=0 want_claude=0 want_orchestrator=0 want_test=0
agents=()
for arg in "$@"; do
    case "$arg" in
        worker) want_worker=1 ;;
        claude) want_claude=1 ;;
        orchestrator) want_orchestrator=1 ;;
        test) want_test=1 ;;
        mini-swe-agent | aider-chat) agents+=("$arg") ;;
        --force) force=1 ;;
        -h | --help) usage; exit 0 ;;
        *) log "unknown argument: $arg"; usage; exit 2 ;;
    esac
done
want_agents=${#agents[@]}
if (( want_worker + want_claude + want_orchestrator + want_test + want_agents == 0 )); then
    want_worker=1
fi

# Parallel callers (several test sessions) would build the same tags twice: take turns.
exec 8>"${TMPDIR:-/tmp}/ironclaw-build-images.lock"
flock 8

# sha256 over the content and names of the given files and directories (caches excluded).
source_hash() {
    find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' -print0 \
        | LC_ALL=C sort -z \
        | xargs -0 sha256sum \
        | sha256sum \
        | cut -d' ' -f1
}

image_id() { docker image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

image_label() {
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

image_layers() {
    docker image inspect --format '{{range .RootFS.Layers}}{{.}} {{end}}' "$1" 2>/dev/null || true
}

# needs_build TAG HASH PARENT: 0 when the image is missing, stale, not built on the current
# PARENT image (its layers are not a prefix), or --force was given.
needs_build() {
    local tag=$1 hash=$2 parent=$3 layers parent_layers
    (( force )) && return 0
    layers=$(image_layers "$tag")
    [[ -z "$layers" ]] && return 0
    [[ "$(image_label "$tag" ironclaw.source-hash)" != "$hash" ]] && return 0
    parent_layers=$(image_layers "$parent")
    [[ -n "$parent_layers" && "$layers" == "$parent_layers"* ]] || return 0
    return 1
}

# build TAG DOCKERFILE HASH [docker build args...]
build() {
    local tag=$1 dockerfile=$2 hash=$3
    shift 3
    local old_id started
    old_id=$(image_id "$tag")
    started=$SECONDS
    log "building $tag from $dockerfile"
    docker build "$@" --label "ironclaw.source-hash=$hash" -f "$dockerfile" -t "$tag" . >&2
    log "built $tag in $((SECONDS - started)) s"
    # The replaced image is now untagged: drop it so rebuilds do not fill the disk. It stays
    # when a container or a child image still uses it. Same for the untagged images of the
    # multi-stage builds' first stage, which only served this build.
    if [[ -n "$old_id" && "$old_id" != "$(image_id "$tag")" ]]; then
        docker rmi "$old_id" >/dev/null 2>&1 || true
    fi
    docker image prune --force --filter "label=ironclaw.build-stage" >/dev/null 2>&1 || true
}

TAG=${IRONCLAW_IMAGE_TAG:-latest}
if [[ ! "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
    log "IRONCLAW_IMAGE_TAG=$TAG is not a valid image tag"
    exit 2
fi
WORKER=ironclaw-worker:$TAG CLAUDE=ironclaw-claude:$TAG
ORCHESTRATOR=ironclaw-orchestrator:$TAG TEST_AGENT=ironclaw-test-agent:$TAG

BASE=$("$SCRIPTS/bootstrap-base-image.sh" | tail -n 1)
log "base image: $BASE"

# What each image installs: job images the contract and the worker (the Claude image also the
# bridge), the service image the contract and the orchestrator.
JOB_SOURCES=(contract worker .dockerignore)
SERVICE_SOURCES=(contract orchestrator .dockerignore)

# Decide first, so wheels are built only when an image that installs them is rebuilt.
build_worker=0 build_orchestrator=0
if (( want_worker || want_claude || want_agents )); then
    worker_hash=$(source_hash "${JOB_SOURCES[@]}" Dockerfile.worker)
    needs_build $WORKER "$worker_hash" "$BASE" && build_worker=1
fi
if (( want_orchestrator )); then
    orchestrator_hash=$(source_hash "${SERVICE_SOURCES[@]}" Dockerfile.orchestrator)
    needs_build $ORCHESTRATOR "$orchestrator_hash" "$BASE" \
        && build_orchestrator=1
fi

if (( build_orchestrator )); then
    "$SCRIPTS/build-wheels.sh" --server build/wheels >/dev/null
elif (( build_worker )); then
    "$SCRIPTS/build-wheels.sh" build/wheels >/dev/null
fi

# The Claude Code and agent images are built FROM the worker image, so the worker comes first.
if (( want_worker || want_claude || want_agents )); then
    if (( build_worker )); then
        build $WORKER Dockerfile.worker "$worker_hash" \
            --build-arg "BASE_IMAGE=$BASE"
    else
        log "$WORKER is up to date"
    fi
fi

if (( want_claude )); then
    if [[ -f Dockerfile.claude ]]; then
        claude_hash=$(source_hash "${JOB_SOURCES[@]}" bridge Dockerfile.claude)
        if needs_build $CLAUDE "$claude_hash" $WORKER; then
            # The pinned claude-agent-sdk wheel (the CLI), downloaded once into build/wheels.
            "$SCRIPTS/build-wheels.sh" --claude build/wheels >/dev/null
            build $CLAUDE Dockerfile.claude "$claude_hash" \
                --build-arg "BASE_IMAGE=$BASE" --build-arg "WORKER_IMAGE=$WORKER"
        else
            log "$CLAUDE is up to date"
        fi
    else
        log "Claude Code image: not built by this script yet (no Dockerfile.claude)"
    fi
fi

if (( want_orchestrator )); then
    if (( build_orchestrator )); then
        build $ORCHESTRATOR Dockerfile.orchestrator "$orchestrator_hash" \
            --build-arg "BASE_IMAGE=$BASE"
    else
        log "$ORCHESTRATOR is up to date"
    fi
fi

if (( want_test )); then
    test_hash=$(source_hash tests/images/Dockerfile.test-agent tests/images/test_agent.py)
    if needs_build $TEST_AGENT "$test_hash" "$BASE"; then
        build $TEST_AGENT tests/images/Dockerfile.test-agent "$test_hash" \
            --build-arg "BASE_IMAGE=$BASE"
    else
        log "$TEST_AGENT is up to date"
    fi
fi

# An agent from PyPI on the worker image: deploy/agents/Dockerfile.<name> pins its version in
# an ARG <NAME>_VERSION line; its wheels are built on the host once per version.
for agent in "${agents[@]}"; do
    dockerfile=deploy/agents/Dockerfile.$agent
    image=ironclaw-agent-$agent:$TAG
    version_arg=$(printf '%s' "$agent" | tr 'a-z-' 'A-Z_')_VERSION
    version=$(sed -n "s/^ARG ${version_arg}=//p" "$dockerfile")
    wheels=build/wheels/agents/$agent
    wheel_name=$(printf '%s' "$agent" | tr '-' '_')
    # Its hash covers the Dockerfile (which pins the version); the wheels follow from it.
    agent_hash=$(source_hash "${JOB_SOURCES[@]}" "$dockerfile")
    if needs_build "$image" "$agent_hash" $WORKER; then
        if ! ls "$wheels/$wheel_name-$version"-*.whl >/dev/null 2>&1; then
            log "building the wheels of $agent $version into $wheels"
            mkdir -p "$wheels"
            "${PYTHON:-.venv/bin/python}" -m pip --disable-pip-version-check wheel --quiet \
                --prefer-binary -w "$wheels" "$agent==$version" >&2
        fi
        build "$image" "$dockerfile" "$agent_hash" \
            --build-arg "BASE_IMAGE=$BASE" --build-arg "WORKER_IMAGE=$WORKER"
    else
        log "$image is up to date"
    fi
done
