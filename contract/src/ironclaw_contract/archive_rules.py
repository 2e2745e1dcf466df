"""What a workspace archive may contain: pure checks of its entries' headers, before a byte of
an entry is written anywhere. Both sides apply them: the orchestrator to an uploaded archive, a
job container to the workspace it fetches (a backend without shared host paths), and, in their
looser form for results (:func:`check_result_entry`), the orchestrator to what a job pushes back.

A workspace is a tree of plain files and directories. Everything else an archive can carry is
refused with the entry's name, not skipped: a caller whose tree is silently changed would
build or ship something else than they uploaded. Links are refused outright rather than
checked for where they point, because a link that is harmless at extraction can be retargeted
by the job later, and the orchestrator itself walks the tree again (downloads, cleanup).
"""

from __future__ import annotations

import stat
import tarfile
from dataclasses import dataclass, field

# Entries past this many are refused: each costs memory here (the duplicate check) whatever
# its size, and a tree that large is no project.
MAX_ENTRIES = 200_000
_SHOWN_NAME_CHARS = 200
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)


class ArchiveRefused(ValueError):
    """An entry of an archive that a workspace may not contain; the message names it and the
    rule. (The orchestrator answers it as INVALID_ARGUMENT.)"""


@dataclass(frozen=True)
class PlannedEntry:
    """An entry that passed the checks: where it goes (path components below the workspace's
    root), what it is, and with which permission bits."""

    parts: tuple[str, ...]
    is_dir: bool
    mode: int
    size: int
    mtime: float


@dataclass
class ArchiveLedger:
    """What the entries seen so far claim, so that none contradicts another."""

    files: set[tuple[str, ...]] = field(default_factory=set)
    dirs: set[tuple[str, ...]] = field(default_factory=set)
    listed_dirs: set[tuple[str, ...]] = field(default_factory=set)

    @property
    def entries(self) -> int:
        return len(self.files) + len(self.dirs)


def shown(name: str) -> str:
    """An entry's name as an error message may show it: escaped and bounded."""
    text = repr(name)
    return text if len(text) <= _SHOWN_NAME_CHARS else text[:_SHOWN_NAME_CHARS] + "…'"


def entry_parts(name: str) -> tuple[str, ...]:
    """The components of an entry's name below the workspace root; raises ArchiveRefused for a
    name that would leave it (absolute, ``..``) or cannot be a file name (NUL). ``./`` and
    empty components are dropped; an empty result is the root itself."""
    if "\x00" in name:
        raise ArchiveRefused(f"archive entry {shown(name)}: the name contains a NUL byte")
    if name.startswith("/"):
        raise ArchiveRefused(
            f"archive entry {shown(name)}: absolute paths are refused; archive the tree with "
            "names relative to its root (tar -C DIR -czf out.tar.gz .)"
        )
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArchiveRefused(f"archive entry {shown(name)}: '..' would leave the workspace")
    return parts


def plan_entry(info: tarfile.TarInfo, ledger: ArchiveLedger) -> PlannedEntry | None:
    """Checks one entry against the rules and against the entries before it, records it in
    ``ledger`` and returns where it goes (None: the root directory itself, nothing to create).
    Raises ArchiveRefused naming the entry and the rule."""
    name = info.name
    parts = entry_parts(name)
    _check_type(info)
    if info.mode & (stat.S_ISUID | stat.S_ISGID):
        raise ArchiveRefused(
            f"archive entry {shown(name)}: setuid and setgid bits are refused (mode {info.mode:o})"
        )
    if not parts:
        if not info.isdir():
            raise ArchiveRefused(f"archive entry {shown(name)}: names the root but is no directory")
        return None
    for depth in range(1, len(parts)):
        if parts[:depth] in ledger.files:
            raise ArchiveRefused(
                f"archive entry {shown(name)}: {'/'.join(parts[:depth])!r} is a file in this "
                "archive, not a directory"
            )
    if parts in ledger.files or parts in ledger.listed_dirs:
        raise ArchiveRefused(f"archive entry {shown(name)}: listed twice (duplicate entries)")
    if info.isdir():
        ledger.listed_dirs.add(parts)
    elif parts in ledger.dirs:
        raise ArchiveRefused(
            f"archive entry {shown(name)}: a directory of that name came before it"
        )
    new_dirs = [parts[:depth] for depth in range(1, len(parts)) if parts[:depth] not in ledger.dirs]
    if info.isdir() and parts not in ledger.dirs:
        new_dirs.append(parts)
    if ledger.entries + len(new_dirs) + (0 if info.isdir() else 1) > MAX_ENTRIES:
        raise ArchiveRefused(f"the archive has more than {MAX_ENTRIES} entries")
    ledger.dirs.update(new_dirs)
    if not info.isdir():
        ledger.files.add(parts)
    return PlannedEntry(
        parts=parts,
        is_dir=info.isdir(),
        # The sticky bit means nothing on a workspace's files; the others were refused above.
        mode=info.mode & 0o777,
        size=0 if info.isdir() else info.size,
        mtime=float(info.mtime),
    )


def _check_type(info: tarfile.TarInfo) -> None:
    name = shown(info.name)
    if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        kind = "symbolic" if info.issym() else "hard"
        raise ArchiveRefused(
            f"archive entry {name}: {kind} links are refused (to {shown(info.linkname)}); "
            "archive the file itself (tar --dereference, or copy it in place of the link)"
        )
    if info.type in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        raise ArchiveRefused(f"archive entry {name}: devices and fifos are refused")
    if info.issparse():
        raise ArchiveRefused(f"archive entry {name}: sparse files are refused")
    if info.type not in _REGULAR and info.type != tarfile.DIRTYPE:
        raise ArchiveRefused(
            f"archive entry {name}: entry type {info.type!r} is refused (only files and "
            "directories)"
        )


def check_result_entry(info: tarfile.TarInfo) -> int:
    """Checks one entry of a job's pushed result (its ``/workspace`` packed in the container)
    and returns the bytes it holds. A result may hold what a workspace holds after a job ran,
    symbolic links included (archived as links, as a download of a host directory has them),
    but no name that leaves the archive's root, no hard link, device or fifo, no setuid bit:
    whoever unpacks the download must be safe with ``tar -x``'s defaults."""
    entry_parts(info.name)
    if info.issym():
        return 0
    _check_type(info)  # lets files and directories through, nothing else
    if info.mode & (stat.S_ISUID | stat.S_ISGID):
        raise ArchiveRefused(
            f"archive entry {shown(info.name)}: setuid and setgid bits are refused "
            f"(mode {info.mode:o})"
        )
    return 0 if info.isdir() else info.size
