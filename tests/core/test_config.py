"""Config loading: defaults, precedence, and errors that name the key."""

from __future__ import annotations

import pytest

from aibox.config import ConfigError, load_config
from aibox.daemon import Daemon


def test_no_file_runs_on_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("AIBOX_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("AIBOX_STATE_DIR", str(tmp_path / "state"))
    config = load_config()
    assert config.api.host == "127.0.0.1"
    assert config.default_model == "smollm2-135m-instruct"
    assert config.state_path == tmp_path / "state"
    assert config.store_url == f"sqlite:///{tmp_path / 'state' / 'aibox.db'}"


def test_explicit_path_beats_environment(tmp_path, monkeypatch):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('[api]\nport = 1111\n')
    b.write_text('[api]\nport = 2222\n')
    monkeypatch.setenv("AIBOX_CONFIG", str(b))
    assert load_config(a).api.port == 1111
    assert load_config().api.port == 2222


def test_named_file_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[api]\nport = 'eighty'\n", "key 'api.port'"),
        ("[api]\nport = 70000\n", "key 'api.port'"),
        ("[runtime]\nqueue_size = 0\n", "key 'runtime.queue_size'"),
        ("[runtime]\nthreadz = 2\n", "key 'runtime.threadz': unknown key"),
        ("[logging]\nlevel = 'loud'\n", "key 'logging.level'"),
        ("[api\nport = 1\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key_and_problem(tmp_path, text, expected):
    path = tmp_path / "aibox.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert expected in str(e.value)
    assert str(path) in str(e.value)


def test_non_loopback_api_requires_a_key(tmp_path):
    path = tmp_path / "aibox.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n[api]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="api.api_key"):
        Daemon(load_config(path))
    # --host overrides the file, and the same rule applies to it
    loopback = tmp_path / "loopback.toml"
    loopback.write_text(f'state_dir = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match="api.api_key"):
        Daemon(load_config(loopback), host="0.0.0.0")


def test_api_key_from_env_and_never_in_repr(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_AIBOX_KEY", "sekrit-value-123")
    path = tmp_path / "aibox.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n[api]\nhost = "0.0.0.0"\napi_key = "env:TEST_AIBOX_KEY"\n')
    config = load_config(path)
    daemon = Daemon(config)
    assert daemon.api_key == "sekrit-value-123"
    assert "sekrit" not in repr(config)
    assert "sekrit" not in config.model_dump_json()


def test_api_key_from_missing_env_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = tmp_path / "aibox.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n[api]\napi_key = "env:NOT_SET_ANYWHERE"\n')
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        Daemon(load_config(path))
