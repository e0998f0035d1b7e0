"""The Slack connector: the real bolt-python and slack-sdk against a local Slack
(aibox/bench/platforms/slack.py), over Socket Mode and over signed HTTP event posts.

The fault scenarios every platform shares (rate limits, dropped connections, malformed
input, bursts, bad tokens, secrets in logs) are in test_faults.py; these are Slack's own.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from aibox.bench.platforms.discord import FakeDiscord
from aibox.bench.platforms.slack import FakeSlack, post_signed
from aibox.config import Config, ConfigError
from aibox.secrets import Secret
from aibox.store import Store
from connectors.manager import ConnectorManager, load_settings
from connectors.slack import SlackConnector, SlackSettings
from tests.servers.scripted import ScriptedResponder, wired

OWNER = "U0000OWNR"


@pytest.fixture
async def server():
    async with FakeSlack() as s:
        yield s


def settings_for(server: FakeSlack, **overrides) -> SlackSettings:
    values = {
        "bot_token": Secret(server.bot_token),
        "app_token": Secret(server.app_token),
        "api_base": server.api_base,
        "allow_from": [OWNER],
        "ping_interval_s": 1.0,
        "start_timeout_s": 10.0,
        "edit_interval_s": 0.05,
        **overrides,
    }
    return SlackSettings(**values)


async def test_dm_round_trip_streams_an_edited_reply(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(server, edit_interval_s=1.0)
    responder = ScriptedResponder(chunks=5, delay=0.4)
    connector = SlackConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        assert connector.health().state == "ok", connector.health()
        await server.user_says("D100", OWNER, "hello <there> & you")
        [reply] = await server.outbox.wait_for_text("D100", "You said: hello <there> & you", timeout=15)
    assert reply.edits >= 1, "the reply should grow by edits while it streams"
    assert reply.text == "You said: hello <there> & you"
    gaps = [b - a for a, b in zip(reply.version_times, reply.version_times[1:])]
    assert all(g >= 0.75 for g in gaps), f"edits closer than one second apart: {gaps}"
    assert responder.calls[0].is_direct and responder.calls[0].text == "hello <there> & you"
    assert server.unacked == 0, "every envelope is acknowledged"


async def test_a_disconnect_request_is_followed(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(server)
    responder = ScriptedResponder()
    async with wired(SlackConnector(settings), settings, responder, tmp_path):
        await server.ask_to_reconnect()
        await server.outbox.wait_for(lambda: server.connections_opened >= 2, timeout=15)
        await server.user_says("D107", OWNER, "after the refresh")
        await server.outbox.wait_for_text("D107", "You said: after the refresh")
    assert server.connections_opened == 2, "the refresh was done once, by slack-sdk, not raced by a second reconnect"


async def test_own_and_other_bots_messages_are_ignored(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(server, dm_policy="open")
    responder = ScriptedResponder()
    async with wired(SlackConnector(settings), settings, responder, tmp_path):
        await server.user_says("D111", "U0000OTHR", "beep", bot_id="B0000OTHR")
        await server.user_says("D111", "U0000OTHR", "beep", subtype="bot_message")
        await server.user_says("D111", server.bot_user_id, "my own words", bot_id=server.bot_id)
        await server.user_says("D111", OWNER, "a person")
        await server.outbox.wait_for_text("D111", "You said: a person")
        await asyncio.sleep(0.3)
    assert [m.text for m in responder.calls] == ["a person"]


async def test_channels_answer_only_mentions_and_reply_in_a_thread(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(server, groups=["C300"])
    responder = ScriptedResponder()
    async with wired(SlackConnector(settings), settings, responder, tmp_path):
        await server.user_says("C300", OWNER, "chatter", channel_type="channel")
        await server.user_says("C301", OWNER, "wrong channel", channel_type="channel", mention=True)
        server.faults.add("chat.postMessage", drop="after")  # found again in the thread, not reposted
        ts = await server.user_says("C300", OWNER, "what time is it?", channel_type="channel", mention=True)
        [reply] = await server.outbox.wait_for_text("C300", "You said: what time is it?")
        await asyncio.sleep(0.3)
    assert len(server.outbox.in_chat("C300")) == 1 and len(server.faults.played) == 1
    [call] = responder.calls
    assert not call.is_direct and call.mentions_bot and call.text == "what time is it?"
    assert reply.reply_to == ts, "a channel answer goes into the thread of the question"


async def test_a_mention_sent_as_message_and_app_mention_is_answered_once(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(server, groups=["C302"])
    responder = ScriptedResponder()
    async with wired(SlackConnector(settings), settings, responder, tmp_path):
        ts = server.next_ts()
        await server.user_says("C302", OWNER, "hi both", mention=True, event_type="app_mention", ts=ts)
        await server.user_says("C302", OWNER, "hi both", mention=True, channel_type="channel", ts=ts)
        thread_ts = await server.user_says("C302", OWNER, "in a thread", mention=True, event_type="app_mention",
                                           thread_ts=ts)
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat("C302")) == 2)
        await asyncio.sleep(0.3)
    replies = server.outbox.in_chat("C302")
    assert sorted(m.text for m in replies) == ["You said: hi both", "You said: in a thread"]
    assert all(m.reply_to == ts for m in replies), "both answers go to the thread the question started"
    assert thread_ts != ts and [c.reply_to for c in responder.calls] == [None, ts]


async def test_http_events_are_verified_by_signature_and_age(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(
        server, mode="http", app_token=None, signing_secret=Secret(server.signing_secret), events_port=0
    )
    responder = ScriptedResponder()
    connector = SlackConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        url = connector.events_url
        assert url is not None and connector.health().state == "ok"
        secret = server.signing_secret
        forged = await post_signed(url, server.event_body("D400", OWNER, "forged"), secret, signed_with="guess")
        stale_ts = str(int(time.time()) - 301)
        stale = await post_signed(url, server.event_body("D400", OWNER, "stale"), secret, timestamp=stale_ts)
        junk_ts = await post_signed(url, server.event_body("D400", OWNER, "junk"), secret, timestamp="soon")
        malformed = await post_signed(url, b"{not json", secret)
        challenge = await post_signed(url, {"type": "url_verification", "challenge": "c-123", "token": "t"}, secret)
        body = server.event_body("D400", OWNER, "signed and fresh")
        fine = await post_signed(url, body, secret)
        retried = await post_signed(url, body, secret)  # Slack's retry when it missed our 200
        await server.outbox.wait_for_text("D400", "You said: signed and fresh")
        await asyncio.sleep(0.3)
    assert forged[0] == 401 and stale[0] == 401 and junk_ts[0] in (400, 401)
    assert 400 <= malformed[0] < 500
    assert challenge[0] == 200 and "c-123" in challenge[1]
    assert fine[0] == 200 and retried[0] == 200
    assert [m.text for m in responder.calls] == ["signed and fresh"]
    assert len(server.outbox.in_chat("D400")) == 1


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"connectors\.slack\.bot_token"):
        load_settings({"slack": {"app_token": "env:A"}})
    with pytest.raises(ConfigError, match=r"connectors\.slack\.app_token"):
        load_settings({"slack": {"bot_token": "env:B"}})
    with pytest.raises(ConfigError, match=r"connectors\.slack\.signing_secret"):
        load_settings({"slack": {"bot_token": "env:B", "mode": "http"}})
    parsed = load_settings({"slack": {"bot_token": "env:B", "app_token": "env:A"}})["slack"]
    assert isinstance(parsed, SlackSettings) and parsed.api_base == "https://slack.com/api/"


async def test_socket_mode_retries_with_backoff_until_slack_answers(server: FakeSlack, tmp_path: Path) -> None:
    server.faults.add("apps.connections.open", status=500, times=2)
    settings = settings_for(server, reconnect_max_delay_s=2.0, start_timeout_s=1.0)
    responder = ScriptedResponder()
    connector = SlackConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        assert connector.health().state in ("starting", "degraded")
        await server.wait_connected(timeout=15)
        await server.user_says("D500", OWNER, "finally")
        await server.outbox.wait_for_text("D500", "You said: finally")
        assert connector.health().state == "ok"
    assert len(server.faults.played) == 2


async def test_a_bad_discord_token_leaves_slack_running(server: FakeSlack, tmp_path: Path) -> None:
    async with FakeDiscord(token="the-real-discord-token") as discord_server:
        config = Config(
            connectors={
                "discord": {
                    "token": "a-wrong-discord-token",
                    "api_base": discord_server.api_base,
                    "gateway_url": discord_server.gateway_url,
                },
                "slack": {
                    "bot_token": server.bot_token,
                    "app_token": server.app_token,
                    "api_base": server.api_base,
                    "allow_from": [OWNER],
                },
            }
        )
        store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
        manager = ConnectorManager(config, store, ScriptedResponder())
        await manager.start()
        try:
            health = manager.health()
            assert health["discord"]["state"] == "failed"
            assert "connectors.discord.token" in health["discord"]["detail"]
            assert "a-wrong-discord-token" not in json.dumps(health)
            assert health["slack"]["state"] == "ok"
            await server.user_says("D501", OWNER, "anyone home?")
            await server.outbox.wait_for_text("D501", "You said: anyone home?")
        finally:
            await manager.stop()
            store.close()


async def test_shared_files_arrive_as_metadata(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(server)
    responder = ScriptedResponder()
    report = {"id": "F0001", "name": "report.pdf", "mimetype": "application/pdf", "size": 2048}
    async with wired(SlackConnector(settings), settings, responder, tmp_path):
        await server.user_says("D502", OWNER, "see attached", files=[report])
        await server.outbox.wait_for_text("D502", "You said: see attached")
    [attachment] = responder.calls[0].attachments
    assert (attachment.kind, attachment.name, attachment.mime_type, attachment.ref) == (
        "file", "report.pdf", "application/pdf", "F0001"
    )


async def test_a_busy_events_port_is_reported_not_fatal(server: FakeSlack, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = settings_for(
            server, mode="http", app_token=None, signing_secret=Secret(server.signing_secret),
            events_port=port, start_timeout_s=1.0,
        )
        connector = SlackConnector(settings)
        async with wired(connector, settings, ScriptedResponder(), tmp_path):
            health = connector.health()
    assert health.state == "degraded" and "cannot listen for events" in health.detail
