"""The operator's catalogue of coding agents: ``<IRONCLAW_BASE_DIR>/agents.json``.

An agent-mode job names an entry (``CreateJob.agent``); the entry decides the image, the command
and the API the agent speaks, never the caller (``ironclaw_contract.agent_catalog`` says what an
entry may hold). The file is read again when it changes, so an operator edits it without a
restart; a broken catalogue stops the orchestrator's start, and a later edit that breaks it
makes agent-mode ``CreateJob`` calls fail with the file's problem instead of running something
else. A job keeps the entry it was created with.
"""

from __future__ import annotations

from pathlib import Path

from ironclaw_contract.agent_catalog import AgentConfigError, AgentEntry, parse_agent_catalog
from orchestrator.errors import ConfigError, FailedPrecondition, InvalidArgument
from orchestrator.logging import get_logger
from orchestrator.tool_catalog import FileStamp, read_catalog_json

log = get_logger(__name__)

AGENT_CATALOG_FILE = "agents.json"


def read_agent_catalog(path: Path) -> dict[str, AgentEntry]:
    """The entries of the catalogue file at ``path`` (which must exist); FailedPrecondition
    naming the file and the bad entry. Logs nothing: ``ironclaw status`` reads it too."""
    try:
        return parse_agent_catalog(read_catalog_json(path), str(path))
    except AgentConfigError as exc:
        raise FailedPrecondition(f"the agent catalogue is invalid: {exc}") from None


class AgentCatalog:
    """Reads, validates and looks up the entries of ``<base_dir>/agents.json``."""

    def __init__(self, base_dir: Path) -> None:
        self.path = base_dir / AGENT_CATALOG_FILE
        self._cached: tuple[FileStamp | None, dict[str, AgentEntry]] | None = None

    def check(self) -> int:
        """Validates the catalogue (at start); ConfigError naming the file and the bad entry.
        Returns the number of agents."""
        try:
            return len(self.agents())
        except FailedPrecondition as exc:
            raise ConfigError(exc.message) from None

    def agents(self) -> dict[str, AgentEntry]:
        """The catalogue's entries (none when the file does not exist)."""
        stamp = FileStamp.of(self.path)
        if self._cached is not None and self._cached[0] == stamp:
            return self._cached[1]
        agents = read_agent_catalog(self.path) if stamp is not None else {}
        if stamp is not None:
            log.info("agent catalogue loaded", path=str(self.path), agents=len(agents))
        self._cached = (stamp, agents)
        return agents

    def entry(self, name: str) -> AgentEntry:
        """The entry called ``name``; InvalidArgument listing the known names otherwise."""
        agents = self.agents()
        found = agents.get(name)
        if found is None:
            known = ", ".join(sorted(agents)) or f"none: {self.path} defines no agent"
            raise InvalidArgument(f"agent {name[:64]!r} is not in the catalogue (known: {known})")
        return found
