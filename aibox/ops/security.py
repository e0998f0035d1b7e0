"""`aibox security audit`: settings that make the box easy to abuse, each with its fix.

The check reads the config, the files it points to and the agent definitions; it does not
need the daemon. Any finding makes the command exit non-zero, so it can gate a deploy.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from agents.registry import SHIPPED_DIR as SHIPPED_AGENTS
from aibox.config import Config
from aibox.ops.doctor import credential_path
from aibox.secrets import config_secrets

Severity = Literal["high", "medium"]
BROAD_TOOLS = {"*", "all", "any"}


@dataclass
class Finding:
    severity: Severity
    setting: str
    detail: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def security_audit(config: Config) -> list[Finding]:
    findings = check_api(config)
    findings += check_policies(config.connectors)
    findings += check_files(config)
    findings += check_agents([SHIPPED_AGENTS, config.state_path / "agents"])
    return findings


def check_api(config: Config) -> list[Finding]:
    if config.api.is_loopback() or config.api.api_key is not None:
        return []
    return [Finding("high", "api.host", f"the API listens on {config.api.host} without an api_key: anyone who can reach "
                    "the port can use the models", 'set api.api_key = "credential:api_key", or api.host = "127.0.0.1"')]


def check_policies(connectors: dict[str, Any]) -> list[Finding]:
    """An `open` policy lets any stranger talk to the models, and so to the tools."""
    findings = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif prefix.endswith("policy") and isinstance(value, str) and value.lower() == "open":
            findings.append(Finding("high", prefix, "open: anyone who finds the bot gets answers from the box",
                                    f'set {prefix.rsplit(".", 1)[-1]} = "pairing" (or "allowlist")'))

    walk("connectors", connectors)
    return findings


def _others_can_read(path: Path) -> bool:
    return path.exists() and bool(path.stat().st_mode & 0o007)


def check_files(config: Config) -> list[Finding]:
    findings = []
    if config.source is not None and _others_can_read(config.source):
        mode = config.source.stat().st_mode & 0o777
        findings.append(Finding("high", "config file", f"{config.source} has mode {mode:04o}: every local user can read it",
                                f"chmod 600 {config.source}"))
    for key, secret in config_secrets(config.api.api_key, config.connectors):
        if secret.kind == "literal":
            findings.append(Finding("medium", key, "the secret is written in clear in the config file",
                                    f'put it in a credential file and write {key.rsplit(".", 1)[-1]} = "credential:NAME"'))
            continue
        name = secret.ref.partition(":")[2]
        path = Path(name).expanduser() if secret.kind == "file" else credential_path(config, name) if secret.kind == "credential" else None
        if path is not None and _others_can_read(path):
            mode = path.stat().st_mode & 0o777
            findings.append(Finding("high", key, f"{path} has mode {mode:04o}: every local user can read the secret",
                                    f"chmod 600 {path}"))
    if config.store_url.startswith("sqlite:///"):
        db = Path(config.store_url.removeprefix("sqlite:///"))
        if _others_can_read(db):
            findings.append(Finding("high", "database", f"{db} can be read by every local user: it holds chats, memory "
                                    "and pairing state", f"chmod 600 {db}"))
    backups = config.state_path / "backups"
    for archive in sorted(backups.glob("*.tar.gz")) if backups.is_dir() else []:
        if _others_can_read(archive):
            findings.append(Finding("high", "backup", f"{archive} can be read by every local user", f"chmod 600 {archive}"))
    if _others_can_read(config.admin_socket):
        findings.append(Finding("high", "admin socket", f"{config.admin_socket} is open to every local user",
                                f"chmod 660 {config.admin_socket}; the daemon sets this on start"))
    return findings


def check_agents(directories: list[Path]) -> list[Finding]:
    """Tools are denied by default; a wildcard grant hands an agent every tool, present and future."""
    findings = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*.toml")):
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as e:
                findings.append(Finding("medium", str(path), f"cannot be read, so it cannot be checked: {e}", "fix the file"))
                continue
            tools = data.get("tools", [])
            if isinstance(tools, dict):
                tools = tools.get("allow", [])
            if isinstance(tools, str):
                tools = [tools]
            broad = [t for t in tools if isinstance(t, str) and (t.lower() in BROAD_TOOLS or "*" in t)]
            if broad:
                findings.append(Finding("high", f"{path}: tools", f"grants tools broadly ({', '.join(broad)})",
                                        "list only the tools this agent needs, by name"))
    return findings
