"""The Discord connector: the real discord.py against a local Discord (tests/servers/discord.py).

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from aibox.config import ConfigError
from aibox.secrets import Secret
from connectors.discord import DiscordConnector, DiscordSettings
from connectors.manager import load_settings
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
    assert all(g >= 0.75 for g in gaps), f"edits closer than one second apart: {gaps}"
    assert "100" in server.outbox.typing
    assert responder.calls[0].is_direct and responder.calls[0].sender_id == OWNER


def fast(server: FakeDiscord, **overrides) -> DiscordSettings:
    """Settings with a short edit interval, for tests about what arrives rather than pacing."""
    return settings_for(server, edit_interval_s=0.05, **overrides)


LONG_ANSWER = (
    "First paragraph. " * 60
    + "\n\n```python\n"
    + "".join(f"print('line {i}')\n" for i in range(60))
    + "```\n\n"
    + "Closing words, said plainly. " * 50
)


async def test_long_reply_is_split_under_the_limit_and_nothing_is_lost(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server)
    responder = ScriptedResponder(answer=lambda m: LONG_ANSWER, chunks=6)
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("101", OWNER, "tell me a lot")
        messages = await server.outbox.wait_for_text("101", LONG_ANSWER, timeout=20)
    assert len(messages) >= 3
    assert all(len(m.text) <= 2000 for m in messages)
    for m in messages:  # every message renders its code on its own: fences come in pairs
        assert m.text.count("```") % 2 == 0, m.text


async def test_unknown_sender_gets_a_pairing_code_and_no_answer_until_approved(
    server: FakeDiscord, tmp_path: Path
) -> None:
    settings = fast(server, allow_from=[])
    responder = ScriptedResponder()
    async with wired(DiscordConnector(settings), settings, responder, tmp_path) as wiring:
        await server.user_says("102", "777", "let me in")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat("102")) == 1)
        [offer] = server.outbox.in_chat("102")
        code = re.search(r"approve ([A-Z0-9]{8})", offer.text)
        assert code is not None, offer.text
        assert responder.calls == []
        approved = wiring.pairing.approve(code.group(1))
        assert approved.sender_id == "777"
        await server.user_says("102", "777", "now?")
        await server.outbox.wait_for(lambda: any(m.text == "You said: now?" for m in server.outbox.in_chat("102")))
    assert [m.text for m in responder.calls] == ["now?"]


async def test_a_429_in_the_middle_of_streaming_is_waited_out(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server)
    server.faults.add("edit", status=429, retry_after=0.3)
    responder = ScriptedResponder(chunks=4, delay=0.15)
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("103", OWNER, "rate limit me")
        [reply] = await server.outbox.wait_for_text("103", "You said: rate limit me", timeout=15)
    assert [f.status for f in server.faults.played] == [429]
    assert reply.text == "You said: rate limit me"


async def test_server_errors_are_retried_and_the_reply_arrives_once(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server)
    server.faults.add("send", status=500)
    server.faults.add("edit", status=502)
    responder = ScriptedResponder(chunks=3, delay=0.1)
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("104", OWNER, "break it")
        [reply] = await server.outbox.wait_for_text("104", "You said: break it", timeout=20)
    assert len(server.faults.played) == 2
    assert reply.text == "You said: break it"


async def test_connection_dropped_mid_reply_resumes_and_delivers_once(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server)
    responder = ScriptedResponder(chunks=6, delay=0.25)
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("105", OWNER, "first question")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat("105")) == 1)
        await server.drop_gateway()
        # Sent while the bot is away: Discord replays it on RESUME. Its reply's first
        # POST is cut after Discord stored it, so only the nonce keeps it from doubling.
        server.faults.add("send", drop="after")
        await server.user_says("106", OWNER, "second question")
        await server.outbox.wait_for_text("105", "You said: first question", timeout=15)
        await server.outbox.wait_for_text("106", "You said: second question", timeout=15)
    assert server.resume_count >= 1
    assert [f.kind for f in server.faults.played] == ["drop_after"]
    assert len(server.outbox.in_chat("105")) == 1 and len(server.outbox.in_chat("106")) == 1
    assert sorted(m.text for m in responder.calls) == ["first question", "second question"]


async def test_malformed_gateway_frames_do_not_stop_the_connector(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server, reconnect_max_delay_s=0.5)
    responder = ScriptedResponder()
    connector = DiscordConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await server.send_raw("{this is not json")
        await server.outbox.wait_for(lambda: server.identify_count >= 2, timeout=15)
        await server.wait_identified()
        await server.dispatch("MESSAGE_CREATE", {"id": "1", "content": "no channel, no author"})
        await server.outbox.wait_for(lambda: server.identify_count >= 3, timeout=15)
        await server.wait_identified()
        await server.user_says("107", OWNER, "still there?")
        await server.outbox.wait_for_text("107", "You said: still there?", timeout=15)
        assert connector.health().state == "ok"


async def test_a_100000_character_message_arrives_whole(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server)
    huge = ("0123456789" * 10_000)[:99_990] + "THE-END!!!"
    assert len(huge) == 100_000
    responder = ScriptedResponder(answer=lambda m: f"{len(m.text)} characters, ending {m.text[-10:]}")
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("108", OWNER, huge)
        await server.outbox.wait_for_text("108", "100000 characters, ending THE-END!!!", timeout=15)
    assert responder.calls[0].text == huge


async def test_emoji_rtl_and_zero_width_text_round_trips_exactly(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server)
    text = "héllo 👩‍👩‍👧‍👦 🇺🇳 مرحبا بالعالم שלום zero\u200bwidth\u200d joiner \u2060 \u202eflipped\u202c ✔️"
    responder = ScriptedResponder(answer=lambda m: m.text, chunks=7)
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        await server.user_says("109", OWNER, text)
        await server.outbox.wait_for(lambda: [m.text for m in server.outbox.in_chat("109")] == [text], timeout=15)
    assert responder.calls[0].text == text


async def test_a_burst_of_100_messages_from_20_chats_gets_every_reply_once(
    server: FakeDiscord, tmp_path: Path
) -> None:
    senders = [str(600 + i) for i in range(20)]
    settings = fast(server, allow_from=senders, rate_limit_burst=10)
    responder = ScriptedResponder(chunks=2)
    sent: dict[str, str] = {}
    async with wired(DiscordConnector(settings), settings, responder, tmp_path):
        for round_ in range(5):
            for i, sender in enumerate(senders):
                text = f"chat {i} message {round_}"
                sent[await server.user_says(str(2000 + i), sender, text)] = text
        await server.outbox.wait_for(
            lambda: sum(1 for m in server.outbox.all() if m.text.startswith("You said:")) >= 100, timeout=60
        )
        await asyncio.sleep(0.3)  # anything sent twice would show up by now
    replies = server.outbox.all()
    assert len(replies) == 100
    assert sorted(m.reply_to for m in replies) == sorted(sent)
    for m in replies:
        assert m.text == f"You said: {sent[m.reply_to]}"


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


async def test_a_bad_token_fails_this_connector_only(server: FakeDiscord, tmp_path: Path) -> None:
    settings = fast(server, token=Secret("not-the-token"))
    connector = DiscordConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        health = connector.health()
    assert health.state == "failed"
    assert "connectors.discord.token" in health.detail and "not-the-token" not in health.detail


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


async def test_the_token_stays_out_of_debug_logs(server: FakeDiscord, tmp_path: Path, caplog) -> None:
    settings = fast(server)
    caplog.set_level(logging.DEBUG)
    async with wired(DiscordConnector(settings), settings, ScriptedResponder(), tmp_path):
        await server.user_says("114", OWNER, "hello")
        await server.outbox.wait_for_text("114", "You said: hello")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "114" in logged, "debug logging was captured"
    assert TOKEN not in logged
