"""The files tool: every path stays inside the agent's workspace, sizes are capped, edits are exact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents import tools
from agents.tools import ToolCall, ToolContext
from agents.workspace import Workspaces, WorkspaceError
from aibox.config import FilesConfig


@pytest.fixture
def spaces(tmp_path: Path) -> Workspaces:
    return Workspaces(tmp_path / "workspaces", FilesConfig(max_file_bytes=1000, max_workspace_bytes=2500, max_read_chars=100))


def test_write_read_append_edit_search_list(spaces: Workspaces, tmp_path: Path) -> None:
    ws = spaces.for_agent("assistant")
    assert ws.root == (tmp_path / "workspaces" / "assistant").resolve()
    assert "wrote 6 bytes" in ws.write("notes/a.md", "hello\n")
    ws.append("notes/a.md", "world\n")
    assert ws.read("notes/a.md") == "hello\nworld\n"
    assert "edited" in ws.edit("notes/a.md", "world", "there")
    assert (ws.root / "notes" / "a.md").read_text() == "hello\nthere\n"
    assert ws.search("THERE") == "notes/a.md:2: there"
    assert ws.list() == "notes/\nnotes/a.md (12 bytes)"


def test_edit_needs_exactly_one_occurrence(spaces: Workspaces) -> None:
    ws = spaces.for_agent("assistant")
    ws.write("a.txt", "x x")
    with pytest.raises(WorkspaceError, match="occurs 2 times"):
        ws.edit("a.txt", "x", "y")
    with pytest.raises(WorkspaceError, match="occurs 0 times"):
        ws.edit("a.txt", "z", "y")
    assert ws.read("a.txt") == "x x"


@pytest.mark.parametrize("path", ["../other/secret.txt", "/etc/passwd", "a/../../x", "~/x", "a\x00b"])
def test_paths_outside_are_refused(spaces: Workspaces, path: str) -> None:
    ws = spaces.for_agent("assistant")
    with pytest.raises(WorkspaceError):
        ws.write(path, "x")
    with pytest.raises(WorkspaceError):
        ws.read(path)


def test_symlinks_out_are_refused(spaces: Workspaces, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("owner's secret")
    ws = spaces.for_agent("assistant")
    os.symlink(outside, ws.root / "door")
    os.symlink(outside / "secret.txt", ws.root / "file-door")
    for path in ("door/secret.txt", "file-door"):
        with pytest.raises(WorkspaceError, match="outside your workspace"):
            ws.read(path)
        with pytest.raises(WorkspaceError, match="outside your workspace"):
            ws.write(path, "overwritten")
    assert (outside / "secret.txt").read_text() == "owner's secret"
    assert "door" not in ws.list()


def test_agents_do_not_share_workspaces(spaces: Workspaces) -> None:
    spaces.for_agent("assistant").write("mine.txt", "a")
    with pytest.raises(WorkspaceError, match="no file"):
        spaces.for_agent("coder").read("mine.txt")
    with pytest.raises(WorkspaceError):
        spaces.for_agent("../assistant")


def test_size_limits(spaces: Workspaces) -> None:
    ws = spaces.for_agent("assistant")
    with pytest.raises(WorkspaceError, match="limit is 1000"):
        ws.write("big.txt", "x" * 1001)
    ws.write("a.txt", "x" * 900)
    with pytest.raises(WorkspaceError, match="limit is 1000"):
        ws.append("a.txt", "x" * 101)
    ws.write("b.txt", "x" * 900)
    with pytest.raises(WorkspaceError, match="its limit is 2500"):
        ws.write("c.txt", "x" * 900)
    assert not (ws.root / "c.txt").exists()
    text = ws.read("a.txt")
    assert text.startswith("x" * 100) and "offset=100" in text


async def test_files_tool_is_denied_unless_granted_and_reports_errors_as_text(spaces: Workspaces) -> None:
    ctx = ToolContext("telegram", "1", "1", "assistant", "UTC", workspaces=spaces)
    denied = await tools.run_call(ToolCall("files", {"action": "list"}), ["time"], ctx)
    assert denied.startswith("error: unknown tool 'files'")
    result, audit = await tools.run_audited(ToolCall("files", {"action": "write", "path": "n.md", "content": "secret text"}), ["files"], ctx)
    assert result == "wrote 11 bytes to n.md"
    assert audit.tool == "files" and audit.ok and audit.result_chars == len(result) and not audit.needs_approval
    assert "secret" not in repr(audit) and len(audit.args_digest) == 16
    escaped = await tools.run_call(ToolCall("files", {"action": "read", "path": "../../x"}), ["files"], ctx)
    assert escaped.startswith("error: ") and "'..'" in escaped
