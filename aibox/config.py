"""The one TOML config file, validated, and where the box keeps its state.

The file is found from `--config`, then `AIBOX_CONFIG`, then the platform's usual
config dir. With no file at all the box runs on defaults. A bad file stops start-up
with a message naming the key and the problem, never a traceback.
May import: aibox.secrets.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aibox.secrets import Secret


MCP_SERVER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ConfigError(Exception):
    """The config file is missing, unreadable or invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8642, ge=0, le=65535)
    api_key: Secret | None = None
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


class RuntimeConfig(_Section):
    threads: int = Field(0, ge=0, description="0 means one per CPU core")
    max_loaded: int = Field(2, ge=1, description="cap on models held in memory at once")
    keep_alive_s: float = Field(600.0, ge=0, description="unload a model idle this long")
    queue_size: int = Field(8, ge=1, description="requests waiting per model before 'busy'")
    state_cache_mb: int = Field(256, ge=0, description="memory for saved chat KV states")
    kv_reuse: bool = Field(True, description="reuse the KV cache of earlier turns (off only to measure it)")
    max_tokens: int = Field(1024, ge=1, description="default completion length")


class RouterConfig(_Section):
    quality_margin: float = Field(5.0, ge=0, le=100, description="points of right answers a model may trail the best measured one for a task kind")


class StoreConfig(_Section):
    url: str = ""


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    dir: Path | None = Field(None, description="where aibox.log goes; default: $LOGS_DIRECTORY, else <state_dir>/logs")


class ServiceConfig(_Section):
    """What `aibox service install` writes into the systemd unit."""

    memory_max: str = Field("8G", pattern=r"^(\d+[KMGT]?|\d{1,3}%|infinity)$", description="systemd MemoryMax=")
    watchdog_s: int = Field(60, ge=5, description="systemd WatchdogSec=; the daemon pings at half of it")
    stop_timeout_s: int = Field(30, ge=5, description="systemd TimeoutStopSec=: the daemon's grace period on SIGTERM")
    user: str = Field("aibox", pattern=r"^[a-z_][a-z0-9_-]{0,30}$", description="system user and group the service runs as")


class AgentsConfig(_Section):
    timezone: str = Field("UTC", description="time zone of schedules unless the user names one, e.g. Europe/Berlin")
    default_agent: str | None = Field(None, description="the agent chats talk to until they /use another; else the one marked default")
    inbox_retention_days: int = Field(30, ge=1, description="days an answered message (and its text) stays in the inbox; unanswered ones stay until answered")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use a name like Europe/Berlin or UTC") from None
        return v


class McpServerConfig(_Section):
    """One MCP server: a command the box starts (stdio) or a URL it connects to (streamable HTTP)."""

    command: str | None = Field(None, min_length=1, description="program to start; talks MCP over its stdin/stdout")
    args: list[str] = Field(default_factory=list)
    env: dict[str, Secret] = Field(default_factory=dict, description="extra environment; values may be secret references")
    url: str | None = Field(None, pattern=r"^https?://", description="a streamable HTTP endpoint, e.g. http://127.0.0.1:8000/mcp")
    headers: dict[str, Secret] = Field(default_factory=dict, description='HTTP headers; values from the secrets store, e.g. "env:TOKEN"')
    enabled: bool = True
    timeout_s: float = Field(30.0, gt=0, le=3600, description="time limit of one tool call")
    max_result_chars: int = Field(8000, ge=100, description="longer results are cut, with a note saying so")
    approval: bool = Field(False, description="the owner approves each call of this server's tools")

    @model_validator(mode="after")
    def _one_transport(self) -> "McpServerConfig":
        if (self.command is None) == (self.url is None):
            raise ValueError("set either command (stdio) or url (streamable HTTP), not both or neither")
        if self.url is None and self.headers:
            raise ValueError("headers are only sent to a url server")
        if self.url is not None and (self.args or self.env):
            raise ValueError("args and env are only for a command server")
        return self


class McpConfig(_Section):
    servers: dict[str, McpServerConfig] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _names(cls, v: dict[str, McpServerConfig]) -> dict[str, McpServerConfig]:
        for name in v:
            if not MCP_SERVER_NAME.match(name):
                raise ValueError(f"server name {name!r}: use lower-case letters, digits, '-' or '_', starting with a letter")
        return v


class WebFetchConfig(_Section):
    allow_hosts: list[str] = Field(default_factory=list, description="hosts fetched even on loopback or private addresses")
    max_bytes: int = Field(2_000_000, ge=1024, description="body bytes read; the rest is cut")
    max_chars: int = Field(8000, ge=100, description="text handed to the model")
    timeout_s: float = Field(20.0, gt=0, le=300, description="the whole fetch, redirects included")
    max_redirects: int = Field(5, ge=0, le=20)


class FilesConfig(_Section):
    max_file_bytes: int = Field(1_000_000, ge=1, description="largest file an agent may write")
    max_workspace_bytes: int = Field(100_000_000, ge=1, description="all files of one agent's workspace")
    max_read_chars: int = Field(8000, ge=100, description="text of one read handed to the model")


class RunConfig(_Section):
    timeout_s: float = Field(30.0, gt=0, le=3600, description="wall-clock limit of one run")
    cpu_s: int = Field(20, ge=1, description="CPU seconds")
    memory_mb: int = Field(512, ge=16, description="address space")
    max_processes: int = Field(32, ge=1, description="processes and threads inside the sandbox")
    max_file_mb: int = Field(50, ge=1, description="largest file a run may write")
    max_output_chars: int = Field(8000, ge=100, description="stdout and stderr handed back, each")
    network_agents: list[str] = Field(default_factory=list, description="agents whose runs may use the network")
    python: str = Field("/usr/bin/python3", description="the interpreter inside the sandbox (the system's, read-only)")
    sandbox_uid: int = Field(65534, ge=1, description="when the box runs as root, runs drop to this user")


class ToolsConfig(_Section):
    web_fetch: WebFetchConfig = WebFetchConfig()
    files: FilesConfig = FilesConfig()
    run: RunConfig = RunConfig()


class Config(_Section):
    """Everything the daemon reads from its config file."""

    state_dir: Path | None = None
    default_model: str = "smollm2-135m-instruct"
    models_dir: Path | None = None
    api: ApiConfig = ApiConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    store: StoreConfig = StoreConfig()
    router: RouterConfig = RouterConfig()
    logging: LoggingConfig = LoggingConfig()
    service: ServiceConfig = ServiceConfig()
    connectors: dict[str, dict[str, Any]] = {}
    agents: AgentsConfig = AgentsConfig()
    mcp: McpConfig = McpConfig()
    tools: ToolsConfig = ToolsConfig()
    source: Path | None = Field(None, exclude=True)

    @field_validator("state_dir", "models_dir")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser() if v is not None else None

    @property
    def state_path(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        env = os.environ.get("AIBOX_STATE_DIR") or os.environ.get("STATE_DIRECTORY")
        if env:
            return Path(env.split(":")[0])
        return _user_dir("XDG_STATE_HOME", ".local/state") / "aibox"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.state_path / "models"

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_path / 'aibox.db'}"

    @property
    def admin_socket(self) -> Path:
        return self.state_path / "admin.sock"

    @property
    def logs_path(self) -> Path:
        if self.logging.dir is not None:
            return self.logging.dir.expanduser()
        env = os.environ.get("LOGS_DIRECTORY")
        return Path(env.split(":")[0]) if env else self.state_path / "logs"

    @property
    def threads(self) -> int:
        return self.runtime.threads or os.cpu_count() or 1


def _user_dir(env: str, fallback: str) -> Path:
    base = os.environ.get(env)
    return Path(base) if base else Path.home() / fallback


def default_config_path() -> Path:
    """The platform's usual place: /etc/aibox for root (the service), XDG for users."""
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        return Path(os.environ.get("CONFIGURATION_DIRECTORY", "/etc/aibox")) / "aibox.toml"
    return _user_dir("XDG_CONFIG_HOME", ".config") / "aibox" / "aibox.toml"


def find_config_path(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("AIBOX_CONFIG")
    if env:
        return Path(env).expanduser()
    return default_config_path()


def load_config(path: str | Path | None = None) -> Config:
    """Loads and validates the config; an explicitly named file must exist."""
    explicit = path is not None or bool(os.environ.get("AIBOX_CONFIG"))
    cfg_path = find_config_path(path)
    if not cfg_path.exists():
        if explicit:
            raise ConfigError(f"config file {cfg_path} does not exist")
        return Config()
    try:
        data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{cfg_path}: cannot read: {e.strerror}") from None
    config = parse_config(data, origin=str(cfg_path))
    config.source = cfg_path
    return config


def parse_config(data: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {describe_validation_error(e)}") from None


def describe_validation_error(e: ValidationError) -> str:
    """One line per problem, each naming the dotted key, without echoing secret values."""
    problems = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"key '{key}': {msg}")
    return "; ".join(problems)
