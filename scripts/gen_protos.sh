#!/usr/bin/env bash
# Regenerates the Python code for protos/ into the client distribution's src/ tree: the one
# copy of the stubs, which the orchestrator imports too. The proto path mirrors the module path,
# so the generated imports work unchanged. Output is committed; a test fails when it is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=${1:-client/src}
"$python" -m grpc_tools.protoc -Iprotos \
  --python_out="$out" --mypy_out="$out" \
  --grpc_python_out="$out" --mypy_grpc_out="$out" \
  protos/ironclaw_client/api/v1/jobs.proto
