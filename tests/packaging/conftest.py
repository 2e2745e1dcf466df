"""Fixtures for the packaging tests: each distribution's wheel built from a clean copy of its
source, and fresh venvs (``python -m venv``) into which a wheel is installed with its
dependencies, as a user would (``pip install <wheel>``).

The project's own distributions only ever come from the wheels built here (``--find-links``),
never from an index, where an unrelated package could carry the same name. Third-party wheels
come from the cache ``build/wheels`` that build-wheels.sh fills for the images: every install
is ``--no-index``, and the index is asked only to fill the cache when it lacks a wheel. That
needs PyPI: without it the tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT

CACHE = ROOT / "build" / "wheels"
# Distribution (directory of the repository) -> wheel file name prefix.
DISTRIBUTIONS = {
    "contract": "ironclaw_contract",
    "client": "ironclaw_client",
    "worker": "ironclaw_worker",
    "bridge": "ironclaw_claude_bridge",
    "orchestrator": "ironclaw_orchestrator",
}
_PROJECT_WHEEL = re.compile(r"ironclaw[-_]", re.IGNORECASE)


def _pip_env() -> dict[str, str]:
    # A site-wide PIP_FIND_LINKS would be one more place pip could take a wheel from.
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PIP_NO_INDEX")}
    env.pop("PYTHONPATH", None)
    return env


def _run(*command: str | Path, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=_pip_env()
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, command))} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return str(result.stdout)


@dataclass(frozen=True)
class Wheelhouse:
    """The project's wheels just built (``dist``) and the third-party wheels of the cache
    (``deps``: links to every wheel in build/wheels that is not one of the project's, so an
    older project wheel left there can never be picked)."""

    dist: Path
    deps: Path

    def wheel(self, distribution: str) -> Path:
        (path,) = self.dist.glob(f"{DISTRIBUTIONS[distribution]}-*.whl")
        return path

    def find_links(self) -> list[str]:
        return ["--no-index", "--find-links", str(self.dist), "--find-links", str(self.deps)]


def _clean_copy(destination: Path) -> None:
    # Only the distributions' own sources: no build/ of an earlier in-tree build, no egg-info
    # of the editable install, no bytecode.
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for directory in DISTRIBUTIONS:
        shutil.copytree(ROOT / directory, destination / directory, ignore=ignore)


def _build_isolation() -> list[str]:
    # The dev venv's setuptools builds the wheels when it is recent enough (no download, works
    # offline), as build-wheels.sh does; otherwise pip fetches the declared build backend.
    try:
        import setuptools
        import wheel  # noqa: F401
    except ImportError:
        return []
    return ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 77 else []


def _third_party_requirements(wheels: list[Path]) -> list[str]:
    """The wheels' requirements that are not the project's own and not behind an extra."""
    requirements: set[str] = set()
    for path in wheels:
        with zipfile.ZipFile(path) as archive:
            meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            for line in archive.read(meta).decode().splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                requirement = line.split(":", 1)[1].strip()
                if _PROJECT_WHEEL.match(requirement) or "extra ==" in requirement:
                    continue
                requirements.add(requirement)
    return sorted(requirements)


def _fill_cache(requirements: list[str], work: Path) -> None:
    listed = work / "requirements.txt"
    listed.write_text("\n".join(requirements) + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet"]
    where = ["--find-links", str(CACHE), "--wheel-dir", str(CACHE), "-r", str(listed)]
    try:
        _run(*pip, "--no-index", *where)  # offline first: usually the cache has everything
        return
    except AssertionError:
        pass
    try:
        _run(*pip, *where)
    except AssertionError as exc:
        if IN_CI:
            raise
        pytest.skip(f"the wheel cache {CACHE} lacks wheels and the index is unreachable: {exc}")


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    # The lock build-wheels.sh takes on the same directory.
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def project_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of the five project wheels, built from a clean copy of the source."""
    work = tmp_path_factory.mktemp("project-wheels")
    _clean_copy(work / "src")
    dist = work / "dist"
    for directory in DISTRIBUTIONS:
        _run(
            sys.executable,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "wheel",
            "--quiet",
            "--no-deps",
            *_build_isolation(),
            "--wheel-dir",
            dist,
            work / "src" / directory,
        )
    return dist


@pytest.fixture(scope="session")
def wheelhouse(project_wheels: Path, tmp_path_factory: pytest.TempPathFactory) -> Wheelhouse:
    work = tmp_path_factory.mktemp("wheelhouse")
    deps = work / "deps"
    deps.mkdir()
    with _cache_lock():
        _fill_cache(_third_party_requirements(sorted(project_wheels.glob("*.whl"))), work)
        for cached in CACHE.glob("*.whl"):
            if not _PROJECT_WHEEL.match(cached.name):
                (deps / cached.name).symlink_to(cached)
    return Wheelhouse(dist=project_wheels, deps=deps)


@dataclass(frozen=True)
class Venv:
    """A fresh virtual environment; commands run outside the repository, without PYTHONPATH."""

    root: Path
    cwd: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> Path:
        return self.root / "bin" / name

    def run(self, *command: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(c) for c in command],
            cwd=self.cwd,
            env=_pip_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def distributions(self) -> set[str]:
        """The names of the distributions installed in it, normalized."""
        listing = self.run(
            self.python,
            "-I",
            "-c",
            "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])",
        )
        assert listing.returncode == 0, listing.stderr
        return {re.sub(r"[-_.]+", "-", name).lower() for name in listing.stdout.split()}


def make_venv(path: Path) -> Venv:
    _run(sys.executable, "-m", "venv", path)
    cwd = path / "cwd"
    cwd.mkdir()
    return Venv(root=path, cwd=cwd)


@dataclass(frozen=True)
class Installed:
    """A fresh venv with one of the project's wheels installed, and what the install added."""

    venv: Venv
    added: set[str]


def install(wheelhouse: Wheelhouse, distribution: str, path: Path) -> Installed:
    venv = make_venv(path)
    before = venv.distributions()
    _run(
        venv.python,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "install",
        "--quiet",
        *wheelhouse.find_links(),
        wheelhouse.wheel(distribution),
    )
    return Installed(venv=venv, added=venv.distributions() - before)


@pytest.fixture(scope="session")
def orchestrator_installed(
    wheelhouse: Wheelhouse, tmp_path_factory: pytest.TempPathFactory
) -> Installed:
    """ironclaw-orchestrator's wheel alone in a fresh venv (shared: its install is the slow
    one)."""
    return install(wheelhouse, "orchestrator", tmp_path_factory.mktemp("venv") / "orchestrator")
