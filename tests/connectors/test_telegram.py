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
import logging
import socket
from pathlib import Path

import pytest
from sqlalchemy import select

from aibox.bench.platforms.telegram import TelegramServer, utf16_len
from aibox.config import ConfigError
from aibox.secrets import Secret
from connectors.gateway import Redelivery
from connectors.manager import load_settings
from connectors.reply import RetryPolicy
from connectors.tables import AuditEntry
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
    notices = [i for i, t in enumerate(texts) if "slow down" in t]
    assert len(texts) == 3 and len(notices) == 1
    assert notices[0] < 2, "the notice jumps the sender's queue: it does not wait behind the second code"
    codes = [t for t in texts if "slow down" not in t]
    assert codes[0] == codes[1] and "pairing code" in codes[0], "the same code, not a new one each time"
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
        said = "what is in this file?\n\n(attached, which the box cannot read: document report.pdf)"
        await server.outbox.wait_for_text(str(OWNER), f"You said: {said}")
    [msg] = responder.calls
    assert msg.text == said and msg.reply_to == "400" and msg.sender_name == "Ann Lee"
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
    [notice] = [t for t in texts if "slow down" in t]
    assert sorted(t for t in texts if t != notice) == ["You said: flood 0", "You said: flood 1"] and len(texts) == 3
    assert texts.index(notice) < texts.index("You said: flood 1"), "the notice jumps the sender's queued answers"
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


# -- issue 20: delivery under faults, non-text messages, formatting ------------------------

QUICK = RetryPolicy(attempts=2, base_delay=0.05, max_delay=0.1)


async def test_a_reply_whose_sends_keep_failing_is_retried_while_running_and_says_it_is_late(
    server: TelegramServer, tmp_path: Path
) -> None:
    settings = fast(server)
    server.faults.add("sendMessage", status=502, times=5)  # more than the streamer's own retries, twice over
    responder = ScriptedResponder()
    redelivery = Redelivery(base_s=0.2, max_s=0.4, late_after_s=0.0)
    async with wired(TelegramConnector(settings), settings, responder, tmp_path, inbox=True, policy=QUICK,
                     redelivery=redelivery) as wiring:
        server.user_message(OWNER, "are you there?")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat(str(OWNER))) == 1, timeout=20)
        await server.outbox.wait_for(lambda: "You said" in server.outbox.in_chat(str(OWNER))[0].text, timeout=10)
        await asyncio.sleep(0.5)
        assert wiring.inbox is not None and wiring.inbox.counts() == {"answered": 1}
    [reply] = server.outbox.in_chat(str(OWNER))
    assert reply.text.startswith("(Sorry, this answer is late") and reply.text.endswith("You said: are you there?")
    assert len(responder.calls) == 1, "the answer written the first time was kept, not asked for again"
    assert server.faults.pending == 0


async def test_a_reply_that_never_gets_through_ends_undeliverable(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    server.faults.add("sendMessage", status=403, times=100)  # the user blocked the bot
    redelivery = Redelivery(base_s=0.05, max_s=0.1, give_up_after_s=0.5)
    async with wired(TelegramConnector(settings), settings, ScriptedResponder(), tmp_path, inbox=True, policy=QUICK,
                     redelivery=redelivery) as wiring:
        server.user_message(OWNER, "hello")
        assert wiring.inbox is not None
        await server.outbox.wait_for(lambda: wiring.inbox.counts() == {"undeliverable": 1}, timeout=15)
        tries = server.calls.count("sendMessage")
        await asyncio.sleep(0.5)
        assert server.calls.count("sendMessage") == tries, "a terminal state is never retried"
        await wiring.audit.flush()
        with wiring.store.session() as s:
            decisions = [e.decision for e in s.scalars(select(AuditEntry))]
    assert "undeliverable" in decisions and 2 < tries < 100


async def test_after_a_429_the_retried_write_counts_for_flood_control(server: TelegramServer, tmp_path: Path) -> None:
    server.flood_interval_s = 0.9  # Telegram: about one message per second in one chat
    settings = settings_for(server, edit_interval_s=1.0)
    server.faults.add("editMessageText", status=429, retry_after=1)
    responder = ScriptedResponder(chunks=5, delay=0.4)
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        server.user_message(OWNER, "pace yourself please")
        await server.outbox.wait_for_text(str(OWNER), "You said: pace yourself please", timeout=30)
    assert [f.status for f in server.faults.played] == [429]
    assert server.flood_rejected == 0, "no write went out within a second of the retried one"


async def test_replies_are_split_by_utf16_length(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    answer = "😀" * 5000  # 10,000 UTF-16 code units in 5,000 characters
    async with wired(TelegramConnector(settings), settings, ScriptedResponder(answer=lambda m: answer), tmp_path):
        server.user_message(OWNER, "emoji please")
        messages = await server.outbox.wait_for_text(str(OWNER), answer, timeout=20)
    assert len(messages) == 3 and all(utf16_len(m.text) <= 4096 for m in messages)


async def test_markdown_is_rendered_as_telegram_html_with_utf16_offsets(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    answer = "👩‍👩‍👧 **bold** and `a<b & c>d`\n```json\n{\"k\": 1}\n```"
    async with wired(TelegramConnector(settings), settings, ScriptedResponder(answer=lambda m: answer), tmp_path):
        server.user_message(OWNER, "format it")
        await server.outbox.wait_for(lambda: any(m.entities for m in server.outbox.in_chat(str(OWNER))) and
                                     "{" in server.outbox.in_chat(str(OWNER))[0].text, timeout=15)
        await asyncio.sleep(0.3)
    [reply] = server.outbox.in_chat(str(OWNER))
    assert reply.text == '👩‍👩‍👧 bold and a<b & c>d\n{"k": 1}'
    units = reply.text.encode("utf-16-le")
    shown = {e["type"]: units[2 * e["offset"]: 2 * (e["offset"] + e["length"])].decode("utf-16-le") for e in reply.entities}
    assert shown == {"bold": "bold", "code": "a<b & c>d", "pre": '{"k": 1}'}
    assert [e.get("language") for e in reply.entities if e["type"] == "pre"] == ["json"]


async def test_refused_entities_fall_back_to_plain_text(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    server.faults.add("sendMessage", status=400, detail="Bad Request: can't parse entities: unsupported start tag")
    answer = "**plain** then"
    async with wired(TelegramConnector(settings), settings, ScriptedResponder(answer=lambda m: answer, chunks=1), tmp_path):
        server.user_message(OWNER, "x")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat(str(OWNER))) == 1, timeout=15)
    [reply] = server.outbox.in_chat(str(OWNER))
    assert reply.text == answer and reply.entities == []


async def test_stickers_documents_start_and_edits(server: TelegramServer, tmp_path: Path) -> None:
    settings = fast(server)
    responder = ScriptedResponder()
    chat = str(OWNER)
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        await server.outbox.wait_for(lambda: server.commands is not None, timeout=10)
        server.user_media(OWNER, "sticker")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat(chat)) == 1)
        server.user_media(OWNER, "document", content=b"line one\nline two\n", file_name="notes.txt")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat(chat)) == 2)
        server.user_message(OWNER, "/start")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat(chat)) == 3)
        asked = server.user_message(OWNER, "what is 2+2")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat(chat)) == 4)
        await asyncio.sleep(1.1)  # Telegram's edit_date has whole seconds
        server.user_edits(OWNER, asked, "what is 3+3")
        await server.outbox.wait_for(lambda: len(server.outbox.in_chat(chat)) == 5)
    sticker, document, start, answer, edited = server.outbox.in_chat(chat)
    assert "can't read stickers" in sticker.text
    assert document.text == "You said: [notes.txt]\nline one\nline two"
    assert "/help" in start.text and "/reset" in start.text
    assert [m.text for m in responder.calls] == ["[notes.txt]\nline one\nline two", "what is 2+2", "what is 3+3"]
    assert (answer.reply_to, edited.reply_to) == (str(asked), str(asked)), "the answer to the edit quotes it"
    assert {c["command"] for c in server.commands or []} >= {"help", "reset", "cancel"}


async def test_a_malformed_update_never_puts_message_text_in_the_log(
    server: TelegramServer, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = fast(server)
    responder = ScriptedResponder()
    async with wired(TelegramConnector(settings), settings, responder, tmp_path):
        server.raw_updates({"update_id": server.next_update_id(),
                            "message": {"message_id": "x", "chat": "not a chat", "text": "my secret diagnosis"}})
        server.user_message(OWNER, "after it")
        await server.outbox.wait_for_text(str(OWNER), "You said: after it")
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert not any("my secret diagnosis" in r.getMessage() for r in caplog.records)
