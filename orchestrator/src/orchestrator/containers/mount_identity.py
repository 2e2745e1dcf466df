"""Reading which directory is mounted inside a running container, without trusting a path.

From the host, ``/proc/<pid>/root/<path>`` reaches into the container's own mount namespace.
The ``/proc/<pid>`` directory is opened once and everything is read relative to it: such a
descriptor stays bound to that one process, so a pid reused by another process meanwhile makes
the reads fail instead of answering for a stranger. Its cgroup must name the container, which
also tells a pid of another pid namespace (an orchestrator running in a container) from the
container's. The last component is not followed: an absolute symlink inside the container
would otherwise be resolved against the host's root.
"""

from __future__ import annotations

import contextlib
import os

from orchestrator.containers.backend import DirectoryIdentity

STAT_COMMAND = ("stat", "-c", "%d %i")  # coreutils and busybox: device and inode, in decimal


def identity_through_proc(
    pid: int, container_id: str, container_path: str
) -> DirectoryIdentity | None:
    """The identity of ``container_path`` in the container whose init process is ``pid``;
    None when this process cannot see it so (another pid namespace, no permission to look into
    the process, a runtime whose process is not the container's, or the process is gone)."""
    if pid <= 0 or not container_id or not container_path.startswith("/"):
        return None
    try:
        proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if container_id not in _read(proc, "cgroup"):
            return None
        st = os.stat("root" + container_path, dir_fd=proc, follow_symlinks=False)
    except OSError:
        return None
    finally:
        with contextlib.suppress(OSError):
            os.close(proc)
    return DirectoryIdentity(device=st.st_dev, inode=st.st_ino)


def _read(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.read(fd, 65536).decode("utf-8", "replace")
    finally:
        os.close(fd)


def parse_stat_output(output: str) -> DirectoryIdentity | None:
    """``stat -c '%d %i'`` output as an identity; None if it is not exactly that."""
    fields = output.split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields):
        return None
    return DirectoryIdentity(device=int(fields[0]), inode=int(fields[1]))
