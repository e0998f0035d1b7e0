"""The files tool: one workspace folder per agent, `<state_dir>/workspaces/<agent>/`.

A model writes the paths, so every path is treated as hostile: absolute paths, `..`,
NUL bytes and anything that resolves outside the workspace (a symlink pointing out,
one planted by a sandboxed run included) are refused, checked after resolving and
again when the file is opened (O_NOFOLLOW). Sizes are capped per file and per
workspace, and reads hand the model a bounded slice.
May import: aibox.config, agents.definition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agents.definition import NAME_RE
from aibox.config import FilesConfig

MAX_LIST = 200
MAX_MATCHES = 50


class WorkspaceError(ValueError):
    """A refused or failed file operation; the message is for the model and names the path."""


@dataclass(frozen=True)
class Workspaces:
    """Where every agent's workspace lives, and the limits they all share."""

    root: Path
    limits: FilesConfig

    def for_agent(self, agent: str) -> "Workspace":
        if not NAME_RE.match(agent):
            raise WorkspaceError(f"no workspace for agent name {agent!r}")
        path = self.root / agent
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
        return Workspace(path.resolve(), self.limits)


@dataclass(frozen=True)
class Workspace:
    root: Path
    limits: FilesConfig

    def resolve(self, relative: str) -> Path:
        """The real path of `relative` inside the workspace, or WorkspaceError."""
        if "\x00" in relative:
            raise WorkspaceError("a path cannot contain NUL bytes")
        pure = PurePosixPath(relative.strip() or ".")
        if pure.is_absolute() or relative.startswith("~"):
            raise WorkspaceError(f"{relative!r}: paths are relative to your workspace, not absolute")
        if ".." in pure.parts:
            raise WorkspaceError(f"{relative!r}: '..' is not allowed in a path")
        real = (self.root / pure).resolve()
        if real != self.root and not real.is_relative_to(self.root):
            raise WorkspaceError(f"{relative!r} leads outside your workspace")
        return real

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."

    def list(self, relative: str = ".") -> str:
        folder = self.resolve(relative)
        if not folder.is_dir():
            raise WorkspaceError(f"{relative!r} is not a folder")
        entries = []
        for path in sorted(folder.rglob("*")):
            if len(entries) == MAX_LIST:
                entries.append(f"... (more than {MAX_LIST} entries; list a subfolder)")
                break
            if path.is_symlink():
                continue  # a link is never followed, so it is not offered either
            entries.append(f"{self._name(path)}/" if path.is_dir() else f"{self._name(path)} ({path.stat().st_size} bytes)")
        return "\n".join(entries) or "the folder is empty"

    def read(self, relative: str, offset: int = 0) -> str:
        data = self._read_bytes(relative)
        text = data.decode("utf-8", errors="replace")
        part = text[offset:offset + self.limits.max_read_chars]
        if offset + len(part) < len(text):
            part += f"\n[showing characters {offset}-{offset + len(part)} of {len(text)}; read again with offset={offset + len(part)}]"
        return part

    def write(self, relative: str, content: str) -> str:
        data = content.encode("utf-8")
        path = self._writable(relative, len(data), replaces=True)
        self._write_bytes(path, data, os.O_TRUNC)
        return f"wrote {len(data)} bytes to {self._name(path)}"

    def append(self, relative: str, content: str) -> str:
        data = content.encode("utf-8")
        path = self._writable(relative, len(data), replaces=False)
        self._write_bytes(path, data, os.O_APPEND)
        return f"appended {len(data)} bytes to {self._name(path)}"

    def edit(self, relative: str, old: str, new: str) -> str:
        if not old:
            raise WorkspaceError("'old' must be the exact text to replace, not empty")
        text = self._read_bytes(relative).decode("utf-8", errors="strict")
        count = text.count(old)
        if count != 1:
            raise WorkspaceError(f"'old' occurs {count} times in {relative}; it must occur exactly once (quote more context)")
        return self.write(relative, text.replace(old, new)).replace("wrote", "edited; wrote", 1)

    def search(self, query: str, relative: str = ".") -> str:
        if not query:
            raise WorkspaceError("search needs a non-empty query")
        folder = self.resolve(relative)
        needle = query.lower()
        hits: list[str] = []
        paths = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        for path in paths:
            if path.stat().st_size > self.limits.max_file_bytes:
                continue
            for number, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
                if needle in line.lower():
                    hits.append(f"{self._name(path)}:{number}: {line.strip()[:200]}")
                    if len(hits) == MAX_MATCHES:
                        return "\n".join(hits) + f"\n[stopped at {MAX_MATCHES} matches]"
        return "\n".join(hits) or f"no line contains {query!r}"

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file() and not p.is_symlink())

    # -- checked I/O ---------------------------------------------------------------

    def _read_bytes(self, relative: str) -> bytes:
        path = self.resolve(relative)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise WorkspaceError(f"no file {relative!r} in your workspace") from None
        except IsADirectoryError:
            raise WorkspaceError(f"{relative!r} is a folder; list it instead") from None
        except OSError as e:
            raise WorkspaceError(f"cannot read {relative!r}: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size > self.limits.max_file_bytes:
                raise WorkspaceError(f"{relative!r} is larger than the {self.limits.max_file_bytes}-byte limit")
            return f.read()

    def _writable(self, relative: str, adding: int, *, replaces: bool) -> Path:
        path = self.resolve(relative)
        if path == self.root or path.is_dir():
            raise WorkspaceError(f"{relative!r} is a folder, not a file")
        current = path.stat().st_size if path.is_file() else 0
        final = adding if replaces else current + adding
        if final > self.limits.max_file_bytes:
            raise WorkspaceError(f"{relative!r} would be {final} bytes; the limit is {self.limits.max_file_bytes}")
        total = self.used_bytes() - (current if replaces else 0) + adding
        if total > self.limits.max_workspace_bytes:
            raise WorkspaceError(f"the workspace would hold {total} bytes; its limit is {self.limits.max_workspace_bytes}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.resolve(relative) != path:  # a folder on the way was swapped for a link meanwhile
            raise WorkspaceError(f"{relative!r} leads outside your workspace")
        return path

    def _write_bytes(self, path: Path, data: bytes, mode: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | mode, 0o640)
        except OSError as e:
            raise WorkspaceError(f"cannot write {self._name(path)}: {e.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
