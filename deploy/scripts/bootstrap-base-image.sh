#!/usr/bin/env bash
# Make sure a Debian bookworm base image with python3 exists locally and print its name
# (last line of stdout). Every image in this project builds FROM it.
#
# Order of preference:
#   1. $BASE_IMAGE, if set and present locally;
#   2. python:3.11-slim-bookworm, if present locally (or pullable with IRONCLAW_TRY_PULL=1);
#   3. ironclaw/base:bookworm, if present locally;
#   4. otherwise build ironclaw/base:bookworm with mmdebstrap + `docker import`, which needs
#      only a Debian mirror, no container registry.
#
# Progress goes to stderr so callers can do BASE=$(bootstrap-base-image.sh).
# Safe to run concurrently: the build step is serialized with flock.
#
# Environment: BASE_IMAGE (preferred image), IRONCLAW_TRY_PULL=1 (try `docker pull` first,
# bounded by IRONCLAW_PULL_TIMEOUT seconds), IRONCLAW_LOCAL_BASE_IMAGE (name of the locally
# built image), IRONCLAW_BASE_LOCK (lock file).
set -euo pipefail

readonly UPSTREAM_IMAGE="python:3.11-slim-bookworm"
readonly LOCAL_IMAGE="${IRONCLAW_LOCAL_BASE_IMAGE:-ironclaw/base:bookworm}"
readonly SUITE="bookworm"
readonly LOCK_FILE="${IRONCLAW_BASE_LOCK:-${TMPDIR:-/tmp}/ironclaw-base-image.lock}"

log() { printf 'bootstrap-base-image: %s\n' "$*" >&2; }

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# Pick an already present image; prints its name and returns 0, or returns 1.
pick_existing() {
    if [[ -n "${BASE_IMAGE:-}" ]] && image_exists "$BASE_IMAGE"; then
        printf '%s\n' "$BASE_IMAGE"
        return 0
    fi
    local candidate
    for candidate in "$UPSTREAM_IMAGE" "$LOCAL_IMAGE"; do
        if image_exists "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

ensure_mmdebstrap() {
    command -v mmdebstrap >/dev/null 2>&1 && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "mmdebstrap is missing and we are not root: install it (apt-get install mmdebstrap)"
        return 1
    fi
    log "installing mmdebstrap"
    # apt output is noise for callers that capture stdout: send it to stderr.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 mmdebstrap >&2
}

build_local_base() {
    ensure_mmdebstrap
    local workdir tarball started
    workdir=$(mktemp -d "${TMPDIR:-/tmp}/ironclaw-base.XXXXXX")
    # The tarball is a few hundred MB: never leave it behind, even on failure.
    # shellcheck disable=SC2064  # expand $workdir now, the local is gone at EXIT time
    trap "rm -rf '$workdir'" EXIT
    tarball="$workdir/base.tar"
    started=$SECONDS
    log "building $LOCAL_IMAGE with mmdebstrap ($SUITE, minbase + python3)"
    # No mirror argument: mmdebstrap then uses deb.debian.org with the -updates and
    # -security suites, so the base carries current security fixes.
    mmdebstrap --quiet --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$tarball" >&2
    # Imported images carry no config: set what Dockerfiles and `docker run` expect.
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        --message "debian $SUITE minbase + python3 (mmdebstrap)" \
        "$tarball" "$LOCAL_IMAGE" >/dev/null
    rm -rf "$workdir"
    trap - EXIT
    log "built $LOCAL_IMAGE in $((SECONDS - started)) s"
}

main() {
    if ! command -v docker >/dev/null 2>&1; then
        log "docker CLI not found"
        exit 1
    fi
    if [[ -n "${BASE_IMAGE:-}" ]] && ! image_exists "$BASE_IMAGE"; then
        log "BASE_IMAGE=$BASE_IMAGE is not present locally; falling back"
    fi

    local picked
    if picked=$(pick_existing); then
        printf '%s\n' "$picked"
        return 0
    fi

    # Pulling hangs on machines without registry access, so it is opt-in.
    if [[ "${IRONCLAW_TRY_PULL:-0}" == "1" ]]; then
        log "pulling $UPSTREAM_IMAGE"
        if timeout "${IRONCLAW_PULL_TIMEOUT:-300}" docker pull -q "$UPSTREAM_IMAGE" >&2; then
            printf '%s\n' "$UPSTREAM_IMAGE"
            return 0
        fi
        log "pull failed; building a local base instead"
    fi

    # Serialize concurrent callers; whoever gets the lock second finds the image built.
    exec 9>"$LOCK_FILE"
    if ! flock -n 9; then
        log "another bootstrap is running; waiting for it"
        flock 9
    fi
    if ! image_exists "$LOCAL_IMAGE"; then
        build_local_base
    fi
    flock -u 9
    printf '%s\n' "$LOCAL_IMAGE"
}

main "$@"
