"""`aibox doctor` on real boxes in temp dirs: a healthy one passes, and each kind of
problem fails its own check, names the file and prints the fix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


from aibox.store import Store


def write_box(tmp_path: Path, models_dir: Path, extra: str = "") -> Path:
    state = tmp_path / "state"
    cfg = tmp_path / "aibox.toml"
    cfg.write_text(f'state_dir = "{state}"\nmodels_dir = "{models_dir}"\n{extra}')
    cfg.chmod(0o600)
    Store.open(f"sqlite:///{state / 'aibox.db'}").close()
    return cfg


def doctor(cfg: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict]]:
    run_env = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "AIBOX_CONFIG")} | (env or {})
    r = subprocess.run([sys.executable, "-m", "aibox", "--config", str(cfg), "doctor", "--json"],
                       capture_output=True, text=True, env=run_env)
    report = json.loads(r.stdout)
    assert report["ok"] == (r.returncode == 0)
    return r.returncode, {c["name"]: c for c in report["checks"]}


def test_healthy_box_passes(tmp_path: Path, models_dir: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "tg").write_text("123:abc-token\n")
    (creds / "tg").chmod(0o600)
    cfg = write_box(tmp_path, models_dir, '[connectors.telegram]\ntoken = "credential:tg"\n')
    code, checks = doctor(cfg)
    assert code == 0, checks
    assert checks["config"]["status"] == "ok" and checks["config permissions"]["detail"].endswith("is 0600")
    assert checks["secret connectors.telegram.token"]["status"] == "ok"
    assert checks["connectors"] == {"name": "connectors", "status": "ok", "detail": "settings valid; enabled: telegram", "fix": ""}
    assert checks["model smollm2-135m-instruct"]["status"] == "ok"
    assert checks["database"]["status"] == "ok"
    assert checks["disk space"]["status"] in ("ok", "warn")
    assert "123:abc-token" not in json.dumps(checks)


def test_world_readable_config_fails_with_chmod_fix(tmp_path: Path, models_dir: Path) -> None:
    cfg = write_box(tmp_path, models_dir)
    cfg.chmod(0o644)
    code, checks = doctor(cfg)
    assert code == 1
    assert checks["config permissions"] == {"name": "config permissions", "status": "fail",
                                             "detail": f"{cfg} has mode 0644: others on the box can read it",
                                             "fix": f"chmod 600 {cfg}"}


def test_invalid_config_names_the_key(tmp_path: Path, models_dir: Path) -> None:
    cfg = write_box(tmp_path, models_dir, "[runtime]\nqueue_size = 0\n")
    code, checks = doctor(cfg)
    assert code == 1
    assert "runtime.queue_size" in checks["config"]["detail"] and checks["config"]["status"] == "fail"


def test_bad_connector_settings_fail(tmp_path: Path, models_dir: Path) -> None:
    cfg = write_box(tmp_path, models_dir, '[connectors.telegram]\ntoken = "env:TG"\ndm_policy = "everyone"\n')
    code, checks = doctor(cfg)
    assert code == 1
    assert checks["connectors"]["status"] == "fail" and "connectors.telegram.dm_policy" in checks["connectors"]["detail"]


def test_secrets_missing_or_exposed(tmp_path: Path, models_dir: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "slack").write_text("xoxb-secret-value\n")
    (creds / "slack").chmod(0o644)
    cfg = write_box(tmp_path, models_dir, '[api]\napi_key = "env:AIBOX_TEST_UNSET_KEY"\n'
                    '[connectors.slack]\nbot_token = "credential:slack"\napp_token = "credential:slack_app"\n'
                    '[connectors.discord]\ntoken = "literal-token-in-config"\n')
    code, checks = doctor(cfg)
    assert code == 1
    assert checks["secret api.api_key"]["status"] == "fail"
    assert checks["secret connectors.slack.bot_token"]["fix"] == f"chmod 600 {creds / 'slack'}"
    missing = checks["secret connectors.slack.app_token"]
    assert missing["status"] == "fail" and missing["fix"].startswith(f"create {creds / 'slack_app'}")
    assert checks["secret connectors.discord.token"]["status"] == "warn"
    text = json.dumps(checks)
    assert "xoxb-secret-value" not in text and "literal-token-in-config" not in text


def test_damaged_model_file_fails_with_pull_fix(tmp_path: Path, models_dir: Path) -> None:
    bad_models = tmp_path / "models"
    bad_models.mkdir()
    (bad_models / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
    cfg = write_box(tmp_path, bad_models)
    code, checks = doctor(cfg)
    assert code == 1
    check = checks["model smollm2-135m-instruct"]
    assert check["status"] == "fail" and "the card says" in check["detail"]
    assert check["fix"] == "aibox models pull smollm2-135m-instruct"


def test_open_admin_socket_fails(tmp_path: Path, models_dir: Path) -> None:
    cfg = write_box(tmp_path, models_dir)
    path = tmp_path / "state" / "admin.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(1)
        os.chmod(path, 0o666)
        code, checks = doctor(cfg)
        assert code == 1 and checks["admin socket"]["fix"].startswith(f"chmod 660 {path}")
        os.chmod(path, 0o660)
        code, checks = doctor(cfg)
        assert code == 0 and checks["admin socket"]["status"] == "ok"


def test_human_output_prints_each_fix(tmp_path: Path, models_dir: Path) -> None:
    cfg = write_box(tmp_path, models_dir)
    cfg.chmod(0o640)
    r = subprocess.run([sys.executable, "-m", "aibox", "--config", str(cfg), "doctor"], capture_output=True, text=True,
                       env=os.environ | {"COLUMNS": "200"})
    assert r.returncode == 1
    assert f"FAIL config permissions: {cfg} has mode 0640" in r.stdout
    assert f"fix: chmod 600 {cfg}" in r.stdout
