"""The Discord connector: the real discord.py against a local Discord (tests/servers/discord.py).

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aibox.secrets import Secret
from connectors.discord import DiscordConnector, DiscordSettings
from tests.servers.discord import FakeDiscord
from tests.servers.scripted import ScriptedResponder, wired

TOKEN = "discord-test-token-123"
OWNER = "500"


@pytest.fixture
async def server():
    async with FakeDiscord(token=TOKEN) as s:
        yield s


def settings_for(server: FakeDiscord, **overrides) -> DiscordSettings:
    values = {
        "token": Secret(TOKEN),
        "api_base": server.api_base,
        "gateway_url": server.gateway_url,
        "allow_from": [OWNER],
        "start_timeout_s": 10.0,
        **overrides,
    }
    return DiscordSettings(**values)


async def test_dm_round_trip_streams_an_edited_reply(server: FakeDiscord, tmp_path: Path) -> None:
    settings = settings_for(server)
    responder = ScriptedResponder(chunks=5, delay=0.4)
    connector = DiscordConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        assert connector.health().state == "ok"
        await server.user_says("100", OWNER, "hello there")
        [reply] = await server.outbox.wait_for_text("100", "You said: hello there", timeout=15)
    assert reply.edits >= 1, "the reply should grow by edits while it streams"
    assert reply.versions[-1] == "You said: hello there"
    gaps = [b - a for a, b in zip(reply.version_times, reply.version_times[1:])]
    assert all(g >= 0.9 for g in gaps), f"edits closer than one second apart: {gaps}"
    assert "100" in server.outbox.typing
    assert responder.calls[0].is_direct and responder.calls[0].sender_id == OWNER
