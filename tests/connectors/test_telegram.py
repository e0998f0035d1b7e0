"""The Telegram connector: the real python-telegram-bot against a local Bot API
(aibox/bench/platforms/telegram.py).

The fault scenarios every platform shares (rate limits, dropped connections, malformed
input, bursts, bad tokens, secrets in logs) are in test_faults.py; these are Telegram's own.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from aibox.bench.platforms.telegram import TelegramServer
from aibox.config import ConfigError
from aibox.secrets import Secret
from connectors.manager import load_settings
from connectors.telegram import TelegramConnector, TelegramSettings
from tests.servers.scripted import ScriptedResponder, wired

OWNER = 4242

pytestmark = [
    # PTB's advice to use get_updates, after a batch get_updates could not parse (our
    # connector filters it at import; pytest resets filters per test), and PTB's notice
    # about the type of RetryAfter.retry_after, raised inside PTB.
    pytest.mark.filterwarnings("ignore:Please use 'Bot.getUpdates':UserWarning"),
    pytest.mark.filterwarnings("ignore:Deprecated since version v22.2:DeprecationWarning"),
]


@pytest.fixture
async def server():
    async with TelegramServer() as s:
        yield s


def settings_for(server: TelegramServer, **overrides) -> TelegramSettings:
    values = {
        "token": Secret(server.token),
        "base_url": server.base_url,
        "base_file_url": server.base_file_url,
        "poll_timeout_s": 2,
        "allow_from": [str(OWNER)],
        **overrides,
    }
    return TelegramSettings(**values)


def fast(server: TelegramServer, **overrides) -> TelegramSettings:
    """Settings with a short edit interval, for tests about what arrives rather than pacing."""
    return settings_for(server, edit_interval_s=0.05, **overrides)


async def test_dm_round_trip_streams_an_edited_reply(server: TelegramServer, tmp_path: Path) -> None:
    settings = settings_for(server)
    responder = ScriptedResponder(chunks=5, delay=0.4)
    connector = TelegramConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        assert connector.health().state == "ok"
        asked = server.user_message(OWNER, "hello there")
        [reply] = await server.outbox.wait_for_text(str(OWNER), "You said: hello there", timeout=15)
    assert reply.edits >= 1, "the reply should grow by edits while it streams"
    assert reply.versions[-1] == "You said: hello there"
    assert reply.reply_to == str(asked)
    gaps = [b - a for a, b in zip(reply.version_times, reply.version_times[1:])]
    assert all(g >= 0.9 for g in gaps), f"edits closer than one second apart: {gaps}"
    assert str(OWNER) in server.outbox.typing
    [call] = responder.calls
    assert call.is_direct and call.sender_id == str(OWNER) and call.sender_name == "Test"
    assert server.calls[:2] == ["getMe", "deleteWebhook"]
    assert server.confirmed_offset >= 2, "the update must be confirmed so a restart does not replay it"


async def test_a_stranger_flooding_the_bot_gets_the_code_a_few_times_then_nothing(
    server: TelegramServer, tmp_path: Path
) -> None:
    settings = fast(server, allow_from=[], rate_limit_burst=2, rate_limit_per_minute=1)
    responder = ScriptedResponder()
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        for i in range(8):
            server.user_message(666, f"spam {i}")
        await server.outbox.wait_for(lambda: any("slow down" in m.text for m in server.outbox.in_chat("666")))
        await asyncio.sleep(0.5)
    texts = [m.text for m in server.outbox.in_chat("666")]
    assert len(texts) == 3 and "slow down" in texts[2]
    assert texts[0] == texts[1] and "pairing code" in texts[0], "the same code, not a new one each time"
    assert responder.calls == []


async def test_attachments_and_replies_arrive_as_metadata(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    responder = ScriptedResponder()
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        user = {"id": OWNER, "is_bot": False, "first_name": "Ann", "last_name": "Lee"}
        server.raw_updates({"update_id": server.next_update_id(), "message": {
            "message_id": 501, "date": 0, "chat": {"id": OWNER, "type": "private"}, "from": user,
            "caption": "what is in this file?",
            "document": {"file_id": "BQAC-doc", "file_unique_id": "u1", "file_name": "report.pdf",
                         "mime_type": "application/pdf", "file_size": 48213},
            "reply_to_message": {"message_id": 400, "date": 0, "chat": {"id": OWNER, "type": "private"},
                                 "from": user, "text": "earlier"},
        }})
        await server.outbox.wait_for_text(str(OWNER), "You said: what is in this file?")
    [msg] = responder.calls
    assert msg.text == "what is in this file?" and msg.reply_to == "400" and msg.sender_name == "Ann Lee"
    [doc] = msg.attachments
    assert (doc.kind, doc.name, doc.mime_type, doc.size, doc.ref) == (
        "document", "report.pdf", "application/pdf", 48213, "BQAC-doc"
    )


async def test_a_message_that_cannot_be_edited_any_more_is_sent_anew(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    server.faults.add("editMessageText", status=400)
    responder = ScriptedResponder(chunks=3, delay=0.2)
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        server.user_message(OWNER, "delete your answer")
        await server.outbox.wait_for(
            lambda: server.outbox.in_chat(str(OWNER))[-1:] != []
            and server.outbox.in_chat(str(OWNER))[-1].text == "You said: delete your answer",
            timeout=15,
        )
    first, *rest = server.outbox.in_chat(str(OWNER))
    assert len(rest) == 1, "the text went out once more, in a new message"
    assert "You said: delete your answer".startswith(first.text)


async def test_bots_are_ignored_and_groups_need_a_mention_and_an_allowlist(
    server: TelegramServer, tmp_path: Path
) -> None:
    settings = fast(server, groups=["-300"])
    responder = ScriptedResponder()
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        server.user_message(OWNER, "I am a bot", is_bot=True)
        server.user_message(-300, "chatter", user_id=OWNER, chat_type="group")
        server.user_message(-301, "wrong group", user_id=OWNER, chat_type="group", mention=True)
        server.user_message(-300, "what time is it?", user_id=OWNER, chat_type="group", mention=True)
        await server.outbox.wait_for_text("-300", "You said: what time is it?")
        await asyncio.sleep(0.3)
    [call] = responder.calls
    assert not call.is_direct and call.mentions_bot and call.text == "what time is it?"
    assert server.outbox.in_chat(str(OWNER)) == [] and server.outbox.in_chat("-301") == []


async def test_in_a_group_only_the_owner_changes_the_chat_model(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server, groups=["-300"], owner=str(OWNER), dm_policy="open")
    responder = ScriptedResponder()

    async def replies_in_group(n: int) -> list[str]:
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat("-300")) == n)
        return [m.text for m in server.outbox.in_chat("-300")]

    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        server.user_message(-300, "/model smollm2-135m-instruct", user_id=77, chat_type="group", mention=True)
        assert "only the owner and admins" in (await replies_in_group(1))[0]
        server.user_message(-300, "/model", user_id=77, chat_type="group", mention=True)  # asking is fine
        assert (await replies_in_group(2))[1] == "You said: /model"
        server.user_message(-300, "/model smollm2-135m-instruct", user_id=OWNER, chat_type="group", mention=True)
        assert (await replies_in_group(3))[2] == "You said: /model smollm2-135m-instruct"
        server.user_message(77, "/model smollm2-135m-instruct")  # a direct chat is the sender's own
        await server.outbox.wait_for_text("77", "You said: /model smollm2-135m-instruct")
    assert [m.text for m in responder.calls] == ["/model", "/model smollm2-135m-instruct", "/model smollm2-135m-instruct"]


async def test_admin_commands_and_the_sender_rate_limit(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server, dm_policy="open", owner=str(OWNER), rate_limit_burst=2, rate_limit_per_minute=1)
    responder = ScriptedResponder()
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        server.user_message(900, "/models")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat("900")) == 1)
        assert "only for the owner" in server.outbox.in_chat("900")[0].text
        server.user_message(OWNER, "/pairing list")
        await server.outbox.wait_for_text(str(OWNER), "No pending pairing codes.")
        for i in range(4):  # two fit the burst, the third earns one warning, the fourth nothing
            server.user_message(901, f"flood {i}")
        await server.outbox.wait_for(lambda: any("slow down" in m.text for m in server.outbox.in_chat("901")))
        await asyncio.sleep(0.3)
    texts = [m.text for m in server.outbox.in_chat("901")]
    assert texts[:2] == ["You said: flood 0", "You said: flood 1"] and "slow down" in texts[2] and len(texts) == 3
    assert [m.text for m in responder.calls] == ["flood 0", "flood 1"]


async def test_files_go_out_multipart_and_come_back_as_documents(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    connector = TelegramConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        assert connector.bot is not None
        sent = await connector.bot.send_document(OWNER, document=b"line one\n", filename="notes.txt", caption="your notes")
    assert sent.document is not None and sent.document.file_name == "notes.txt"
    [posted] = server.outbox.in_chat(str(OWNER))
    assert posted.text == "your notes"


async def test_telegram_unreachable_at_start_is_degraded_then_recovers(tmp_path: Path) -> None:
    late = TelegramServer(port=_free_port())  # nothing listens there yet
    settings = fast(late)
    connector = TelegramConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        assert connector.health().state == "degraded" and "retrying" in connector.health().detail
        async with late:
            await late.outbox.wait_for(lambda: connector.health().state == "ok", timeout=20)
            late.user_message(OWNER, "you made it")
            await late.outbox.wait_for_text(str(OWNER), "You said: you made it", timeout=15)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def webhook_settings(server: TelegramServer, **overrides) -> TelegramSettings:
    port = _free_port()
    values = {
        "mode": "webhook", "listen_port": port, "webhook_secret": Secret("hook-secret_123"),
        "webhook_url": f"http://127.0.0.1:{port}/telegram/webhook", **overrides,
    }
    return fast(server, **values)


async def test_webhook_mode_round_trip_and_refusals(server: TelegramServer, tmp_path: Path) -> None:
    settings = webhook_settings(server)
    responder = ScriptedResponder(chunks=3, delay=0.1)
    connector = TelegramConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        assert connector.health().state == "ok", connector.health()
        assert server.webhook == (settings.webhook_url, "hook-secret_123")
        update = json.dumps({"update_id": 99, "message": {"message_id": 1, "date": 0, "chat": {"id": 5}}}).encode()
        assert await server.post_to_webhook(update, "wrong-secret") == 403
        assert await server.post_to_webhook(update, None) == 403
        assert await server.post_to_webhook(b"{not json", "hook-secret_123") == 200
        assert await server.post_to_webhook(b'{"update_id": "x", "message": 7}', "hook-secret_123") == 200
        asked = server.user_message(OWNER, "over the webhook")
        [reply] = await server.outbox.wait_for_text(str(OWNER), "You said: over the webhook", timeout=15)
        assert "getUpdates" not in server.calls
    assert reply.reply_to == str(asked)
    assert [m.text for m in responder.calls] == ["over the webhook"]
    assert server.webhook is not None, "the webhook stays set while the box is down: Telegram keeps the updates"


async def test_webhook_mode_with_a_webhook_telegram_refuses_fails_with_the_reason(
    server: TelegramServer, tmp_path: Path
) -> None:
    settings = webhook_settings(server, webhook_url="ftp://example.invalid/hook")
    connector = TelegramConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        health = connector.health()
    assert health.state == "failed" and "an https url must be provided" in health.detail.lower()


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"connectors\.telegram\.token"):
        load_settings({"telegram": {"dm_policy": "open"}})
    with pytest.raises(ConfigError, match=r"connectors\.telegram\.dm_policy"):
        load_settings({"telegram": {"token": "env:T", "dm_policy": "everyone"}})
    with pytest.raises(ConfigError, match=r"connectors\.telegram\.webhook_url': Value error, required in webhook mode"):
        load_settings({"telegram": {"token": "env:T", "mode": "webhook", "webhook_secret": "env:S"}})
    parsed = load_settings({"telegram": {"token": "env:TELEGRAM_TOKEN", "allow_from": [12345]}})["telegram"]
    assert isinstance(parsed, TelegramSettings) and parsed.allow_from == ["12345"]
