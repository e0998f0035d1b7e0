"""An agent file: a TOML description of one persona, validated before the box uses it.

A bad file is refused with the file, the dotted key and the problem (`assistant.toml:
key 'model.name': required when model.policy is "pinned"`), so the owner can fix it
without reading code.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from aibox.config import describe_validation_error

TOOL_NAMES = ("time", "calculator", "notes", "reminders", "files", "web_fetch", "run", "skill")
# An MCP server's tools are granted as "SERVER.tool" or "SERVER.*" (every tool of that server).
MCP_GRANT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\.(\*|[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class AgentFileError(Exception):
    """The agent file is unreadable or invalid; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelPolicy(_Section):
    policy: Literal["router", "pinned"] = Field("router", description="router: the box picks; pinned: always `name`")
    name: str | None = Field(None, validate_default=True, description="the model card to use when pinned")
    max_tokens: int = Field(512, ge=1, le=32768)
    temperature: float = Field(0.7, ge=0.0, le=2.0)

    @field_validator("name")
    @classmethod
    def _pinned_needs_name(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("policy") == "pinned" and not v:
            raise ValueError('required when model.policy is "pinned"')
        return v


class MemorySettings(_Section):
    recent_turns: int = Field(20, ge=1, le=1000, description="turns kept verbatim before older ones are summarised")
    summarise: bool = Field(True, description="summarise older turns with the fast model")
    reserve_tokens: int = Field(512, ge=16, description="context left free for the answer")


class Schedule(_Section):
    """A job the agent runs on its own, e.g. a morning briefing delivered to a chat."""

    when: str = Field(description='plain language or cron, e.g. "every day at 7:00"')
    task: str = Field(min_length=1)
    chat: str = Field(pattern=r"^[a-z]+:.+$", description='where the answer goes, "platform:chat_id"')

    @field_validator("when")
    @classmethod
    def _parses(cls, v: str) -> str:
        from agents.schedule import ScheduleError, parse_when

        try:
            parse_when(v, "UTC")
        except ScheduleError as e:
            raise ValueError(str(e)) from None
        return v


class AgentDefinition(_Section):
    name: str
    description: str = ""
    default: bool = Field(False, description="the agent chats use until they pick another with /use")
    system_prompt: str = Field(min_length=1)
    model: ModelPolicy = ModelPolicy()
    tools: list[str] = Field(default_factory=list, description=f"granted tools, any of {', '.join(TOOL_NAMES)}, or SERVER.tool / SERVER.* of an MCP server")
    skills: list[str] = Field(default_factory=list, description="skills the agent may load with the skill tool")
    memory: MemorySettings = MemorySettings()
    schedules: list[Schedule] = Field(default_factory=list)
    chats: list[str] = Field(default_factory=lambda: ["*"], description='"*", "platform:*" or "platform:chat_id"')

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be lower-case letters, digits, '-' or '_', starting with a letter")
        return v

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in TOOL_NAMES and not MCP_GRANT_RE.match(t)]
        if unknown:
            raise ValueError(f"unknown tool {unknown[0]!r}; known: {', '.join(TOOL_NAMES)}, or SERVER.tool / SERVER.* for an MCP server")
        return v

    @field_validator("skills")
    @classmethod
    def _skills(cls, v: list[str], info: ValidationInfo) -> list[str]:
        bad = [s for s in v if not NAME_RE.match(s)]
        if bad:
            raise ValueError(f"skill name {bad[0]!r}: lower-case letters, digits, '-' or '_', starting with a letter")
        if v and "skill" not in info.data.get("tools", []):
            raise ValueError('listing skills needs the "skill" tool in tools (it loads a skill\'s instructions)')
        return v

    def serves(self, platform: str, chat_id: str) -> bool:
        return any(p in ("*", f"{platform}:*", f"{platform}:{chat_id}") for p in self.chats)


def parse_agent(data: dict, origin: str) -> AgentDefinition:
    try:
        return AgentDefinition.model_validate(data)
    except ValidationError as e:
        raise AgentFileError(f"{origin}: {describe_validation_error(e).replace('Value error, ', '')}") from None


def load_agent(path: Path) -> AgentDefinition:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise AgentFileError(f"{path.name}: not valid TOML: {e}") from None
    except OSError as e:
        raise AgentFileError(f"{path}: cannot read: {e.strerror}") from None
    definition = parse_agent(data, path.name)
    if path.stem != definition.name:
        raise AgentFileError(f"{path.name}: key 'name': is {definition.name!r} but the file is named {path.stem}.toml")
    return definition
