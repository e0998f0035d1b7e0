"""The Slack connector: the real bolt-python and slack-sdk against a local Slack
(aibox/bench/platforms/slack.py), over Socket Mode and over signed HTTP event posts.

The fault scenarios every platform shares (rate limits, dropped connections, malformed
input, bursts, bad tokens, secrets in logs) are in test_faults.py; these are Slack's own,
among them those of issue 20: unclear post outcomes (a 200 cut off after its status
line, an error after Slack stored the post), signed bodies of the wrong shape or too
large, and a bot token revoked while the box runs.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from aibox.bench.platforms.discord import FakeDiscord
from aibox.bench.platforms.slack import FakeSlack, post_signed, signature
from aibox.config import Config, ConfigError
from aibox.secrets import Secret
from aibox.store import Store
from connectors.manager import ConnectorManager, load_settings
from connectors.slack import MAX_EVENT_BODY, SlackConnector, SlackSettings
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
    responder = ScriptedResponder()
    async with http_mode(server, responder, tmp_path) as (connector, url):
        assert connector.health().state == "ok"
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


@asynccontextmanager
async def http_mode(server: FakeSlack, responder: ScriptedResponder, state_dir: Path) -> AsyncIterator[tuple[SlackConnector, str]]:
    """A connector in HTTP Events API mode, and the URL it listens on."""
    settings = settings_for(server, mode="http", app_token=None, signing_secret=Secret(server.signing_secret), events_port=0)
    connector = SlackConnector(settings)
    async with wired(connector, settings, responder, state_dir):
        assert connector.events_url is not None
        yield connector, connector.events_url


FAULTS = {
    "200 cut off after the status line": ("chat.postMessage", {"truncate": True}),
    "500 after the post was stored": ("chat.postMessage.stored", {"status": 500}),
    "internal_error after the post was stored": ("chat.postMessage.stored", {"status": 200}),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_a_post_with_an_unclear_outcome_is_looked_up_not_repeated(
    server: FakeSlack, tmp_path: Path, fault: tuple[str, dict]
) -> None:
    route, kind = fault
    server.faults.add(route, **kind)
    settings = settings_for(server)
    async with wired(SlackConnector(settings), settings, ScriptedResponder(chunks=3, delay=0.1), tmp_path):
        await server.user_says("D610", OWNER, "once please")
        await server.outbox.wait_for_text("D610", "You said: once please", timeout=20)
        await asyncio.sleep(0.5)  # a second post would be in by now
    assert len(server.faults.played) == 1
    [reply] = server.outbox.in_chat("D610")
    assert reply.text == "You said: once please"


async def test_an_unclear_post_that_did_not_land_is_posted_again_once(server: FakeSlack, tmp_path: Path) -> None:
    server.faults.add("chat.postMessage", status=503)  # refused before storing: not there, post again
    settings = settings_for(server)
    async with wired(SlackConnector(settings), settings, ScriptedResponder(), tmp_path):
        await server.user_says("D611", OWNER, "try again")
        [reply] = await server.outbox.wait_for_text("D611", "You said: try again", timeout=20)
    assert [f.status for f in server.faults.played] == [503] and reply.text == "You said: try again"


async def test_signed_bodies_of_the_wrong_shape_get_a_4xx_or_an_ignoring_200(server: FakeSlack, tmp_path: Path) -> None:
    responder = ScriptedResponder()
    secret = server.signing_secret
    async with http_mode(server, responder, tmp_path) as (_, url):
        answers = {}
        for body in (b"[1,2,3]", b'"hello"', b"null", b"42", b"\xff\xfe{}", b"[" * 100_000):
            answers[body[:12]] = await post_signed(url, body, secret)
        not_an_object = {"type": "event_callback", "team_id": server.team_id, "event": ["not", "an", "object"]}
        event_is_list = await post_signed(url, not_an_object, secret)
        event_is_text = await post_signed(url, {**not_an_object, "event": "hello"}, secret)
        odd = server.event_body("D612", OWNER, "odd")
        odd["event"]["subtype"] = ["file_share"]
        odd["event"]["files"] = "nope"
        odd_fields = await post_signed(url, odd, secret)
        fine = await post_signed(url, server.event_body("D612", OWNER, "a real one"), secret)
        await server.outbox.wait_for_text("D612", "You said: a real one")
    assert all(400 <= status < 500 for status, _ in answers.values()), answers
    assert all("Traceback" not in text for _, text in answers.values())
    assert event_is_list[0] == 200 and event_is_text[0] == 200, "Slack would retry these three times for nothing"
    assert odd_fields[0] < 500 and fine[0] == 200
    assert [m.text for m in responder.calls] == ["a real one"]


async def _raw_post(url: str, headers: dict[str, str], body: bytes = b"") -> int:
    """Sends a request's headers (and `body`, perhaps less than Content-Length says) and
    returns the status that comes back, without sending the rest."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    return int(status_line.split()[1])


async def test_headers_and_size_are_checked_before_a_large_body_is_read(server: FakeSlack, tmp_path: Path) -> None:
    responder = ScriptedResponder()
    secret = server.signing_secret
    async with http_mode(server, responder, tmp_path) as (_, url):
        now = str(int(time.time()))
        promised = {"Content-Type": "application/json", "Content-Length": str(50 * 1024 * 1024)}
        unsigned = await _raw_post(url, promised)
        stale = await _raw_post(url, {**promised, "X-Slack-Request-Timestamp": str(int(time.time()) - 400),
                                      "X-Slack-Signature": "v0=" + "0" * 64})
        too_big = await _raw_post(url, {**promised, "X-Slack-Request-Timestamp": now, "X-Slack-Signature": "v0=" + "0" * 64})
        huge = server.event_body("D613", OWNER, "x" * 1_000_000)
        signed_huge = await post_signed(url, huge, secret)
        raw = json.dumps(server.event_body("D613", OWNER, "y" * 600_000)).encode()
        chunked = await _chunked_post(url, raw, secret)
        await post_signed(url, server.event_body("D613", OWNER, "small"), secret)
        await server.outbox.wait_for_text("D613", "You said: small")
    assert unsigned == 401 and stale == 401 and too_big == 413
    assert signed_huge[0] == 413 and chunked == 413 and MAX_EVENT_BODY < 1_000_000
    assert [m.text for m in responder.calls] == ["small"], "nothing over Slack's size reached the model"


async def _chunked_post(url: str, raw: bytes, secret: str) -> int:
    """A signed body sent without Content-Length (chunked), so only reading can find its size."""
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts,
               "X-Slack-Signature": signature(secret, ts, raw)}

    async def pieces():
        for i in range(0, len(raw), 65536):
            yield raw[i : i + 65536]

    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=pieces(), headers=headers) as response:
            return response.status


async def test_a_token_revoked_at_runtime_fails_health_with_the_reason(server: FakeSlack, tmp_path: Path) -> None:
    settings = settings_for(server)
    connector = SlackConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        assert connector.health().state == "ok"
        await server.user_says("D614", OWNER, "hello")  # bolt checks the token on the first event only
        await server.outbox.wait_for_text("D614", "You said: hello")
        revoked = server.bot_token
        server.bot_token = "xoxb-rotated-elsewhere"
        await server.user_says("D614", OWNER, "are you there?")
        await server.outbox.wait_for(lambda: connector.health().state == "failed", timeout=15)
        health = connector.health()
    assert "connectors.slack.bot_token" in health.detail and "invalid_auth" in health.detail
    assert revoked not in health.detail and len(server.outbox.in_chat("D614")) == 1
