"""The agents this box knows: the shipped examples in agents/*.toml and the owner's
own files in <state_dir>/agents. A user file with a shipped agent's name replaces it.
Enabled or disabled lives in the store, so a disabled agent stays off across restarts
and upgrades. A broken user file is reported (`problems`), never fatal: the other
agents keep working.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from agents.definition import AgentFileError, AgentDefinition, load_agent
from agents.tables import AgentState
from aibox.store import Store

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class AgentEntry:
    definition: AgentDefinition
    source: str  # "shipped" or "user"
    path: Path
    enabled: bool

    def summary(self) -> dict:
        definition = self.definition
        return {
            "name": definition.name,
            "description": definition.description,
            "enabled": self.enabled,
            "default": definition.default,
            "source": self.source,
            "path": str(self.path),
            "model": definition.model.name if definition.model.policy == "pinned" else "router",
            "tools": definition.tools,
            "schedules": [s.model_dump() for s in definition.schedules],
        }


class Registry:
    def __init__(self, store: Store, user_dir: Path, shipped_dir: Path = SHIPPED_DIR) -> None:
        self.store = store
        self.user_dir = user_dir
        self.shipped_dir = shipped_dir
        self.problems: dict[str, str] = {}
        self._agents: dict[str, AgentEntry] = {}
        self.reload()

    def reload(self) -> None:
        states = self._states()
        agents: dict[str, AgentEntry] = {}
        self.problems = {}
        for source, folder in (("shipped", self.shipped_dir), ("user", self.user_dir)):
            for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
                try:
                    definition = load_agent(path)
                except AgentFileError as e:
                    self.problems[str(path)] = str(e)
                    log.error("agent file refused: %s", e)
                    continue
                agents[definition.name] = AgentEntry(definition, source, path, states.get(definition.name, True))
        self._agents = agents

    def _states(self) -> dict[str, bool]:
        with self.store.session() as s:
            return {row.name: row.enabled for row in s.scalars(select(AgentState))}

    def all(self) -> list[AgentEntry]:
        return sorted(self._agents.values(), key=lambda a: a.definition.name)

    def get(self, name: str) -> AgentEntry:
        entry = self._agents.get(name)
        if entry is None:
            known = ", ".join(sorted(self._agents)) or "none"
            raise RegistryError(f"no agent named {name!r}; known agents: {known}")
        return entry

    def enabled(self, name: str) -> AgentDefinition | None:
        entry = self._agents.get(name)
        return entry.definition if entry is not None and entry.enabled else None

    def default(self, preferred: str | None = None) -> AgentDefinition:
        """The configured default agent if enabled, else the one marked default, else the first enabled."""
        on = [a.definition for a in self.all() if a.enabled]
        if not on:
            raise RegistryError("every agent is disabled; enable one with `aibox agents enable NAME`")
        return next((s for s in on if s.name == preferred), None) or next((s for s in on if s.default), on[0])

    def add(self, source: Path) -> AgentEntry:
        """Validates a file and copies it into the user agents folder."""
        definition = load_agent(source)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        target = self.user_dir / f"{definition.name}.toml"
        shutil.copyfile(source, target)
        self.reload()
        return self.get(definition.name)

    def remove(self, name: str) -> Path:
        entry = self.get(name)
        if entry.source != "user":
            raise RegistryError(f"{name} is a shipped agent; disable it with `aibox agents disable {name}` instead")
        entry.path.unlink()
        self.reload()
        return entry.path

    def set_enabled(self, name: str, enabled: bool) -> AgentEntry:
        self.get(name)
        with self.store.session() as s:
            s.merge(AgentState(name=name, enabled=enabled))
        self.reload()
        return self.get(name)
