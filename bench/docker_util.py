"""Docker chores of the benchmarks: images built as the tests build them, containers removed
by label whatever happened."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any

from bench.procs import LOG_DIR, ROOT, BenchError

BUILD_TIMEOUT_S = 1800


def docker_client() -> Any:
    import docker

    client = docker.from_env(timeout=60)
    try:
        client.ping()
    except Exception as exc:
        raise BenchError(f"no Docker engine reachable: {exc}") from exc
    return client


def build_images(*targets: str) -> None:
    """``deploy/scripts/build-images.sh TARGET...``: a no-op when the images are up to date."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"build-images-{'-'.join(targets)}.log"
    with log.open("w", encoding="utf-8") as out:
        result = subprocess.run(
            [str(ROOT / "deploy/scripts/build-images.sh"), *targets],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise BenchError(f"building {' '.join(targets)} failed (see {log}):\n{tail}")


def remove_containers(*instances: str) -> int:
    """Removes every container labelled ``ironclaw.instance=<one of instances>``."""
    removed = 0
    with contextlib.suppress(BenchError):
        client = docker_client()
        try:
            for instance in instances:
                for container in client.containers.list(
                    all=True, filters={"label": f"ironclaw.instance={instance}"}
                ):
                    with contextlib.suppress(Exception):
                        container.remove(force=True)
                        removed += 1
        finally:
            client.close()
    return removed
