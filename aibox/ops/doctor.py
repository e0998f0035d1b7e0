"""`aibox doctor`: everything that commonly keeps a box from working, each with its fix.

A check is "ok", "warn" (works, but worth fixing) or "fail" (the box will not work, or
not safely); doctor exits non-zero when any check fails. Checks never print secret values.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from aibox.config import Config, ConfigError, find_config_path, load_config
from aibox.ops import service
from aibox.secrets import Secret, SecretError, config_secrets
from models.catalog import Catalog, CatalogError
from models.files import VerifyError, is_present, verify

Status = Literal["ok", "warn", "fail"]
GIB = 1024**3
MIN_FREE_FAIL = 1 * GIB
MIN_FREE_WARN = 5 * GIB


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def run_checks(config_path: str | Path | None = None, deep: bool = False) -> list[Check]:
    """All checks in order; a config that does not load stops the ones that need it."""
    path = find_config_path(config_path)
    checks: list[Check] = []
    try:
        config = load_config(config_path)
    except ConfigError as e:
        checks.append(Check("config", "fail", str(e), f"edit {path}: fix the key named above"))
        if path.exists():
            checks.append(check_private_file("config permissions", path))
        return checks
    checks.append(Check("config", "ok", f"{path} is valid" if config.source else f"no file at {path}; running on defaults"))
    if config.source:
        checks.append(check_private_file("config permissions", config.source))
    if config.connectors:
        checks.append(check_connectors(config))
    checks += check_secrets(config)
    checks += check_models(config, deep)
    checks.append(check_disk(config.state_path))
    checks.append(check_database(config))
    checks.append(check_admin_socket(config.admin_socket))
    checks.append(check_service())
    return checks


def check_private_file(name: str, path: Path) -> Check:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        return Check(name, "fail", f"{path} has mode {mode:04o}: others on the box can read it", f"chmod 600 {path}")
    return Check(name, "ok", f"{path} is {mode:04o}")


def check_connectors(config: Config) -> Check:
    """The same validation the daemon runs on start, so a typo shows here first."""
    from connectors.manager import load_settings  # imports every platform's client library

    try:
        settings = load_settings(config.connectors)
    except ConfigError as e:
        return Check("connectors", "fail", str(e), "fix the key named above")
    enabled = sorted(name for name, s in settings.items() if s.enabled)
    return Check("connectors", "ok", f"settings valid; enabled: {', '.join(enabled) or 'none'}")


def credential_path(config: Config, name: str) -> Path:
    """Inside the service systemd provides the credential; outside, its source file."""
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    if base:
        return Path(base) / name
    config_dir = config.source.parent if config.source else service.Layout().config_dir
    return config_dir / "credentials" / name


def check_secrets(config: Config) -> list[Check]:
    checks = []
    for key, secret in config_secrets(config.api.api_key, config.connectors):
        name = f"secret {key}"
        if secret.kind == "literal":
            checks.append(Check(name, "warn", "written in clear in the config file",
                                "move it to a credential file and write \"credential:NAME\" (see `aibox security audit`)"))
            continue
        file = None
        if secret.kind == "file":
            file = Path(secret.ref.partition(":")[2]).expanduser()
        elif secret.kind == "credential":
            file = credential_path(config, secret.ref.partition(":")[2])
        try:
            (Secret(f"file:{file}") if file is not None else secret).get()
        except SecretError as e:
            where = f"create {file} (mode 0600) holding the value" if file is not None else "set it in the service environment"
            checks.append(Check(name, "fail", f"{secret.describe()} cannot be resolved: {e}", where))
            continue
        if file is not None and not os.environ.get("CREDENTIALS_DIRECTORY"):
            perm = check_private_file(name, file)
            if perm.status != "ok":
                checks.append(perm)
                continue
        checks.append(Check(name, "ok", f"{secret.describe()} resolves"))
    return checks


def check_models(config: Config, deep: bool) -> list[Check]:
    """The default model must be there and intact; other pulled models must be intact."""
    try:
        catalog = Catalog.load(config.state_path / "cards")
    except CatalogError as e:
        return [Check("model catalog", "fail", str(e), "fix or remove the model card named above")]
    models_dir = config.models_path
    checks = []
    if config.default_model not in catalog:
        checks.append(Check("default model", "fail", f"'{config.default_model}' is not in the catalog",
                            "set default_model to a name from `aibox models list`"))
    for card in catalog:
        is_default = card.name == config.default_model
        if not card.is_local or not (is_default or is_present(card, models_dir) or (models_dir / card.file).exists()):
            continue
        try:
            verify(card, models_dir, force=deep)
        except VerifyError as e:
            checks.append(Check(f"model {card.name}", "fail", str(e), f"aibox models pull {card.name}"))
            continue
        checks.append(Check(f"model {card.name}", "ok", f"sha256 matches the card{' (full re-hash)' if deep else ''}"))
    return checks


def check_disk(path: Path) -> Check:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    detail = f"{free / GIB:.1f} GiB free on the file system of {path}"
    if free < MIN_FREE_FAIL:
        return Check("disk space", "fail", detail, "free space: remove unused models with `aibox models rm NAME` or old backups")
    if free < MIN_FREE_WARN:
        return Check("disk space", "warn", detail, "keep at least 5 GiB free for models, the database and logs")
    return Check("disk space", "ok", detail)


def check_database(config: Config) -> Check:
    url = config.store_url
    if not url.startswith("sqlite:///"):
        return Check("database", "ok", "external database (not checked here)")
    db = Path(url.removeprefix("sqlite:///"))
    if not db.exists():
        return Check("database", "warn", f"{db} does not exist yet", "start the box once (`aibox run`) to create it")
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as e:
        return Check("database", "fail", f"{db}: {e}", "restore the last good backup with `aibox backup restore`")
    if result != "ok":
        return Check("database", "fail", f"{db}: integrity check says {result}", "restore the last good backup with `aibox backup restore`")
    return Check("database", "ok", f"{db} passes the integrity check")


def daemon_running(admin_socket: Path) -> bool:
    """The admin socket accepts a connection only while a daemon serves it."""
    if not admin_socket.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(admin_socket))
        except OSError:
            return False
    return True


def check_admin_socket(path: Path) -> Check:
    if not path.exists():
        return Check("admin socket", "warn", f"{path} is absent: the daemon is not running", "start it: `systemctl start aibox` or `aibox run`")
    mode = path.stat().st_mode & 0o777
    if mode & 0o007:
        return Check("admin socket", "fail", f"{path} has mode {mode:04o}: any local user can administer the box",
                     f"chmod 660 {path} (the daemon sets it on start; restart it)")
    if not daemon_running(path):
        return Check("admin socket", "warn", f"{path} exists but nobody answers: a stale socket", "start the daemon; it replaces the socket")
    return Check("admin socket", "ok", f"{path} is {mode:04o} and the daemon answers")


def check_service() -> Check:
    info = service.status()
    if info["systemd"] != "running":
        return Check("service", "warn", "systemd is not running here, so the box is not supervised",
                     "on a systemd machine run `sudo aibox service install`; otherwise keep `aibox run` under a supervisor")
    if info["enabled"] in ("not installed", "", "not-found"):
        return Check("service", "warn", "aibox.service is not installed", "sudo aibox service install")
    if not info["active"].startswith("active"):
        return Check("service", "fail", f"aibox.service is {info['active']}, {info['enabled']}",
                     "see `journalctl -u aibox -e`, then `sudo systemctl restart aibox`")
    return Check("service", "ok", f"aibox.service is {info['active']}, {info['enabled']}: {info.get('status', '')}".rstrip(": "))
