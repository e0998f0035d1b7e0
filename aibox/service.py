"""Installing the box as a systemd service: unit, system user, directories, config.

Every step looks before it acts, so `aibox service install` can be run again after an
upgrade or a config change: what is already right is left alone and reported as such.
The unit is rendered from systemd/aibox.service with the values of the [service] config
section, the path of the installed `aibox`, and one LoadCredential= per credential the
config refers to.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aibox.config import Config
from aibox.secrets import config_secrets

UNIT_NAME = "aibox.service"
SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
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


def require_manageable() -> None:
    if os.geteuid() != 0:
        raise ServiceError("managing the service needs root: run it again with sudo")
    if not systemd_running():
        raise ServiceError("systemd is not running on this machine (no /run/systemd/system); "
                           "start the box with `aibox run` under your own supervisor instead")


def aibox_executable() -> Path:
    """The `aibox` entry point of the environment we run from."""
    candidate = Path(sys.executable).parent / "aibox"
    exe = candidate if candidate.is_file() else Path(shutil.which("aibox") or "")
    if not exe.is_file():
        raise ServiceError("cannot find the `aibox` executable next to this Python; reinstall with scripts/install.sh")
    check_outside_homes(exe.absolute(), Path(sys.executable).resolve())
    return exe.absolute()


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


def _write_if_changed(path: Path, text: str, mode: int) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True


def _ensure_dir(path: Path, mode: int, uid: int, gid: int) -> bool:
    created = not path.is_dir()
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    if created or st.st_mode & 0o777 != mode or (st.st_uid, st.st_gid) != (uid, gid):
        path.chmod(mode)
        os.chown(path, uid, gid)
        return True
    return False


def ensure_user(name: str, home: Path) -> bool:
    """The dedicated system user and its group (the admin socket's group)."""
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        pass
    nologin = shutil.which("nologin") or "/usr/sbin/nologin"
    cmd = ["useradd", "--system", "--user-group", "--home-dir", str(home), "--no-create-home", "--shell", nologin, name]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceError(f"useradd {name} failed: {result.stderr.strip() or result.returncode}")
    return True


def install_files(config: Config, exe: Path, layout: Layout, uid: int, gid: int, gpu: bool) -> list[str]:
    """The file-system half of install: directories, config, unit, drop-in. Returns what changed."""
    done = []
    owner = (uid, gid)
    for path, mode, ids in (
        (layout.config_dir, 0o755, (0, 0)),
        (layout.credentials_dir, 0o700, (0, 0)),
        (layout.state_dir, 0o750, owner),
        (layout.logs_dir, 0o750, owner),
    ):
        if _ensure_dir(path, mode, *ids):
            done.append(f"directory {path}")
    if not layout.config_path.exists():
        _write_if_changed(layout.config_path, default_config_text(layout), 0o600)
        done.append(f"config {layout.config_path}")
    st = layout.config_path.stat()
    if st.st_mode & 0o777 != 0o600 or (st.st_uid, st.st_gid) != owner:
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
    use_gpu = Path("/dev/nvidiactl").exists() if gpu is None else gpu
    done += install_files(config, exe, layout, uid, gid, use_gpu)
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
