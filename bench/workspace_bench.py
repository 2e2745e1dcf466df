"""Workspace transfers: what the checked, descriptor-relative unpacking of an upload and the
never-following packing of a download cost next to tarfile's own ``extractall`` and ``add`` of
the same tree, measured in the same run (ratios; absolute MiB/s move with the machine).

    .venv/bin/python -m bench.workspace_bench [--mib 64] [--files 2000] [--samples 3]

The upload side runs ``WorkspaceUploads.receive`` (the pipe, the thread, the size count, the
rules, the ownership) on an archive held in memory, so the network is not in the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from orchestrator.workspaces.pack import pack_tree
from orchestrator.workspaces.uploads import UploadLimits, WorkspaceUploads

CHUNK = 1024 * 1024


def make_tree(root: Path, mib: int, files: int) -> None:
    """``files`` files in nested directories, ``mib`` MiB in all, half of it compressible."""
    size = mib * 1024 * 1024 // files
    for index in range(files):
        directory = root / f"pkg{index % 20}" / f"mod{index % 7}"
        directory.mkdir(parents=True, exist_ok=True)
        half = os.urandom(size // 2)
        (directory / f"file{index}.py").write_bytes(half + b"x = 1\n" * (size // 12))


def archive_of(root: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
        tar.add(root, arcname=".")
    return out.getvalue()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


async def run(mib: int, files: int, samples: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="ironclaw-workspace-bench-"))
    try:
        tree = work / "tree"
        make_tree(tree, mib, files)
        data = archive_of(tree)
        executor = ThreadPoolExecutor(max_workers=4)
        uploads = WorkspaceUploads(
            work / "projects",
            work / "state",
            UploadLimits(
                max_bytes=4 * mib * 1024 * 1024,
                at_once=2,
                timeout_s=600,
                retain_s=0,
                unused_retain_s=0,
            ),
            executor,
        )
        uploads.prepare()
        unpack, extract, pack, add = [], [], [], []
        for sample in range(samples):
            start = time.perf_counter()
            uploaded = await uploads.receive(_chunks(data))
            unpack.append(time.perf_counter() - start)
            target = work / f"extract-{sample}"
            target.mkdir()

            def baseline_extract(target: Path = target) -> None:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                    tar.extractall(target, filter="data")

            extract.append(_timed(baseline_extract))

            def ours(project: Path = uploaded.project_dir) -> None:
                pack_tree(str(project), lambda chunk: None)

            def baseline_add(project: Path = uploaded.project_dir) -> None:
                with tarfile.open(fileobj=_Null(), mode="w|gz") as tar:  # type: ignore[call-overload]
                    tar.add(project, arcname=".")

            pack.append(_timed(ours))
            add.append(_timed(baseline_add))
            shutil.rmtree(uploaded.project_dir)
            shutil.rmtree(target)
        executor.shutdown()
        result = {
            "archive_mib": round(len(data) / 2**20, 1),
            "tree_mib": mib,
            "files": files,
            "upload_unpack_s": statistics.median(unpack),
            "tarfile_extractall_s": statistics.median(extract),
            "download_pack_s": statistics.median(pack),
            "tarfile_add_s": statistics.median(add),
        }
        result["unpack_ratio"] = result["upload_unpack_s"] / result["tarfile_extractall_s"]
        result["pack_ratio"] = result["download_pack_s"] / result["tarfile_add_s"]
        result["unpack_mib_s"] = mib / result["upload_unpack_s"]
        result["pack_mib_s"] = mib / result["download_pack_s"]
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(run(args.mib, args.files, args.samples))
    print("| step | ours (s) | tarfile (s) | ratio | ours MiB/s |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| upload: unpack {result['tree_mib']} MiB, {result['files']} files | "
        f"{result['upload_unpack_s']:.2f} | {result['tarfile_extractall_s']:.2f} | "
        f"{result['unpack_ratio']:.2f} | {result['unpack_mib_s']:.0f} |"
    )
    print(
        f"| download: pack as .tar.gz | {result['download_pack_s']:.2f} | "
        f"{result['tarfile_add_s']:.2f} | {result['pack_ratio']:.2f} | "
        f"{result['pack_mib_s']:.0f} |"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
