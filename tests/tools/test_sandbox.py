"""The run tool's sandbox, with the real bubblewrap: network off, read-only system, the
workspace the only writable path, limits that stop fork bombs, memory hogs and endless
loops, output cut, and a refusal (never an unsandboxed run) where no sandbox can be made."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from agents import tools
from agents.sandbox import Sandbox
from agents.tools import ToolCall, ToolContext
from agents.workspace import Workspaces
from aibox.config import FilesConfig, RunConfig

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (.ci/run installs it)")
LIMITS = RunConfig(timeout_s=8, cpu_s=3, memory_mb=256, max_processes=16, max_output_chars=300)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


async def test_workspace_is_the_only_writable_path(workspace: Path, tmp_path: Path) -> None:
    code = (
        "import os\n"
        "open('out.txt', 'w').write('made inside')\n"
        "for path in ('/tmp/x', '/usr/x', '/etc/x', '/x', '/sandbox/x', '/proc/x'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print('refused', path)\n"
        f"print(os.path.exists({str(tmp_path)!r}))\n"
    )
    result = await Sandbox(LIMITS).run(workspace, "python", code, network=False)
    assert result.exit_code == 0, result.text()
    assert "WROTE" not in result.stdout and result.stdout.count("refused") == 6
    assert result.stdout.strip().endswith("False")  # the host's folders are not even visible
    assert (workspace / "out.txt").read_text() == "made inside"


async def test_network_is_off_unless_granted(workspace: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = f"import socket\ns = socket.socket()\ns.settimeout(3)\nprint('connect', s.connect_ex(('127.0.0.1', {port})))\n"
    try:
        off = await Sandbox(LIMITS).run(workspace, "python", code, network=False)
        on = await Sandbox(LIMITS).run(workspace, "python", code, network=True)
    finally:
        listener.close()
    assert off.exit_code == 0 and off.stdout.strip() != "connect 0", off.text()
    assert on.stdout.strip() == "connect 0", on.text()


async def test_fork_bomb_is_contained_and_stopped(workspace: Path) -> None:
    result = await Sandbox(LIMITS).run(workspace, "shell", "bomb() { bomb | bomb & }; bomb; sleep 60", network=False)
    assert result.stopped is not None and "time limit" in result.stopped
    assert "fork" in result.stderr.lower()  # the process limit refused forks before the clock ran out


async def test_memory_hog_is_refused(workspace: Path) -> None:
    result = await Sandbox(LIMITS).run(workspace, "python", "x = bytearray(1024 ** 3)\nprint('allocated')", network=False)
    assert result.exit_code != 0 and "MemoryError" in result.stderr and "allocated" not in result.stdout


async def test_endless_loop_is_stopped(workspace: Path) -> None:
    result = await Sandbox(LIMITS).run(workspace, "python", "while True:\n    pass\n", network=False)
    assert result.stopped is not None and ("CPU" in result.stopped or "time limit" in result.stopped)


async def test_output_is_cut(workspace: Path) -> None:
    result = await Sandbox(LIMITS).run(workspace, "python", "print('y' * 100000)", network=False)
    assert result.exit_code == 0
    assert result.stdout.startswith("y" * 300) and "[output cut: 300 characters shown of 100001 bytes]" in result.stdout


@pytest.mark.parametrize("bwrap", ["/nonexistent/bwrap", "/bin/false"])
async def test_no_sandbox_means_no_run(tmp_path: Path, bwrap: str) -> None:
    """bwrap missing, or failing as it does where user namespaces are off: the tool refuses."""
    spaces = Workspaces(tmp_path / "workspaces", FilesConfig())
    ctx = ToolContext("telegram", "1", "1", "coder", "UTC", workspaces=spaces, sandbox=Sandbox(LIMITS, bwrap=bwrap))
    marker = spaces.for_agent("coder").root / "ran.txt"
    result = await tools.run_call(ToolCall("run", {"language": "python", "code": f"open({str(marker)!r}, 'w')"}), ["run"], ctx)
    assert result.startswith("error: refused to run:") and "never run outside a sandbox" in result
    assert not marker.exists()


async def test_run_tool_needs_approval_and_grant(tmp_path: Path) -> None:
    assert tools.TOOLS["run"].needs_approval
    assert not any(t.needs_approval for name, t in tools.TOOLS.items() if name != "run")
    spaces = Workspaces(tmp_path / "workspaces", FilesConfig())
    ctx = ToolContext("telegram", "1", "1", "coder", "UTC", workspaces=spaces, sandbox=Sandbox(LIMITS))
    call = ToolCall("run", {"language": "shell", "code": "echo hi > f.txt; cat f.txt"})
    assert (await tools.run_call(call, ["files"], ctx)).startswith("error: unknown tool 'run'")
    result, audit = await tools.run_audited(call, ["run"], ctx)
    assert result.startswith("exit code 0") and "hi" in result
    assert audit.needs_approval and audit.ok
    assert (spaces.for_agent("coder").root / "f.txt").read_text() == "hi\n"
