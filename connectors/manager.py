"""Running the configured connectors next to the daemon.

`ConnectorManager(config, store, responder)` validates `[connectors.*]` (errors name the
key, like `connectors.telegram.token`), starts every enabled connector side by side and
wires each to the gateway. A connector that cannot start (a bad token, an unreachable
server) shows as "failed" with the reason in `health()` while the others keep running.

A platform module plugs in by exposing a `Connector` subclass with a `settings_model`
class attribute (a `ConnectorSettings` subclass) and an `__init__(self, settings)`;
`PLATFORMS` maps the config name to it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
from datetime import datetime, timezone

from pydantic import ValidationError

from aibox.config import Config, ConfigError, describe_validation_error
from aibox.secrets import redact
from aibox.store import Store
from connectors.audit_log import AuditLog
from connectors.base import Connector, Health
from connectors.errors import ConnectorError
from connectors.gateway import Gateway, Responder
from connectors.inbox import Inbox
from connectors.outbound import Outbound
from connectors.pairing import Approved, Pairing, Pending
from connectors.settings import ConnectorSettings

log = logging.getLogger(__name__)

PLATFORMS = {
    "telegram": "connectors.telegram:TelegramConnector",
    "discord": "connectors.discord:DiscordConnector",
    "slack": "connectors.slack:SlackConnector",
    "whatsapp": "connectors.whatsapp:WhatsAppConnector",
}


def connector_class(name: str) -> type[Connector]:
    module, _, cls = PLATFORMS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_settings(raw: dict[str, dict]) -> dict[str, ConnectorSettings]:
    """Validates every `[connectors.NAME]` table against its platform's settings model."""
    settings: dict[str, ConnectorSettings] = {}
    for name, data in raw.items():
        if name not in PLATFORMS:
            raise ConfigError(f"key 'connectors.{name}': unknown connector; known: {', '.join(sorted(PLATFORMS))}")
        if not isinstance(data, dict):
            raise ConfigError(f"key 'connectors.{name}': must be a table")
        try:
            model = connector_class(name).settings_model
        except ImportError as e:
            raise ConfigError(f"key 'connectors.{name}': connector is not installed ({e})") from None
        try:
            settings[name] = model.model_validate(data)
        except ValidationError as e:
            raise ConfigError(re.sub(r"key '", f"key 'connectors.{name}.", describe_validation_error(e))) from None
    return settings


class ConnectorManager:
    """The chat side of the box: the connectors, their gateway and the outbound path
    (`outbound`, which scheduled jobs, alerts and long answers post through too)."""

    def __init__(
        self, config: Config, store: Store, responder: Responder, inbox: Inbox | None = None, outbound: Outbound | None = None
    ) -> None:
        self.settings = load_settings(config.connectors)
        self.pairing = Pairing(store, {name: s.owner for name, s in self.settings.items()})
        self.audit = AuditLog(store)
        self.outbound = outbound if outbound is not None else Outbound(inbox)
        self.gateway = Gateway(self.pairing, self.audit, responder, inbox=inbox, outbound=self.outbound, alert_owner=self.alert_owner)
        self.connectors: dict[str, Connector] = {}
        self._problems: dict[str, Health] = {}

    async def start(self) -> None:
        """Starts every enabled connector at once; never raises for one that fails."""
        names = [name for name, s in self.settings.items() if s.enabled]
        await asyncio.gather(*(self._start_one(name) for name in names))

    async def _start_one(self, name: str) -> None:
        settings = self.settings[name]
        try:
            connector = connector_class(name)(settings)
            sink = self.gateway.attach(connector, settings)
            self.connectors[name] = connector
            await connector.start(sink)
        except Exception as e:  # one platform's failure must not stop the others
            reason = redact(f"{type(e).__name__}: {e}")
            log.error("connector %s failed to start: %s", name, reason)
            self._problems[name] = Health("failed", reason)
            return
        state = connector.health()
        if state.state == "failed":
            log.error("connector %s failed to start: %s", name, state.detail)
        else:
            log.info("connector %s started", name)

    def reload(self, config: Config) -> list[str]:
        """Applies a reloaded config's access settings (dm_policy, allow lists, owner,
        admins, groups, rate limits, edit pacing) to the running connectors in place;
        returns the platforms whose other settings (tokens, URLs, enabling) changed and
        apply after a restart. Raises ConfigError for an invalid table, changing nothing."""
        fresh = load_settings(config.connectors)
        needs_restart = sorted(set(fresh) ^ set(self.settings))
        for name, new in fresh.items():
            old = self.settings.get(name)
            if old is None:
                continue
            access = {key: getattr(new, key) for key in ConnectorSettings.model_fields if key != "enabled"}
            if old.model_copy(update=access) != new:
                needs_restart.append(name)
            applied = old.model_copy(update=access)
            self.settings[name] = applied
            self.pairing.configured_owners[name] = applied.owner
            if name in self.connectors:
                self.gateway.update_settings(name, applied)
                self.outbound.streamer(name).pacer.interval = applied.edit_interval_s
        return needs_restart

    async def stop(self) -> None:
        await self.gateway.drain()
        results = await asyncio.gather(*(c.stop() for c in self.connectors.values()), return_exceptions=True)
        for name, result in zip(self.connectors, results):
            if isinstance(result, Exception):
                log.warning("connector %s did not stop cleanly: %s", name, redact(str(result)))
        await self.audit.flush()

    def health(self) -> dict[str, dict[str, str]]:
        """Per configured connector: state, detail and since, for `aibox status`."""
        report: dict[str, dict[str, str]] = {}
        for name, settings in self.settings.items():
            if name in self._problems:
                h = self._problems[name]
            elif not settings.enabled:
                h = Health("stopped", "disabled in config")
            elif name in self.connectors:
                h = self.connectors[name].health()
            else:
                h = Health("starting", "")
            report[name] = {"state": h.state, "detail": redact(h.detail), "since": _iso(h.since)}
        return report

    def owner_chat(self, platform: str) -> str | None:
        """Where the owner reads on a platform: their approved DM chat, else their configured id."""
        for approved in self.pairing.approved():
            if approved.platform == platform and approved.role == "owner" and approved.chat_id:
                return approved.chat_id
        settings = self.settings.get(platform)
        return settings.owner if settings is not None else None

    async def alert_owner(self, platform: str, text: str) -> None:
        chat = self.owner_chat(platform)
        if chat is None:
            raise ConnectorError(f"no owner known on {platform}")
        await self.outbound.deliver(platform, chat, text)

    def pending(self) -> list[Pending]:
        return self.pairing.pending()

    def approved(self) -> list[Approved]:
        return self.pairing.approved()

    def approve(self, code: str) -> Approved:
        approved = self.pairing.approve(code)
        self.audit.record(approved.platform, "pairing_approved", approved.chat_id, approved.sender_id, "via admin api")
        self.gateway.notify_approved(approved.platform, approved.chat_id)
        return approved

    def deny(self, code: str) -> Pending:
        pending = self.pairing.deny(code)
        self.audit.record(pending.platform, "pairing_denied", pending.chat_id, pending.sender_id, "via admin api")
        return pending

    def revoke(self, sender: str) -> list[Approved]:
        gone = self.pairing.revoke(sender)
        for a in gone:
            self.audit.record(a.platform, "pairing_revoked", a.chat_id, a.sender_id, "via admin api")
        return gone


def _iso(when: datetime) -> str:
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()
