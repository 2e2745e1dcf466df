"""The committed protobuf code must match protos/: regenerate with `make protos`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ["jobs_pb2.py", "jobs_pb2.pyi", "jobs_pb2_grpc.py", "jobs_pb2_grpc.pyi"]


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts/gen_protos.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": str(Path(sys.executable).parent) + ":/usr/bin"},
    )
    for name in GENERATED:
        fresh = (tmp_path / "ironclaw_client/api/v1" / name).read_text()
        committed = (ROOT / "client/src/ironclaw_client/api/v1" / name).read_text()
        assert fresh == committed, f"ironclaw_client/api/v1/{name} is stale: run `make protos`"
