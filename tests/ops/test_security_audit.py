"""`aibox security audit` finds each risky setting, says how to fix it, and exits 1;
a careful config passes with exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def audit(cfg: Path) -> tuple[int, list[dict]]:
    env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "AIBOX_CONFIG")}
    r = subprocess.run([sys.executable, "-m", "aibox", "--config", str(cfg), "security", "audit", "--json"],
                       capture_output=True, text=True, env=env)
    report = json.loads(r.stdout)
    assert report["ok"] == (r.returncode == 0)
    return r.returncode, report["findings"]


def box(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "aibox.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n{text}')
    cfg.chmod(0o600)
    return cfg


def test_careful_config_passes(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "api").write_text("k" * 32)
    (creds / "api").chmod(0o600)
    cfg = box(tmp_path, '[api]\nhost = "0.0.0.0"\napi_key = "credential:api"\n'
                        '[connectors.telegram]\ntoken = "credential:tg"\ndm_policy = "pairing"\n')
    agents = tmp_path / "state" / "agents"
    agents.mkdir(parents=True)
    (agents / "helper.toml").write_text('name = "helper"\ntools = ["time", "calculator"]\n')
    assert audit(cfg) == (0, [])


def test_each_risky_setting_is_reported(tmp_path: Path) -> None:
    secret = tmp_path / "discord.token"
    secret.write_text("discord-token-value")
    secret.chmod(0o644)
    cfg = box(tmp_path, '[api]\nhost = "0.0.0.0"\n'
                        '[connectors.telegram]\ntoken = "env:TG"\ndm_policy = "open"\n'
                        f'[connectors.discord]\ntoken = "file:{secret}"\n'
                        '[connectors.slack]\nbot_token = "xoxb-in-clear"\ndm_policy = "OPEN"\n')
    cfg.chmod(0o604)
    agents = tmp_path / "state" / "agents"
    agents.mkdir(parents=True)
    (agents / "yolo.toml").write_text('name = "yolo"\ntools = ["time", "*"]\n')
    (agents / "table.toml").write_text('name = "t"\n[tools]\nallow = ["all"]\n')
    (tmp_path / "state" / "aibox.db").write_bytes(b"")
    (tmp_path / "state" / "aibox.db").chmod(0o644)
    (tmp_path / "state" / "backups").mkdir()
    (tmp_path / "state" / "backups" / "aibox-1.tar.gz").write_bytes(b"")
    (tmp_path / "state" / "backups" / "aibox-1.tar.gz").chmod(0o604)
    code, findings = audit(cfg)
    assert code == 1
    by_setting = {f["setting"]: f for f in findings}
    assert set(by_setting) == {
        "api.host", "connectors.telegram.dm_policy", "connectors.slack.dm_policy", "config file",
        "connectors.discord.token", "connectors.slack.bot_token",
        f"{agents / 'table.toml'}: tools", f"{agents / 'yolo.toml'}: tools", "database", "backup",
    }
    assert by_setting["config file"]["fix"] == f"chmod 600 {cfg}"
    assert by_setting["connectors.discord.token"]["fix"] == f"chmod 600 {secret}"
    assert by_setting["connectors.telegram.dm_policy"]["fix"] == 'set dm_policy = "pairing" (or "allowlist")'
    assert by_setting["connectors.slack.bot_token"]["severity"] == "medium"
    assert "(*)" in by_setting[f"{agents / 'yolo.toml'}: tools"]["detail"]
    assert "xoxb-in-clear" not in json.dumps(findings) and "discord-token-value" not in json.dumps(findings)


def test_shipped_agents_pass_the_audit(tmp_path: Path) -> None:
    """The examples we ship must not be what the audit warns about."""
    assert audit(box(tmp_path, "")) == (0, [])


def test_human_output(tmp_path: Path) -> None:
    cfg = box(tmp_path, '[api]\nhost = "192.168.1.20"\n')
    r = subprocess.run([sys.executable, "-m", "aibox", "--config", str(cfg), "security", "audit"],
                       capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"})
    assert r.returncode == 1
    assert "high   api.host: the API listens on 192.168.1.20 without an api_key" in r.stdout
    assert "1 risky setting(s)" in r.stdout
