"""Installing the box as a systemd service: unit, system user, directories, config.

Every step looks before it acts, so `aibox service install` can be run again after an
upgrade or a config change: what is already right is left alone and reported as such.
The unit is rendered from systemd/aibox.service with the values of the [service] config
section, the path of the installed `aibox`, and one LoadCredential= per credential the
config refers to. The repository's systemd/ folder ships in the wheel as aibox/ops/systemd
(a link in the source tree), so the unit is read as package data wherever aibox is installed.
`plan` says what install would do without doing it (`aibox service install --dry-run`).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path

from aibox.config import Config
from aibox.secrets import config_secrets

UNIT_NAME = "aibox.service"
SYSTEMD_DIR = files("aibox.ops") / "systemd"
TEMPLATE = SYSTEMD_DIR / "aibox.service"
GPU_DROPIN = SYSTEMD_DIR / "gpu.conf"
HOME_PREFIXES = ("/home/", "/root/", "/run/user/")


class ServiceError(Exception):
    """The service cannot be managed here; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    """Where an installed box keeps its files (systemd's defaults for the unit's *Directory=)."""

    unit_dir: Path = Path("/etc/systemd/system")
    config_dir: Path = Path("/etc/aibox")
    state_dir: Path = Path("/var/lib/aibox")
    logs_dir: Path = Path("/var/log/aibox")

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / UNIT_NAME

    @property
    def dropin_path(self) -> Path:
        return self.unit_dir / f"{UNIT_NAME}.d" / "gpu.conf"

    @property
    def config_path(self) -> Path:
        return self.config_dir / "aibox.toml"

    @property
    def credentials_dir(self) -> Path:
        return self.config_dir / "credentials"


def systemd_running() -> bool:
    """sd_booted(): the check libsystemd itself uses."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def refusals() -> list[str]:
    """Why this machine cannot manage the service right now (empty: it can)."""
    reasons = []
    if os.geteuid() != 0:
        reasons.append("managing the service needs root: run it again with sudo")
    if not systemd_running():
        reasons.append("systemd is not running on this machine (no /run/systemd/system); "
                       "start the box with `aibox run` under your own supervisor instead")
    return reasons


def require_manageable() -> None:
    reasons = refusals()
    if reasons:
        raise ServiceError(reasons[0])


def entry_point() -> Path:
    """The `aibox` entry point of the environment we run from."""
    candidate = Path(sys.executable).parent / "aibox"
    exe = candidate if candidate.is_file() else Path(shutil.which("aibox") or "")
    if not exe.is_file():
        raise ServiceError("cannot find the `aibox` executable next to this Python; reinstall with scripts/install.sh")
    return exe.absolute()


def aibox_executable() -> Path:
    """The entry point, checked to be one the hardened service can run."""
    exe = entry_point()
    check_outside_homes(exe, Path(sys.executable).resolve())
    return exe


def check_outside_homes(*paths: Path) -> None:
    """ProtectHome= hides /home, /root and /run/user from the service, so neither the entry
    point nor the interpreter behind the venv (often a pyenv build in /root) may live there."""
    for path in paths:
        if str(path).startswith(HOME_PREFIXES):
            raise ServiceError(f"{path} is inside a home directory, which the hardened service cannot read; "
                               "install AIBox with a system Python under /opt "
                               "(PYTHON=/usr/bin/python3 AIBOX_VENV=/opt/aibox/.venv scripts/install.sh)")


def credential_names(config: Config) -> list[str]:
    names = {s.ref.partition(":")[2] for _, s in config_secrets(config.api.api_key, config.connectors) if s.kind == "credential"}
    return sorted(names)


def render_unit(config: Config, exe: Path, layout: Layout = Layout()) -> str:
    """The template with this box's values; every other line is kept as written."""
    svc = config.service
    values = {
        "ExecStart": f"{exe} run --config {layout.config_path}",
        "WatchdogSec": str(svc.watchdog_s),
        "TimeoutStopSec": str(svc.stop_timeout_s),
        "MemoryMax": svc.memory_max,
        "User": svc.user,
        "Group": svc.user,
    }
    out = []
    for line in TEMPLATE.read_text(encoding="utf-8").splitlines():
        key = line.partition("=")[0]
        if key in values and not line.startswith("#"):
            line = f"{key}={values[key]}"
        out.append(line)
        if key == "MemoryMax":
            out += [f"LoadCredential={name}:{layout.credentials_dir / name}" for name in credential_names(config)]
    return "\n".join(out) + "\n"


def default_config_text(layout: Layout) -> str:
    return (
        "# AIBox config; see README for every key. Secrets: \"credential:NAME\" reads\n"
        f"# {layout.credentials_dir}/NAME through the unit's LoadCredential=.\n"
        f'state_dir = "{layout.state_dir}"\n\n'
        "[logging]\n"
        f'dir = "{layout.logs_dir}"\n'
    )


def _holds(path: Path, text: str) -> bool:
    return path.is_file() and path.read_text(encoding="utf-8") == text


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    if _holds(path, text):
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True


def _differs(path: Path, mode: int, uid: int | None, gid: int | None) -> bool:
    """Whether path lacks this mode or owner; a user that does not exist yet owns nothing."""
    st = path.stat()
    return st.st_mode & 0o777 != mode or (st.st_uid, st.st_gid) != (uid, gid)


def _ensure_dir(path: Path, mode: int, uid: int, gid: int) -> bool:
    if path.is_dir() and not _differs(path, mode, uid, gid):
        return False
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    os.chown(path, uid, gid)
    return True


def directories(layout: Layout) -> list[tuple[Path, int, bool]]:
    """(path, mode, owned by the service user) for each directory install makes; the rest are root's."""
    return [
        (layout.config_dir, 0o755, False),
        (layout.credentials_dir, 0o700, False),
        (layout.state_dir, 0o750, True),
        (layout.logs_dir, 0o750, True),
    ]


def useradd_command(name: str, home: Path) -> list[str]:
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    return ["useradd", "--system", "--user-group", "--home-dir", str(home), "--no-create-home", "--shell", nologin, name]


def service_ids(name: str) -> tuple[int, int] | None:
    """The service user's uid and its group's gid; None while the user does not exist."""
    try:
        return pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def ensure_user(name: str, home: Path) -> bool:
    """The dedicated system user and its group (the admin socket's group)."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    result = subprocess.run(useradd_command(name, home), capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"useradd {name} failed: {result.stderr.strip() or result.returncode}")
    return True


def install_files(config: Config, exe: Path, layout: Layout, uid: int, gid: int, gpu: bool) -> list[str]:
    """The file-system half of install: directories, config, unit, drop-in. Returns what changed."""
    done = []
    for path, mode, by_service in directories(layout):
        if _ensure_dir(path, mode, *((uid, gid) if by_service else (0, 0))):
            done.append(f"directory {path}")
    if not layout.config_path.exists():
        _write_if_changed(layout.config_path, default_config_text(layout), 0o600)
        done.append(f"config {layout.config_path}")
    if _differs(layout.config_path, 0o600, uid, gid):
        layout.config_path.chmod(0o600)
        os.chown(layout.config_path, uid, gid)
        done.append(f"config {layout.config_path} made 0600 and owned by the service user")
    if _write_if_changed(layout.unit_path, render_unit(config, exe, layout), 0o644):
        done.append(f"unit {layout.unit_path}")
    if gpu:
        if _write_if_changed(layout.dropin_path, GPU_DROPIN.read_text(encoding="utf-8"), 0o644):
            done.append(f"GPU drop-in {layout.dropin_path}")
    elif layout.dropin_path.exists():
        layout.dropin_path.unlink()
        done.append(f"removed GPU drop-in {layout.dropin_path}")
    return done


def wants_gpu(gpu: bool | None) -> bool:
    """The drop-in goes in when asked, or by default when this machine has an NVIDIA driver."""
    return Path("/dev/nvidiactl").exists() if gpu is None else gpu


def _systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ServiceError(f"systemctl {' '.join(args)} failed: {result.stderr.strip() or result.returncode}")
    return result


def install(config: Config, layout: Layout = Layout(), gpu: bool | None = None) -> list[str]:
    """Installs, enables and (re)starts the service; returns what changed (empty: nothing to do)."""
    require_manageable()
    exe = aibox_executable()
    name = config.service.user
    done = [f"system user {name}"] if ensure_user(name, layout.state_dir) else []
    uid, gid = pwd.getpwnam(name).pw_uid, grp.getgrnam(name).gr_gid
    done += install_files(config, exe, layout, uid, gid, wants_gpu(gpu))
    _systemctl("daemon-reload")
    if _systemctl("is-enabled", "--quiet", UNIT_NAME, check=False).returncode != 0:
        _systemctl("enable", UNIT_NAME)
        done.append("enabled at boot")
    if _systemctl("is-active", "--quiet", UNIT_NAME, check=False).returncode != 0:
        _systemctl("start", UNIT_NAME)
        done.append("started")
    elif any(d.startswith(("unit", "GPU", "removed GPU")) for d in done):
        _systemctl("restart", UNIT_NAME)
        done.append("restarted with the new unit")
    return done


@dataclass(frozen=True)
class Step:
    """One thing `install` does; needed is False where the box already has it, None where only
    a running systemd could tell. text is the file it would write."""

    kind: str
    target: str
    detail: str
    needed: bool | None
    text: str | None = None


@dataclass(frozen=True)
class Plan:
    """What `install` would do on this machine, and why it would refuse to (empty: it would go ahead)."""

    refusals: list[str]
    steps: list[Step]

    def as_dict(self) -> dict[str, object]:
        return {"would_install": not self.refusals, "refusals": self.refusals, "steps": [asdict(s) for s in self.steps]}


def _unit_state() -> tuple[bool | None, bool | None]:
    """(enabled, active) as systemd reports them; unknown where systemd is not running."""
    if not systemd_running():
        return None, None
    return (_systemctl("is-enabled", "--quiet", UNIT_NAME, check=False).returncode == 0,
            _systemctl("is-active", "--quiet", UNIT_NAME, check=False).returncode == 0)


def plan(config: Config, layout: Layout = Layout(), gpu: bool | None = None) -> Plan:
    """Every step of `install`, with the unit and drop-in it would write, worked out by reading
    this machine only: it needs neither root nor a running systemd, so an upgrade can be
    checked before it is made. Install's refusals are reported, not raised."""
    reasons = refusals()
    exe = entry_point()
    try:
        check_outside_homes(exe, Path(sys.executable).resolve())
    except ServiceError as e:
        reasons.append(str(e))
    name = config.service.user
    ids = service_ids(name)
    uid, gid = ids if ids is not None else (None, None)
    steps = [Step("user", name, " ".join(useradd_command(name, layout.state_dir)), ids is None)]
    for path, mode, by_service in directories(layout):
        owner, want = (name, (uid, gid)) if by_service else ("root", (0, 0))
        steps.append(Step("directory", str(path), f"{mode:04o} {owner}:{owner}",
                          not path.is_dir() or _differs(path, mode, *want)))
    cfg = layout.config_path
    steps.append(Step("config", str(cfg), f"0600 {name}:{name}, written only where there is none",
                      not cfg.exists() or _differs(cfg, 0o600, uid, gid), None if cfg.exists() else default_config_text(layout)))
    unit = render_unit(config, exe, layout)
    steps.append(Step("unit", str(layout.unit_path), f"0644, rendered from {TEMPLATE}", not _holds(layout.unit_path, unit), unit))
    if wants_gpu(gpu):
        dropin = GPU_DROPIN.read_text(encoding="utf-8")
        steps.append(Step("drop-in", str(layout.dropin_path), f"0644, copied from {GPU_DROPIN}",
                          not _holds(layout.dropin_path, dropin), dropin))
    else:
        steps.append(Step("drop-in", str(layout.dropin_path), "none without a GPU, removed where there is one", layout.dropin_path.exists()))
    changed = any(s.needed for s in steps if s.kind in ("unit", "drop-in"))
    enabled, active = _unit_state()
    steps += [
        Step("systemctl", "systemctl daemon-reload", "always", True),
        Step("systemctl", f"systemctl enable {UNIT_NAME}", "where it is not enabled", None if enabled is None else not enabled),
        Step("systemctl", f"systemctl start {UNIT_NAME}", "where it is not running", None if active is None else not active),
        Step("systemctl", f"systemctl restart {UNIT_NAME}", "where it is running and the unit or drop-in changed",
             None if active is None else active and changed),
    ]
    return Plan(reasons, steps)


def uninstall(layout: Layout = Layout()) -> list[str]:
    """Stops and removes the unit; config, state, logs and the user stay (they hold the data)."""
    require_manageable()
    done = []
    if layout.unit_path.exists():
        _systemctl("disable", "--now", UNIT_NAME, check=False)
        done.append("stopped and disabled")
    for path in (layout.dropin_path, layout.unit_path):
        if path.exists():
            path.unlink()
            done.append(f"removed {path}")
    if layout.dropin_path.parent.is_dir() and not any(layout.dropin_path.parent.iterdir()):
        layout.dropin_path.parent.rmdir()
    if done:
        _systemctl("daemon-reload")
    return done


def status() -> dict[str, str]:
    """systemd's view of the unit; works for any user, unlike install."""
    if not systemd_running():
        return {"systemd": "not running", "active": "unknown", "enabled": "unknown"}
    props = _systemctl("show", UNIT_NAME, "--property=ActiveState,SubState,UnitFileState,StatusText,MainPID,NRestarts",
                       check=False).stdout
    info = dict(line.split("=", 1) for line in props.splitlines() if "=" in line)
    return {
        "systemd": "running",
        "active": f"{info.get('ActiveState', 'unknown')} ({info.get('SubState', '')})",
        "enabled": info.get("UnitFileState") or "not installed",
        "status": info.get("StatusText", ""),
        "main_pid": info.get("MainPID", "0"),
        "restarts": info.get("NRestarts", "0"),
    }
