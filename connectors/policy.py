"""Who may command the box through a connector: the decision for one inbound message.

`decide` is pure: it takes the message, the connector's settings and what pairing
knows about the sender, and says what to do. The gateway carries the decision out and
records it in the audit log.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from connectors.base import InboundMessage
from connectors.settings import ConnectorSettings

ADMIN_COMMANDS = frozenset({"pairing", "agents", "jobs", "models"})
# Commands that change a setting for everyone in the chat: free in a direct chat (the sender's
# own), for the owner and admins in a group. Asking without an argument only shows the setting.
GROUP_SETTING_COMMANDS = frozenset({"model"})

Action = Literal["answer", "pair", "ignore", "refuse"]


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    role: str | None = None


def sender_role(settings: ConnectorSettings, paired_role: str | None, sender_id: str) -> str | None:
    """The sender's role: configured owner and admins first, then pairing, then the allowlist."""
    if settings.owner is not None and sender_id == settings.owner:
        return "owner"
    if sender_id in settings.admins:
        return "admin"
    if paired_role is not None:
        return paired_role
    if sender_id in settings.allow_from:
        return "user"
    return None


def decide(msg: InboundMessage, settings: ConnectorSettings, role: str | None) -> Decision:
    if not msg.is_direct:
        if not msg.mentions_bot:
            return Decision("ignore", "group_not_mentioned", role)
        if msg.chat_id not in settings.groups:
            return Decision("ignore", "group_not_allowed", role)
    elif settings.dm_policy == "disabled":
        return Decision("ignore", "dm_disabled", role)
    elif role is None:
        if settings.dm_policy == "allowlist":
            return Decision("ignore", "dm_not_allowed", role)
        if settings.dm_policy == "pairing":
            return Decision("pair", "dm_unknown_sender", role)
    command = command_name(msg.text)
    privileged = role in ("owner", "admin")
    if command in ADMIN_COMMANDS and not privileged:
        return Decision("refuse", "admin_command_denied", role)
    if command in GROUP_SETTING_COMMANDS and not msg.is_direct and _has_argument(msg.text) and not privileged:
        return Decision("refuse", "group_setting_denied", role)
    return Decision("answer", "admin_command" if command in ADMIN_COMMANDS else "accepted", role or "guest")


def command_name(text: str) -> str | None:
    """"/pairing@my_bot list" -> "pairing"; None for ordinary text."""
    stripped = text.lstrip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    word = stripped[1:].split(maxsplit=1)[0] if stripped[1:].split() else ""
    return word.split("@", 1)[0].lower() or None


def _has_argument(text: str) -> bool:
    return len(text.strip().split(maxsplit=1)) > 1


class SenderRateLimit:
    """A token bucket per sender: `burst` messages at once, refilled at `per_minute`.

    Over the limit, the first refused message earns one polite reply; the rest are
    dropped quietly until the sender has room again, so the box is never the one
    flooding the chat."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float, bool]] = {}

    def check(self, sender: str, now: float | None = None) -> Literal["ok", "warn", "drop"]:
        now = time.monotonic() if now is None else now
        tokens, last, warned = self._buckets.get(sender, (self.burst, now, False))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[sender] = (tokens - 1.0, now, False)
            return "ok"
        self._buckets[sender] = (tokens, now, True)
        return "drop" if warned else "warn"
