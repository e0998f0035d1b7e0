"""The config every connector shares: whether it runs and who may command the box through it.

Each platform's settings model subclasses `ConnectorSettings` and adds its own keys
(tokens as `Secret`, base URLs). Sender and chat ids are strings everywhere; numbers in
the TOML file (Telegram ids are numbers) are accepted and turned into strings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DmPolicy = Literal["pairing", "allowlist", "open", "disabled"]


class ConnectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    enabled: bool = True
    dm_policy: DmPolicy = Field("pairing", description="who may talk to the box in direct messages")
    allow_from: list[str] = Field(default_factory=list, description="senders allowed without pairing")
    owner: str | None = Field(None, description="sender id of the owner; else the first paired sender")
    admins: list[str] = Field(default_factory=list, description="senders who may use admin commands")
    groups: list[str] = Field(default_factory=list, description="group chats the box answers in, when mentioned")
    rate_limit_per_minute: int = Field(20, ge=1, description="messages one sender may send per minute")
    rate_limit_burst: int = Field(5, ge=1, description="messages one sender may send at once")
    edit_interval_s: float = Field(1.0, ge=0.0, le=60.0, description="least time between edits in one chat")
