"""Backups: one archive holding everything a box cannot pull again.

That is the database (chats, memory, jobs, pairing state), the config file and the
user-made agents and model cards in the state dir; model files are not included, `aibox models pull` gets them
back. The database is copied with SQLite's online backup API, so a running daemon can
keep writing. `manifest.json` lists every member with its sha256; `verify` re-hashes them
and checks the database's integrity; `restore` only runs on a stopped box and moves what it
replaces aside instead of deleting it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from aibox.config import Config, find_config_path
from aibox.ops.doctor import daemon_running

FORMAT = "aibox-backup"
VERSION = 1
MANIFEST = "manifest.json"
DB_MEMBER = "database/aibox.db"
CONFIG_MEMBER = "config/aibox.toml"
USER_DIRS = ("agents", "cards")


class BackupError(Exception):
    """The backup cannot be made, read or restored; the message says which file and why."""


@dataclass
class VerifyResult:
    archive: Path
    problems: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def sqlite_path(config: Config) -> Path:
    url = config.store_url
    if not url.startswith("sqlite:///"):
        raise BackupError(f"backups cover the built-in SQLite database only; {url.split(':')[0]} databases need their own dump tool")
    return Path(url.removeprefix("sqlite:///"))


def user_dirs(config: Config) -> dict[str, Path]:
    """The state dir's folders of user-made files: agents and model cards."""
    return {name: config.state_path / name for name in USER_DIRS}


def default_archive_path(config: Config) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return config.state_path / "backups" / f"aibox-{stamp}.tar.gz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _copy_database(src: Path, dst: Path) -> None:
    """SQLite's online backup: a consistent copy even while the daemon writes."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    target = sqlite3.connect(dst)
    try:
        source.backup(target)
    except sqlite3.Error as e:
        raise BackupError(f"cannot back up the database {src}: {e}") from None
    finally:
        target.close()
        source.close()


def create(config: Config, archive: Path | None = None) -> Path:
    """Writes the archive (mode 0600: it holds the config and pairing state) and returns its path."""
    db = sqlite_path(config)
    if not db.is_file():
        raise BackupError(f"there is no database at {db}; start the box once before backing it up")
    archive = archive or default_archive_path(config)
    archive.parent.mkdir(parents=True, exist_ok=True)
    members: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(dir=archive.parent) as tmp:
        copy = Path(tmp) / "aibox.db"
        _copy_database(db, copy)
        members[DB_MEMBER] = copy.read_bytes()
    config_file = config.source
    if config_file is not None and config_file.is_file():
        members[CONFIG_MEMBER] = config_file.read_bytes()
    for name, folder in user_dirs(config).items():
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                members[f"{name}/{path.relative_to(folder).as_posix()}"] = path.read_bytes()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": {"database": str(db), "config": str(config_file) if config_file else None, **{name: str(folder) for name, folder in user_dirs(config).items()}},
        "files": {name: {"sha256": _sha256(data), "size": len(data)} for name, data in members.items()},
    }
    tmp_archive = archive.with_name(archive.name + ".part")
    fd = os.open(tmp_archive, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in [(MANIFEST, json.dumps(manifest, indent=2).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(datetime.now(timezone.utc).timestamp())
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp_archive, archive)
    return archive


def _read_members(archive: Path) -> dict[str, bytes]:
    """Every regular member by name; links, devices and paths that escape are refused."""
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except (OSError, tarfile.TarError) as e:
        raise BackupError(f"{archive} is not a readable backup archive: {e}") from None
    members: dict[str, bytes] = {}
    with tar:
        try:
            for info in tar.getmembers():
                name = info.name
                if not info.isfile() or name.startswith("/") or ".." in Path(name).parts:
                    raise BackupError(f"{archive}: refusing member {name!r} (not a plain relative file)")
                f = tar.extractfile(info)
                members[name] = f.read() if f else b""
        except (OSError, EOFError, zlib.error, tarfile.TarError) as e:
            raise BackupError(f"{archive} is truncated or damaged: {e or type(e).__name__}") from None
    return members


def verify(archive: Path) -> VerifyResult:
    result = VerifyResult(archive)
    try:
        members = _read_members(archive)
    except BackupError as e:
        result.problems.append(str(e))
        return result
    try:
        manifest = json.loads(members.pop(MANIFEST))
    except KeyError:
        result.problems.append(f"{archive}: no {MANIFEST}")
        return result
    except ValueError as e:
        result.problems.append(f"{archive}: {MANIFEST} is not valid JSON: {e}")
        return result
    result.manifest = manifest
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        result.problems.append(f"{archive}: not an {FORMAT} v{VERSION} archive")
        return result
    listed: dict[str, dict] = manifest.get("files", {})
    for name, meta in listed.items():
        if name not in members:
            result.problems.append(f"{name}: listed in the manifest but missing from the archive")
        elif _sha256(members[name]) != meta.get("sha256") or len(members[name]) != meta.get("size"):
            result.problems.append(f"{name}: sha256 does not match the manifest (the archive is damaged)")
    for name in sorted(set(members) - set(listed)):
        result.problems.append(f"{name}: in the archive but not in the manifest")
    if DB_MEMBER not in listed:
        result.problems.append(f"{DB_MEMBER}: the archive holds no database")
    elif not result.problems:
        problem = _database_problem(members[DB_MEMBER])
        if problem:
            result.problems.append(f"{DB_MEMBER}: {problem}")
    return result


def _database_problem(data: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".db") as f:
        f.write(data)
        f.flush()
        try:
            with sqlite3.connect(f"file:{f.name}?mode=ro", uri=True) as conn:
                check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.Error as e:
            return f"not a SQLite database: {e}"
    return "" if check == "ok" else f"integrity check says {check}"


def _checkpoint(db: Path) -> None:
    """Folds the write-ahead log into the database file, so the copy kept aside is whole."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as e:
        raise BackupError(f"cannot checkpoint the current database {db} before replacing it: {e}") from None
    finally:
        conn.close()


def _move_aside(path: Path, stamp: str) -> Path | None:
    if not path.exists():
        return None
    aside = path.with_name(f"{path.name}.pre-restore-{stamp}")
    os.replace(path, aside)
    return aside


def _install(data: bytes, dest: Path, mode: int) -> None:
    """Writes a restored file with the owner of its directory (the service user, when root restores)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".restoring")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if os.geteuid() == 0:
        st = dest.parent.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, dest)


def restore(config: Config, archive: Path, config_path: Path | None = None) -> list[str]:
    """Puts the archive back; what it replaces is kept beside it as `*.pre-restore-<time>`."""
    if daemon_running(config.admin_socket):
        raise BackupError("the daemon is running: stop it first (`sudo systemctl stop aibox`), then restore")
    result = verify(archive)
    if not result.ok:
        raise BackupError(f"{archive} failed verification: " + "; ".join(result.problems))
    members = _read_members(archive)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    done: list[str] = []
    db = sqlite_path(config)
    if db.exists():
        _checkpoint(db)
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists():
            _move_aside(side, stamp)
    aside = _move_aside(db, stamp)
    _install(members[DB_MEMBER], db, 0o600)
    done.append(f"database -> {db}" + (f" (previous kept as {aside.name})" if aside else ""))
    if CONFIG_MEMBER in members:
        target = config_path or config.source or find_config_path()
        aside = _move_aside(target, stamp)
        _install(members[CONFIG_MEMBER], target, 0o600)
        done.append(f"config -> {target}" + (f" (previous kept as {aside.name})" if aside else ""))
    for name, folder in user_dirs(config).items():
        files = {n.removeprefix(f"{name}/"): d for n, d in members.items() if n.startswith(f"{name}/")}
        if not files and not folder.exists():
            continue
        aside = _move_aside(folder, stamp)
        folder.mkdir(parents=True, exist_ok=True)
        if aside is not None and os.geteuid() == 0:
            st = aside.stat()
            os.chown(folder, st.st_uid, st.st_gid)
        for rel, data in files.items():
            _install(data, folder / rel, 0o640)
        done.append(f"{len(files)} {name} file(s) -> {folder}" + (f" (previous kept as {aside.name})" if aside else ""))
    return done

