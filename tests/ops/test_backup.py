"""Backup round trip on a real database made by `Store.open`: create, verify, damage,
restore onto a box that has since changed, and the refusal while a daemon runs."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import subprocess
import sys
import tarfile
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from aibox.config import load_config
from aibox.ops import backup
from aibox.store import Store
from connectors.tables import ApprovedSender, PairingCode


@pytest.fixture
def box(tmp_path: Path):
    """A box with a config file, a database holding pairing state, and one user agent."""
    state = tmp_path / "state"
    cfg_path = tmp_path / "aibox.toml"
    cfg_path.write_text(f'state_dir = "{state}"\ndefault_model = "smollm2-135m-instruct"\n')
    cfg_path.chmod(0o600)
    config = load_config(cfg_path)
    store = Store.open(config.store_url)
    with store.session() as s:
        s.add(ApprovedSender(platform="telegram", sender_id="42", role="owner", name="Ann"))
        s.add(PairingCode(code="K7Q2PX", platform="discord", sender_id="99", chat_id="99",
                          expires_at=datetime.now(timezone.utc) + timedelta(hours=1)))
    store.close()
    agents = state / "agents"
    (agents / "helpers").mkdir(parents=True)
    (agents / "helpers" / "cook.toml").write_text('name = "cook"\ntools = ["time"]\n')
    (state / "cards").mkdir()
    (state / "cards" / "mine.toml").write_text('name = "mine"\n')
    return config


def query(config, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(backup.sqlite_path(config))) as conn, conn:
        return conn.execute(sql).fetchall()


def senders(config) -> list[tuple]:
    return query(config, "SELECT platform, sender_id, role FROM connector_senders ORDER BY 1")


def test_round_trip(box, tmp_path: Path) -> None:
    archive = backup.create(box, tmp_path / "b.tar.gz")
    assert archive.stat().st_mode & 0o777 == 0o600
    result = backup.verify(archive)
    assert result.ok, result.problems
    assert set(result.manifest["files"]) == {"database/aibox.db", "config/aibox.toml", "agents/helpers/cook.toml", "cards/mine.toml"}

    # The box changes after the backup: a sender is revoked, the config and an agent edited.
    query(box, "DELETE FROM connector_senders")
    box.source.write_text(box.source.read_text() + '\n[logging]\nlevel = "debug"\n')
    (box.state_path / "agents" / "helpers" / "cook.toml").write_text('name = "cook"\ntools = ["*"]\n')
    (box.state_path / "agents" / "new.toml").write_text('name = "new"\n')
    assert senders(box) == []

    done = backup.restore(box, archive)
    assert len(done) == 4, done
    assert senders(box) == [("telegram", "42", "owner")]
    assert query(box, "SELECT code FROM connector_pairing_codes") == [("K7Q2PX",)]
    assert "debug" not in box.source.read_text()
    assert box.source.stat().st_mode & 0o777 == 0o600
    assert (box.state_path / "agents" / "helpers" / "cook.toml").read_text().endswith('["time"]\n')
    assert not (box.state_path / "agents" / "new.toml").exists()
    # Nothing is lost: what the restore replaced sits beside it.
    kept = sorted(p.name.split(".pre-restore-")[0] for p in (box.state_path).iterdir() if ".pre-restore-" in p.name)
    assert kept == ["agents", "aibox.db", "cards"], "the old database was checkpointed: no stray WAL"
    assert any(".pre-restore-" in p.name for p in box.source.parent.iterdir())
    # The restored database still opens and migrates.
    Store.open(box.store_url).close()


def test_backup_while_the_database_is_written(box, tmp_path: Path) -> None:
    """The online backup API copies a consistent snapshot even with an open writer."""
    writer = sqlite3.connect(backup.sqlite_path(box))
    writer.execute("INSERT INTO connector_senders (platform, sender_id, role, approved_at) VALUES ('slack', 'U1', 'user', '2026-01-01')")
    writer.commit()
    writer.execute("BEGIN")
    writer.execute("INSERT INTO connector_senders (platform, sender_id, role, approved_at) VALUES ('slack', 'U2', 'user', '2026-01-01')")
    archive = backup.create(box, tmp_path / "live.tar.gz")
    writer.rollback()
    writer.close()
    assert backup.verify(archive).ok
    with tarfile.open(archive) as tar:
        data = tar.extractfile("database/aibox.db").read()
    copy = tmp_path / "copy.db"
    copy.write_bytes(data)
    with sqlite3.connect(copy) as conn:
        ids = [r[0] for r in conn.execute("SELECT sender_id FROM connector_senders WHERE platform = 'slack'")]
    assert ids == ["U1"]


def rewrite(archive: Path, change) -> None:
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    change(members)
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_verify_finds_damage(box, tmp_path: Path) -> None:
    archive = backup.create(box, tmp_path / "b.tar.gz")
    rewrite(archive, lambda m: m.update({"config/aibox.toml": b"state_dir = '/tmp/evil'\n"}))
    result = backup.verify(archive)
    assert result.problems == ["config/aibox.toml: sha256 does not match the manifest (the archive is damaged)"]
    with pytest.raises(backup.BackupError, match="failed verification"):
        backup.restore(box, archive)
    assert senders(box) == [("telegram", "42", "owner")], "a refused restore changes nothing"


def test_verify_finds_extra_and_missing_members(box, tmp_path: Path) -> None:
    archive = backup.create(box, tmp_path / "b.tar.gz")

    def change(m: dict) -> None:
        del m["agents/helpers/cook.toml"]
        m["agents/sneaky.toml"] = b"tools = ['*']\n"

    rewrite(archive, change)
    assert backup.verify(archive).problems == [
        "agents/helpers/cook.toml: listed in the manifest but missing from the archive",
        "agents/sneaky.toml: in the archive but not in the manifest",
    ]


def test_verify_rejects_a_corrupt_database_even_with_matching_manifest(box, tmp_path: Path) -> None:
    archive = backup.create(box, tmp_path / "b.tar.gz")

    def change(m: dict) -> None:
        db = bytearray(m["database/aibox.db"])
        db[0:16] = b"not sqlite at al"
        m["database/aibox.db"] = bytes(db)
        manifest = json.loads(m["manifest.json"])
        manifest["files"]["database/aibox.db"]["sha256"] = backup._sha256(bytes(db))
        m["manifest.json"] = json.dumps(manifest).encode()

    rewrite(archive, change)
    [problem] = backup.verify(archive).problems
    assert problem.startswith("database/aibox.db: not a SQLite database")


def test_verify_refuses_path_escapes(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../etc/cron.d/x")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    [problem] = backup.verify(archive).problems
    assert "refusing member '../../etc/cron.d/x'" in problem


def test_restore_refuses_while_the_daemon_runs(box, tmp_path: Path) -> None:
    archive = backup.create(box, tmp_path / "b.tar.gz")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(box.admin_socket))
        listener.listen(1)
        with pytest.raises(backup.BackupError, match="the daemon is running"):
            backup.restore(box, archive)


def test_cli_round_trip(box, tmp_path: Path) -> None:
    def aibox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "aibox", "--config", str(box.source), *args], capture_output=True, text=True)

    created = aibox("backup", "create", "--json")
    assert created.returncode == 0, created.stderr
    archive = Path(json.loads(created.stdout)["archive"])
    assert archive.parent == box.state_path / "backups"
    verified = aibox("backup", "verify", str(archive))
    assert verified.returncode == 0 and "4 files match their checksums" in verified.stdout
    restored = aibox("backup", "restore", str(archive), "--yes")
    assert restored.returncode == 0, restored.stderr
    missing = aibox("backup", "verify", str(tmp_path / "nope.tar.gz"))
    assert missing.returncode == 66 and missing.stderr.startswith("aibox: error:")
    archive.write_bytes(archive.read_bytes()[:-40])
    assert aibox("backup", "verify", str(archive)).returncode == 65
