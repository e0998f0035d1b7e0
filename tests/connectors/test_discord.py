"""The Discord connector: the real discord.py against a local Discord (aibox/bench/platforms/discord.py).

The fault scenarios every platform shares (rate limits, dropped connections, malformed
input, bursts, bad tokens, secrets in logs) are in test_faults.py; these are Discord's own.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aibox.bench.platforms.discord import FakeDiscord
from aibox.config import ConfigError
from aibox.secrets import Secret
from connectors.discord import DiscordConnector, DiscordSettings
from connectors.manager import load_settings
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
    assert all(g >= 0.75 for g in gaps), f"edits closer than one second apart: {gaps}"
    assert "100" in server.outbox.typing
    assert responder.calls[0].is_direct and responder.calls[0].sender_id == OWNER


def fast(server: FakeDiscord, **overrides) -> DiscordSettings:
    """Settings with a short edit interval, for tests about what arrives rather than pacing."""
    return settings_for(server, edit_interval_s=0.05, **overrides)


async def test_own_and_other_bots_messages_are_ignored(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server, dm_policy="open")
    responder = ScriptedResponder()
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("110", "888", "I am a bot", bot=True)
        await server.user_says("110", OWNER, "I am a person")
        await server.outbox.wait_for_text("110", "You said: I am a person")
        await asyncio.sleep(0.3)
    # The bot's own reply came back as a MESSAGE_CREATE too, and started nothing.
    assert [m.text for m in responder.calls] == ["I am a person"]


async def test_servers_answer_only_mentions_in_allowed_channels(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server, groups=["300"])
    responder = ScriptedResponder()
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("300", OWNER, "chatter", guild_id="9")
        await server.user_says("301", OWNER, "wrong channel", guild_id="9", mention=True)
        await server.user_says("300", OWNER, "what time is it?", guild_id="9", mention=True)
        [reply] = await server.outbox.wait_for_text("300", "You said: what time is it?")
    [call] = responder.calls
    assert not call.is_direct and call.mentions_bot and call.text == "what time is it?"
    assert server.requested_intents is not None and server.requested_intents & (1 << 15)


async def test_a_missing_message_content_intent_is_reported(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN, message_content_enabled=False) as server:
        settings = fast(server)
        connector = DiscordConnector(settings)
        async with wired(connector, settings, ScriptedResponder(), tmp_path):
            health = connector.health()
    assert health.state == "failed" and "Message Content intent" in health.detail


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"connectors\.discord\.token"):
        load_settings({"discord": {"dm_policy": "open"}})
    with pytest.raises(ConfigError, match=r"connectors\.discord\.gateway_urll': unknown key"):
        load_settings({"discord": {"token": "env:X", "gateway_urll": "ws://x"}})
    parsed = load_settings({"discord": {"token": "env:DISCORD_TOKEN"}})["discord"]
    assert isinstance(parsed, DiscordSettings) and parsed.api_base == "https://discord.com/api/v10"


async def test_a_failed_login_is_retried_with_backoff(server: FakeDiscord, tmp_path: Path) -> None:
    server.faults.add("me", drop="before", times=2)
    settings = fast(server, reconnect_max_delay_s=2.0, start_timeout_s=1.0)
    connector = DiscordConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        await server.wait_identified(timeout=15)
        await server.user_says("111", OWNER, "finally")
        await server.outbox.wait_for_text("111", "You said: finally")
        assert connector.health().state == "ok"
    assert [f.kind for f in server.faults.played] == ["drop_before", "drop_before"]


async def test_attachments_arrive_as_metadata(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server)
    responder = ScriptedResponder()
    photo = {"id": "42", "filename": "cat.png", "size": 1234, "url": "https://cdn.example/cat.png",
             "content_type": "image/png"}
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("112", OWNER, "look", attachments=[photo])
        await server.outbox.wait_for_text("112", "You said: look")
    [attachment] = responder.calls[0].attachments
    assert (attachment.kind, attachment.name, attachment.mime_type, attachment.size) == ("image", "cat.png", "image/png", 1234)


async def test_an_unresolvable_token_reference_is_reported(server: FakeDiscord, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("AIBOX_TEST_NO_SUCH_VAR", raising=False)
    settings = fast(server, token=Secret("env:AIBOX_TEST_NO_SUCH_VAR"))
    connector = DiscordConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        health = connector.health()
    assert health.state == "failed"
    assert "connectors.discord.token" in health.detail and "AIBOX_TEST_NO_SUCH_VAR" in health.detail


async def test_heartbeats_are_acked_and_a_zombie_gateway_is_replaced(tmp_path: Path) -> None:
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=100) as server:
        settings = fast(server, heartbeat_timeout_s=1.0)
        connector = DiscordConnector(settings)
        async with wired(connector, settings, ScriptedResponder(), tmp_path):
            await server.outbox.wait_for(lambda: server.heartbeats >= 5, timeout=10)
            assert (server.identify_count, server.resume_count) == (1, 0), "acked heartbeats keep the session"
            server.ack_heartbeats = False
            await server.outbox.wait_for(lambda: server.resume_count >= 1, timeout=10)
            server.ack_heartbeats = True
            await server.wait_identified()
            await server.user_says("113", OWNER, "alive?")
            await server.outbox.wait_for_text("113", "You said: alive?")
