"""The run tool: Python or shell code from a model, run inside a bubblewrap sandbox.

The sandbox sees the system read-only (/usr and the few /etc files programs need, not
the owner's home, the box's state or its config), the agent's workspace as the only
writable path, no network unless the config grants it to the agent, and its own PID,
IPC and UTS namespaces. prlimit inside bwrap caps CPU time, address space, processes
and file size; a wall-clock limit kills the whole namespace. RLIMIT_NPROC does not bind
root, so a box running as root drops each run to an unprivileged user first.

Where no sandbox can be made (bwrap missing, user namespaces disabled) the tool says so
and refuses: it never runs code unsandboxed.
May import: aibox.config.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aibox.config import RunConfig

ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "passwd", "group",
             "nsswitch.conf", "ssl", "ca-certificates", "mime.types")
NET_ETC_FILES = ("resolv.conf", "hosts", "gai.conf")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/workspace", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
SIGNALS = {signal.SIGXCPU: "the CPU time limit", signal.SIGKILL: "a limit was reached (CPU time or memory)", signal.SIGXFSZ: "the file size limit",
           signal.SIGSEGV: "a segmentation fault (often the memory limit)"}


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made on this machine; the message says why and what would fix it."""


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    stdout: str
    stderr: str
    stopped: str | None  # why the run was stopped, if it was

    def text(self) -> str:
        head = f"stopped: {self.stopped}" if self.stopped else f"exit code {self.exit_code}"
        return f"{head}\nstdout:\n{self.stdout or '(empty)'}\nstderr:\n{self.stderr or '(empty)'}"


class Sandbox:
    def __init__(self, settings: RunConfig, bwrap: str | None = None) -> None:
        self.settings = settings
        self.bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self._unavailable: str | None = None
        self._probed = False

    async def check(self) -> str | None:
        """Why no sandbox can be made here, or None when it can (probed once, with a real sandbox)."""
        if not self._probed:
            self._unavailable = await self._probe()
            self._probed = True
        return self._unavailable

    async def _probe(self) -> str | None:
        if not self.bwrap or not os.access(self.bwrap, os.X_OK):
            return "the run tool needs bubblewrap (bwrap), which is not installed (apt-get install bubblewrap)"
        with tempfile.TemporaryDirectory(prefix="aibox-probe-") as folder:
            argv = self._argv(Path(folder), None, ["/bin/true"], network=False)
            try:
                proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
                _, err = await asyncio.wait_for(proc.communicate(), 20)
            except (OSError, asyncio.TimeoutError) as e:
                return f"cannot start bubblewrap: {e}"
        if proc.returncode != 0:
            reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            return (f"cannot create a sandbox here ({reason[0]}); user namespaces may be disabled "
                    "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)")
        return None

    async def run(self, workspace: Path, language: Literal["python", "shell"], code: str, *, network: bool) -> RunResult:
        reason = await self.check()
        if reason is not None:
            raise SandboxUnavailable(reason)
        as_root = os.geteuid() == 0
        if as_root:
            _chown_tree(workspace, self.settings.sandbox_uid)
        suffix = ".py" if language == "python" else ".sh"
        with tempfile.TemporaryDirectory(prefix="aibox-run-") as folder:
            script = Path(folder) / f"main{suffix}"
            script.write_text(code, encoding="utf-8")
            script.chmod(0o644)
            interpreter = self.settings.python if language == "python" else "/bin/sh"
            argv = self._argv(workspace, script, [interpreter, f"/sandbox/main{suffix}"], network=network)
            return await self._execute(argv)

    def _argv(self, workspace: Path, script: Path | None, command: list[str], *, network: bool) -> list[str]:
        s = self.settings
        as_root = os.geteuid() == 0
        argv = [self.bwrap or "bwrap", "--die-with-parent", "--new-session"]
        # As root, a user namespace would map the sandbox to uid 0, which RLIMIT_NPROC does
        # not bind; the mounts are made as root and the command drops to sandbox_uid instead.
        argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"] if as_root else ["--unshare-all"]
        if network:
            argv.append("--share-net")
        elif as_root:
            argv.append("--unshare-net")
        argv += ["--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64"):
            path = Path("/") / top
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), f"/{top}"]
            elif path.is_dir():
                argv += ["--ro-bind", str(path), f"/{top}"]
        argv += ["--perms", "0755", "--dir", "/etc"]  # bwrap would make it 0700, unreadable to the dropped user
        for name in ETC_FILES + (NET_ETC_FILES if network else ()):
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for path in glob.glob("/etc/python3*"):
            argv += ["--ro-bind", path, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--bind", str(workspace), "/workspace"]
        if script is not None:
            argv += ["--perms", "0755", "--dir", "/sandbox", "--ro-bind", str(script), f"/sandbox/{script.name}"]
        argv += ["--remount-ro", "/", "--chdir", "/workspace", "--clearenv"]
        for key, value in ENV.items():
            argv += ["--setenv", key, value]
        argv.append("--")
        if as_root:
            uid = str(s.sandbox_uid)
            argv += ["/usr/bin/setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--inh-caps=-all",
                     "--bounding-set=-all", "--no-new-privs", "--"]
        argv += ["/usr/bin/prlimit", f"--cpu={s.cpu_s}", f"--as={s.memory_mb * 1024 * 1024}", f"--nproc={s.max_processes}",
                 f"--fsize={s.max_file_mb * 1024 * 1024}", "--nofile=256", "--core=0", "--"]
        return argv + command

    async def _execute(self, argv: list[str]) -> RunResult:
        limit = self.settings.max_output_chars
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        out, err = _Capped(limit), _Capped(limit)
        readers = asyncio.gather(out.drain(proc.stdout), err.drain(proc.stderr), proc.wait())
        stopped = None
        try:
            await asyncio.wait_for(asyncio.shield(readers), self.settings.timeout_s)
        except asyncio.TimeoutError:
            stopped = f"the time limit of {self.settings.timeout_s:g} s was reached"
            _kill(proc)
            await readers
        except asyncio.CancelledError:
            _kill(proc)
            raise
        code = proc.returncode
        if stopped is None and code is not None and code > 128 and (code - 128) in SIGNALS:
            stopped = f"killed by {signal.Signals(code - 128).name}: {SIGNALS[code - 128]}"
        return RunResult(code, out.text(), err.text(), stopped)


class _Capped:
    """Keeps the first `limit` characters of a stream and counts the rest, still reading
    it so that a chatty program cannot block on a full pipe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            room = self.limit * 4 - len(self.kept)  # bytes: up to 4 per character
            if room > 0:
                self.kept += chunk[:room]

    def text(self) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        if len(text) > self.limit or self.total > len(self.kept):
            return text[: self.limit] + f"\n[output cut: {self.limit} characters shown of {self.total} bytes]"
        return text


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kills bwrap's process group; --die-with-parent then takes the sandbox's PID namespace down with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _chown_tree(root: Path, uid: int) -> None:
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(folder, name), uid, uid)
    os.chown(root, uid, uid)
