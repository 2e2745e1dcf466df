#!/usr/bin/env bash
# Build Python wheels on the host, for images that cannot reach PyPI while building.
#
# usage: build-wheels.sh [--server] [--claude] [OUT_DIR]   (OUT_DIR defaults to build/wheels)
#   always:    the wheels of the repository's five distributions (contract, client, worker,
#              bridge, orchestrator) and every wheel ironclaw-worker[custom-tools] needs (the mcp SDK
#              and wasmtime), for the job images
#   --server:  also every wheel ironclaw-orchestrator[kubernetes] (and ironclaw-client) needs,
#              for the orchestrator image (which can run jobs on Kubernetes too)
#   --claude:  also the claude-agent-sdk wheel pinned in Dockerfile.claude (it bundles the
#              Claude Code CLI binary), downloaded unless already there
#
# Images install them with `pip install --no-index --find-links`. The wheels match the host's
# Python (3.11, glibc): the images are Debian bookworm with Python 3.11 as well.
set -euo pipefail

usage() { sed -n '4,11s/^# \{0,1\}//p' "$0" >&2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

server=0
claude=0
out=""
for arg in "$@"; do
    case "$arg" in
        --server) server=1 ;;
        --claude) claude=1 ;;
        -h | --help) usage; exit 0 ;;
        -*) printf 'build-wheels: unknown option %s\n' "$arg" >&2; usage; exit 2 ;;
        *) out="$arg" ;;
    esac
done
out="${out:-build/wheels}"
mkdir -p "$out"
out=$(cd "$out" && pwd)

PYTHON="${PYTHON:-.venv/bin/python}"
pip=("$PYTHON" -m pip --disable-pip-version-check)

pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ "$pyver" != "3.11" ]]; then
    printf 'build-wheels: warning: %s is Python %s; the images run 3.11, binary wheels may not fit\n' \
        "$PYTHON" "$pyver" >&2
fi

# Concurrent runs would delete each other's project wheels: serialize on the output dir.
exec 9>"$out/.lock"
flock 9

DISTS=(contract client worker bridge orchestrator)
# The version numbers do not change between edits: drop old project wheels so pip can only
# find the ones built from the current source.
rm -f "$out"/ironclaw_contract-*.whl "$out"/ironclaw_client-*.whl "$out"/ironclaw_worker-*.whl \
    "$out"/ironclaw_claude_bridge-*.whl "$out"/ironclaw_orchestrator-*.whl

# Build from a clean copy of each source: an in-tree build reuses build/lib, where modules that
# were deleted from the source would survive into the wheel, and concurrent builds collide.
src=$(mktemp -d "${TMPDIR:-/tmp}/ironclaw-src.XXXXXX")
trap 'rm -rf "$src"' EXIT
tar -C "$ROOT" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
    --exclude='build' -cf - "${DISTS[@]}" | tar -C "$src" -xf -

# The venv's own setuptools builds the wheels when it can (no download, works offline);
# otherwise pip fetches the build backend declared in each pyproject.toml.
isolation=()
if "$PYTHON" -c 'import setuptools, wheel, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' \
    2>/dev/null; then
    isolation=(--no-build-isolation)
fi
printf 'build-wheels: project wheels -> %s\n' "$out" >&2
for dist in "${DISTS[@]}"; do
    "${pip[@]}" wheel --quiet --no-deps "${isolation[@]}" --wheel-dir "$out" "$src/$dist" >&2
done
wheel_of() { ls "$out"/"$1"-*.whl; }

# What the job images install, and (with --server) what the orchestrator image installs: the
# third-party requirements of the project wheels, read from their metadata. The projects
# themselves never come from an index, so no package of the same name can stand in for them.
wheels=("$(wheel_of ironclaw_contract)" "$(wheel_of ironclaw_worker)" "$(wheel_of ironclaw_claude_bridge)")
[[ $server -eq 1 ]] && wheels+=("$(wheel_of ironclaw_client)" "$(wheel_of ironclaw_orchestrator)")
requirements="$src/requirements.txt"
"$PYTHON" - "$requirements" "$server" "${wheels[@]}" <<'PY'
import re, sys, zipfile
out, server, *wheels = sys.argv[1:]
# The job images' custom tools; the service image's Kubernetes client (CONTAINER_BACKEND).
wanted_extras = {"custom-tools"} | ({"kubernetes"} if server == "1" else set())
lines = []
for path in wheels:
    with zipfile.ZipFile(path) as wheel:
        meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        for line in wheel.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            requirement, _, marker = line.split(":", 1)[1].strip().partition(";")
            extra = re.search(r"extra\s*==\s*[\"']([^\"']+)", marker)
            if extra and extra.group(1) not in wanted_extras:
                continue
            if re.match(r"ironclaw[-_]", requirement.strip(), re.I):
                continue
            # A marker of the environment stays (pip skips what this platform does not need);
            # one naming an extra was answered above.
            if marker.strip() and not extra:
                lines.append(f"{requirement.strip()}; {marker.strip()}")
            else:
                lines.append(requirement.strip())
open(out, "w").write("\n".join(sorted(set(lines))) + "\n")
PY
printf 'build-wheels: dependency wheels -> %s\n' "$out" >&2
# Offline first: wheels from an earlier run usually satisfy everything.
if ! "${pip[@]}" wheel --quiet --no-index --find-links "$out" --wheel-dir "$out" \
    -r "$requirements" >/dev/null 2>&1; then
    "${pip[@]}" wheel --quiet --find-links "$out" --wheel-dir "$out" -r "$requirements" >&2
fi

if [[ $claude -eq 1 ]]; then
    version=$(sed -n 's/^ARG CLAUDE_AGENT_SDK_VERSION=//p' "$ROOT/Dockerfile.claude")
    if [[ -z "$version" ]]; then
        printf 'build-wheels: no ARG CLAUDE_AGENT_SDK_VERSION in Dockerfile.claude\n' >&2
        exit 1
    fi
    # A platform wheel (about 165 MB): the one for this machine, which is the images' too.
    if compgen -G "$out/claude_agent_sdk-$version-*$(uname -m).whl" >/dev/null; then
        printf 'build-wheels: claude-agent-sdk %s already in %s\n' "$version" "$out" >&2
    else
        printf 'build-wheels: claude-agent-sdk %s -> %s\n' "$version" "$out" >&2
        "${pip[@]}" download --quiet --no-deps --only-binary=:all: --dest "$out" \
            "claude-agent-sdk==$version" >&2
    fi
fi

printf '%s\n' "$out"
