"""What every connector must survive, run once per platform against its local server
(aibox/bench/platforms): rate limits and server errors in the middle of a reply, a
connection cut mid-reply, malformed input, huge and unusual text, a burst from many
chats, long replies, strangers, a bad token, and secrets kept out of the logs.

A `Platform` adapter says, for one platform, how to start its server, point a connector
at it, write as a person, and cut or break things; the scenarios are written once,
below it. What only one platform has (WhatsApp's 400 pair rate limit, Telegram's
webhook mode, Slack's threads) stays in that platform's own test file.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from aibox.bench.platforms.discord import FakeDiscord
from aibox.bench.platforms.outbox import FaultPlan, Outbox
from aibox.bench.platforms.slack import FakeSlack
from aibox.bench.platforms.telegram import TelegramServer, parse_html
from aibox.bench.platforms.whatsapp import FakeWhatsApp
from aibox.logs import JsonFormatter, TextFormatter
from aibox.secrets import Secret
from connectors.base import Connector, InboundMessage
from connectors.discord import DiscordConnector, DiscordSettings
from connectors.markdown import to_telegram_html
from connectors.settings import ConnectorSettings
from connectors.slack import SlackConnector, SlackSettings
from connectors.tables import AuditEntry
from connectors.telegram import TelegramConnector, TelegramSettings
from connectors.whatsapp import WhatsAppConnector, WhatsAppSettings
from tests.servers.scripted import ScriptedResponder, Wiring, wired

pytestmark = [
    # PTB's advice to use get_updates, after a batch get_updates could not parse (our
    # connector filters it at import; pytest resets filters per test), and PTB's notice
    # about the type of RetryAfter.retry_after, raised inside PTB.
    pytest.mark.filterwarnings("ignore:Please use 'Bot.getUpdates':UserWarning"),
    pytest.mark.filterwarnings("ignore:Deprecated since version v22.2:DeprecationWarning"),
]

LONG_ANSWER = (
    "First paragraph. " * 150
    + "\n\n```python\n"
    + "".join(f"print('line {i}')\n" for i in range(200))
    + "```\n\n"
    + "Closing words, said plainly. " * 150
)
SHORTER_LONG_ANSWER = (  # long enough for Discord's 2,000 characters
    "First paragraph. " * 60
    + "\n\n```python\n"
    + "".join(f"print('line {i}')\n" for i in range(60))
    + "```\n\n"
    + "Closing words, said plainly. " * 50
)
LONGER_LONG_ANSWER = (  # long enough for Slack's 40,000 characters
    "An opening paragraph that goes on. " * 200
    + "\n\n```\n"
    + "".join(f"step {i}: do the thing\n" for i in range(150))
    + "```\n\n"
    + "More prose follows here, sentence after sentence. " * 900
)
DIGITS = ("0123456789" * 10_000)[:99_990] + "THE-END!!!"
MARKUP = ("abc<>&xyz " * 10_000)[:99_990] + "THE-END!!!"  # what Slack escapes
UNUSUAL = "héllo 👩‍👩‍👧‍👦 🇺🇳 مرحبا بالعالم שלום zero\u200bwidth\u200d joiner \u2060 \u202eflipped\u202c ✔️ a<b & c>d"


def echo(msg: InboundMessage) -> str:
    return f"You said: {msg.text}"


class Platform(abc.ABC):
    """One platform's local server, and how the scenarios below drive it."""

    name: str
    max_text: int
    edits = True  # False: pieces are sent once, whole (WhatsApp)
    quotes_question = True  # the reply names the question it answers (reply_to); not Slack DMs
    send_route: str  # the fault route of the first message of a reply
    stream_route: str  # the fault route of what follows it while a reply streams
    rate_limit_wait: float
    second_server_error: int
    long_answer: str
    long_messages: range  # how many messages `long_answer` arrives in
    huge: str
    echo_huge = True  # echo the 100,000 characters back; False: answer with their length
    drops: list[tuple[str, str]]  # (route, kind) of the faults `drop_mid_reply` plays, sorted
    token_in_urls = False  # the API puts the token in every URL: only the log formatters mask it

    def __init__(self, server: Any) -> None:
        self.server = server
        self.outbox: Outbox = server.outbox
        self.faults: FaultPlan = server.faults

    @abc.abstractmethod
    def person(self, i: int) -> tuple[str, str]:
        """The i-th person's direct chat with the bot and their sender id; 0 is the owner."""

    @abc.abstractmethod
    def settings(self, **overrides: Any) -> ConnectorSettings: ...

    @abc.abstractmethod
    def connector(self, settings: ConnectorSettings) -> Connector: ...

    @abc.abstractmethod
    async def say(self, chat: str, sender: str, text: str) -> str:
        """A person writes `text`; returns the id a reply to it names in reply_to."""

    async def attached(self, connector: Connector) -> None:
        """Whatever the platform needs once the connector runs (only WhatsApp: where to post)."""

    @abc.abstractmethod
    async def drop_mid_reply(self) -> None:
        """Cuts the connection, or plans cuts, while a reply is streaming."""

    async def say_after_drop(self, chat: str, sender: str, text: str) -> None:
        await self.say(chat, sender, text)

    async def after_drop_replies(self) -> None:
        """What the platform does once both replies are in (only Slack: redeliver an event)."""

    def dropped_and_recovered(self) -> bool:
        """The platform's own sign that the connection was cut and came back, where the
        faults played do not show it already (Discord's RESUME, Slack's new socket)."""
        return True

    @abc.abstractmethod
    async def send_malformed(self) -> None: ...

    @abc.abstractmethod
    def bad_tokens(self) -> list[tuple[dict[str, Any], str, str]]:
        """(settings overrides, what health() then says, what it must not say)."""

    @abc.abstractmethod
    def secrets(self) -> list[str]: ...

    def log_marker(self, chat: str) -> str:
        """A string the debug log holds once a message went through `chat`."""
        return chat

    def shown(self, markdown: str) -> str:
        """What a person sees of a Markdown answer (Telegram renders it: fences and their
        language tags are formatting, not text)."""
        return markdown

    def over_limit(self) -> list[str]:
        """What the platform took although it was over its limit (only Slack truncates;
        the others refuse such a message outright)."""
        return []


class Telegram(Platform):
    name = "telegram"
    max_text = 4096
    send_route = "sendMessage"
    stream_route = "editMessageText"
    rate_limit_wait = 1.0
    second_server_error = 502
    long_answer = LONG_ANSWER
    long_messages = range(3, 100)
    huge = DIGITS
    drops = [("editMessageText", "drop_after"), ("editMessageText", "drop_before"), ("getUpdates", "drop_after")]
    token_in_urls = True
    server: TelegramServer

    def person(self, i: int) -> tuple[str, str]:
        return str(4242 + i), str(4242 + i)

    def settings(self, **overrides: Any) -> ConnectorSettings:
        values = {
            "token": Secret(self.server.token),
            "base_url": self.server.base_url,
            "base_file_url": self.server.base_file_url,
            "poll_timeout_s": 2,
            "allow_from": [self.person(0)[1]],
            "edit_interval_s": 0.05,
            **overrides,
        }
        return TelegramSettings(**values)

    def connector(self, settings: ConnectorSettings) -> Connector:
        assert isinstance(settings, TelegramSettings)
        return TelegramConnector(settings)

    async def say(self, chat: str, sender: str, text: str) -> str:
        return str(self.server.user_message(int(chat), text, user_id=int(sender)))

    async def drop_mid_reply(self) -> None:
        # An edit cut before Telegram sees it, another after Telegram applied it (the
        # retry then meets "message is not modified"), and the long poll carrying the
        # next question cut after Telegram answered, so the update comes again.
        self.faults.add("editMessageText", drop="before")
        self.faults.add("editMessageText", drop="after")
        self.faults.add("getUpdates", drop="after")

    async def send_malformed(self) -> None:
        self.server.garbage_next_poll()
        self.server.raw_updates(
            {"update_id": self.server.next_update_id(), "message": {"message_id": "x", "chat": "not a chat"}},
            {"update_id": self.server.next_update_id(), "message": {"text": "no chat, no sender, no date"}},
            "not even an object",
        )

    def bad_tokens(self) -> list[tuple[dict[str, Any], str, str]]:
        return [({"token": Secret("999:not-the-token")}, "rejected the bot token", "not-the-token")]

    def secrets(self) -> list[str]:
        return [self.server.token]

    def log_marker(self, chat: str) -> str:
        return "sendMessage"

    def shown(self, markdown: str) -> str:
        return parse_html(to_telegram_html(markdown))[0]


class Discord(Platform):
    name = "discord"
    max_text = 2000
    send_route = "send"
    stream_route = "edit"
    rate_limit_wait = 0.3
    second_server_error = 502
    long_answer = SHORTER_LONG_ANSWER
    long_messages = range(3, 100)
    huge = DIGITS
    echo_huge = False
    drops = [("send", "drop_after")]
    server: FakeDiscord

    def person(self, i: int) -> tuple[str, str]:
        return str(100 + i), str(500 + i)

    def settings(self, **overrides: Any) -> ConnectorSettings:
        values = {
            "token": Secret(self.server.token),
            "api_base": self.server.api_base,
            "gateway_url": self.server.gateway_url,
            "allow_from": [self.person(0)[1]],
            "start_timeout_s": 10.0,
            "reconnect_max_delay_s": 0.5,
            "edit_interval_s": 0.05,
            **overrides,
        }
        return DiscordSettings(**values)

    def connector(self, settings: ConnectorSettings) -> Connector:
        assert isinstance(settings, DiscordSettings)
        return DiscordConnector(settings)

    async def say(self, chat: str, sender: str, text: str) -> str:
        return await self.server.user_says(chat, sender, text)

    async def drop_mid_reply(self) -> None:
        # What is said while the bot is away, Discord replays on RESUME. The first POST
        # of its reply is cut after Discord stored it: only the nonce keeps it single.
        await self.server.drop_gateway()
        self.faults.add("send", drop="after")

    def dropped_and_recovered(self) -> bool:
        return self.server.resume_count >= 1

    async def send_malformed(self) -> None:
        # A frame that is not JSON and a message without channel or author: discord.py
        # gives up on its client each time, and the connector starts a fresh one.
        await self.server.send_raw("{this is not json")
        await self.outbox.wait_for(lambda: self.server.identify_count >= 2, timeout=15)
        await self.server.wait_identified()
        await self.server.dispatch("MESSAGE_CREATE", {"id": "1", "content": "no channel, no author"})
        await self.outbox.wait_for(lambda: self.server.identify_count >= 3, timeout=15)
        await self.server.wait_identified()

    def bad_tokens(self) -> list[tuple[dict[str, Any], str, str]]:
        return [({"token": Secret("not-the-token")}, "connectors.discord.token", "not-the-token")]

    def secrets(self) -> list[str]:
        return [self.server.token]


class Slack(Platform):
    name = "slack"
    max_text = 40_000
    quotes_question = False
    send_route = "chat.postMessage"
    stream_route = "chat.update"
    rate_limit_wait = 1.0
    second_server_error = 503
    long_answer = LONGER_LONG_ANSWER
    long_messages = range(2, 3)
    huge = MARKUP
    echo_huge = False
    drops = [("chat.postMessage", "drop_after"), ("chat.update", "drop_before")]
    server: FakeSlack

    def person(self, i: int) -> tuple[str, str]:
        return f"D{100 + i}", f"U{5000 + i}"

    def settings(self, **overrides: Any) -> ConnectorSettings:
        values = {
            "bot_token": Secret(self.server.bot_token),
            "app_token": Secret(self.server.app_token),
            "api_base": self.server.api_base,
            "allow_from": [self.person(0)[1]],
            "ping_interval_s": 1.0,
            "start_timeout_s": 10.0,
            "reconnect_max_delay_s": 1.0,
            "edit_interval_s": 0.05,
            **overrides,
        }
        return SlackSettings(**values)

    def connector(self, settings: ConnectorSettings) -> Connector:
        assert isinstance(settings, SlackSettings)
        return SlackConnector(settings)

    async def say(self, chat: str, sender: str, text: str) -> str:
        return await self.server.user_says(chat, sender, text)

    async def drop_mid_reply(self) -> None:
        # The socket goes; an edit is cut before Slack sees it, and the next post is
        # stored by Slack but its answer lost: only the nonce lookup keeps it single.
        await self.server.drop_socket()
        self.faults.add("chat.update", drop="before")
        self.faults.add("chat.postMessage", drop="after")

    async def after_drop_replies(self) -> None:
        await self.server.redeliver_last()  # Slack retrying an event whose ack it missed

    def dropped_and_recovered(self) -> bool:
        return self.server.connections_opened >= 2

    async def send_malformed(self) -> None:
        await self.server.send_raw("{this is not json")
        await self.server.send_raw(json.dumps({"envelope_id": "x1", "type": "events_api", "payload": "not an object"}))
        await self.server.push({"type": "event_callback", "team_id": self.server.team_id, "event": {"type": "message"}})
        await self.server.push({"type": "event_callback", "team_id": self.server.team_id, "event": "a string"})

    def bad_tokens(self) -> list[tuple[dict[str, Any], str, str]]:
        return [
            ({key: Secret("xoxb-wrong-value")}, f"connectors.slack.{key}", "wrong-value")
            for key in ("bot_token", "app_token")
        ]

    def secrets(self) -> list[str]:
        return [self.server.bot_token, self.server.app_token]

    def over_limit(self) -> list[str]:
        return self.server.truncated


class WhatsApp(Platform):
    name = "whatsapp"
    max_text = 4096
    edits = False
    send_route = "send"
    stream_route = "send"
    rate_limit_wait = 0.5
    second_server_error = 503
    long_answer = LONG_ANSWER
    long_messages = range(3, 100)
    huge = DIGITS
    drops = [("send", "drop_before"), ("typing", "drop_before")]
    server: FakeWhatsApp
    verify_token = "my-verify-token"

    def person(self, i: int) -> tuple[str, str]:
        return f"1555123{i:04d}", f"1555123{i:04d}"

    def settings(self, **overrides: Any) -> ConnectorSettings:
        values = {
            "access_token": Secret(self.server.access_token),
            "app_secret": Secret(self.server.app_secret),
            "verify_token": Secret(self.verify_token),
            "phone_number_id": self.server.phone_number_id,
            "graph_url": self.server.graph_url,
            "listen_port": 0,
            "allow_from": [self.person(0)[1]],
            "edit_interval_s": 0.05,
            **overrides,
        }
        return WhatsAppSettings(**values)

    def connector(self, settings: ConnectorSettings) -> Connector:
        assert isinstance(settings, WhatsAppSettings)
        return WhatsAppConnector(settings)

    async def attached(self, connector: Connector) -> None:
        assert isinstance(connector, WhatsAppConnector)
        self.server.webhook_url = connector.webhook_url  # it listens on a free port

    async def say(self, chat: str, sender: str, text: str) -> str:
        return await self.server.user_message(sender, text)

    async def drop_mid_reply(self) -> None:
        self.faults.add("send", drop="before")
        self.faults.add("typing", drop="before")

    async def say_after_drop(self, chat: str, sender: str, text: str) -> None:
        await self.server.user_message(sender, text, times=2)  # as Meta does when our 200 came late

    async def send_malformed(self) -> None:
        meta, owner = self.server, self.person(0)[1]
        for body in (b"{not json", b"[1, 2, 3]"):  # not a webhook post at all
            assert (await meta.post_raw(body)).status_code == 400
        # A post with nothing valid in it: skipped and answered 200, or Meta posts it again forever.
        assert (await meta.post_raw(json.dumps({"entry": [{"changes": "nope"}]}).encode())).status_code == 200
        odd = meta.envelope(owner, {"from": owner, "id": "wamid.odd", "type": "text", "text": {"body": 42}})
        assert (await meta.post_raw(json.dumps(odd).encode())).status_code == 200
        status_only = {"entry": [{"changes": [{"field": "messages", "value": {"statuses": [{"id": "x"}]}}]}]}
        assert (await meta.post_raw(json.dumps(status_only).encode())).status_code == 200

    def bad_tokens(self) -> list[tuple[dict[str, Any], str, str]]:
        return [({"access_token": Secret("EAAG-wrong-token")}, "Invalid OAuth access token", "EAAG-wrong-token")]

    def secrets(self) -> list[str]:
        return [self.server.access_token, self.server.app_secret, self.verify_token]

    def log_marker(self, chat: str) -> str:
        return "HTTP Request"


SERVERS: dict[str, tuple[type[Platform], Callable[[], AbstractAsyncContextManager[Any]]]] = {
    "telegram": (Telegram, TelegramServer),
    "discord": (Discord, lambda: FakeDiscord(token="discord-test-token-123")),
    "slack": (Slack, FakeSlack),
    "whatsapp": (WhatsApp, FakeWhatsApp),
}


@pytest.fixture(params=list(SERVERS))
async def platform(request: pytest.FixtureRequest) -> AsyncIterator[Platform]:
    adapter, server = SERVERS[request.param]
    async with server() as running_server:
        yield adapter(running_server)


@asynccontextmanager
async def running(
    p: Platform, responder: ScriptedResponder, state_dir: Path, **overrides: Any
) -> AsyncIterator[tuple[Connector, Wiring]]:
    settings = p.settings(**overrides)
    connector = p.connector(settings)
    async with wired(connector, settings, responder, state_dir) as wiring:
        await p.attached(connector)
        yield connector, wiring


async def test_a_429_in_the_middle_of_streaming_is_waited_out(platform: Platform, tmp_path: Path) -> None:
    p = platform
    chat, sender = p.person(0)
    p.faults.add(p.stream_route, status=429, retry_after=p.rate_limit_wait)
    # Without edits, "mid-stream" is between the pieces of an answer too long for one message.
    expected = "You said: rate limit me" if p.edits else p.long_answer
    responder = ScriptedResponder(answer=lambda m: echo(m) if p.edits else p.long_answer, chunks=4, delay=0.15)
    async with running(p, responder, tmp_path):
        await p.say(chat, sender, "rate limit me")
        messages = await p.outbox.wait_for_text(chat, expected, timeout=20)
    assert [f.status for f in p.faults.played] == [429]
    assert len({m.text for m in messages}) == len(messages), "no piece was sent twice"
    if p.edits:
        [reply] = messages
        assert reply.text == expected


async def test_server_errors_are_retried_and_the_reply_arrives_once(platform: Platform, tmp_path: Path) -> None:
    p = platform
    chat, sender = p.person(0)
    p.faults.add(p.send_route, status=500)
    p.faults.add(p.stream_route, status=p.second_server_error)
    responder = ScriptedResponder(chunks=3, delay=0.1)
    async with running(p, responder, tmp_path):
        await p.say(chat, sender, "break it")
        [reply] = await p.outbox.wait_for_text(chat, "You said: break it", timeout=20)
    assert [f.status for f in p.faults.played] == [500, p.second_server_error]
    assert reply.text == "You said: break it"


async def test_connection_dropped_mid_reply_reconnects_and_delivers_once(platform: Platform, tmp_path: Path) -> None:
    p = platform
    (first_chat, first), (second_chat, second) = p.person(0), p.person(1)
    responder = ScriptedResponder(chunks=6, delay=0.25)
    async with running(p, responder, tmp_path, allow_from=[first, second]) as (connector, _):
        await p.say(first_chat, first, "first question")
        await p.outbox.wait_for(lambda: len(p.outbox.in_chat(first_chat)) == 1)
        await p.drop_mid_reply()
        await p.say_after_drop(second_chat, second, "second question")
        await p.outbox.wait_for_text(first_chat, "You said: first question", timeout=15)
        await p.outbox.wait_for_text(second_chat, "You said: second question", timeout=15)
        await p.after_drop_replies()
        await asyncio.sleep(0.5)  # anything sent twice would show up by now
        assert connector.health().state == "ok"
    assert p.dropped_and_recovered()
    assert sorted((f.route, f.kind) for f in p.faults.played) == p.drops
    assert len(p.outbox.in_chat(first_chat)) == 1 and len(p.outbox.in_chat(second_chat)) == 1
    assert sorted(m.text for m in responder.calls) == ["first question", "second question"]


async def test_malformed_input_is_skipped_and_the_connector_goes_on(platform: Platform, tmp_path: Path) -> None:
    p = platform
    chat, sender = p.person(0)
    responder = ScriptedResponder()
    async with running(p, responder, tmp_path) as (connector, _):
        await p.send_malformed()
        await p.say(chat, sender, "still there?")
        await p.outbox.wait_for_text(chat, "You said: still there?", timeout=15)
        assert connector.health().state == "ok"
    assert [m.text for m in responder.calls] == ["still there?"]


async def test_a_100000_character_message_arrives_whole(platform: Platform, tmp_path: Path) -> None:
    p = platform
    chat, sender = p.person(0)
    assert len(p.huge) == 100_000
    if p.echo_huge:
        responder = ScriptedResponder(answer=lambda m: m.text)
        expected = p.huge
    else:
        responder = ScriptedResponder(answer=lambda m: f"{len(m.text)} characters, ending {m.text[-10:]}")
        expected = "100000 characters, ending THE-END!!!"
    async with running(p, responder, tmp_path):
        await p.say(chat, sender, p.huge)
        messages = await p.outbox.wait_for_text(chat, expected, timeout=30)
    assert responder.calls[0].text == p.huge
    if p.echo_huge:
        assert len(messages) == 25 and all(len(m.text) <= p.max_text for m in messages)


async def test_emoji_rtl_and_zero_width_text_round_trips_exactly(platform: Platform, tmp_path: Path) -> None:
    p = platform
    chat, sender = p.person(0)
    responder = ScriptedResponder(answer=lambda m: m.text, chunks=7)
    async with running(p, responder, tmp_path):
        await p.say(chat, sender, UNUSUAL)
        await p.outbox.wait_for(lambda: [m.text for m in p.outbox.in_chat(chat)] == [UNUSUAL], timeout=15)
    assert responder.calls[0].text == UNUSUAL


async def test_a_burst_of_100_messages_from_20_chats_gets_every_reply_once(platform: Platform, tmp_path: Path) -> None:
    p = platform
    people = [p.person(10 + i) for i in range(20)]
    responder = ScriptedResponder(chunks=2)
    async with running(p, responder, tmp_path, allow_from=[s for _, s in people], rate_limit_burst=10):
        said = [(chat, sender, f"chat {chat} message {n}") for n in range(5) for chat, sender in people]
        ids = await asyncio.gather(*(p.say(chat, sender, text) for chat, sender, text in said))
        sent = {(chat, message_id): text for (chat, _, text), message_id in zip(said, ids)}
        wanted = sorted((chat, f"You said: {text}") for (chat, _), text in sent.items())
        await p.outbox.wait_for(lambda: sorted((m.chat_id, m.text) for m in p.outbox.all()) == wanted, timeout=60)
        await asyncio.sleep(0.3)  # anything sent twice would show up by now
    replies = p.outbox.all()
    assert len(replies) == 100
    assert sorted((m.chat_id, m.text) for m in replies) == wanted
    if p.quotes_question:
        assert sorted((m.chat_id, m.reply_to) for m in replies) == sorted(sent)
        for m in replies:
            assert m.text == f"You said: {sent[(m.chat_id, m.reply_to)]}"


async def test_long_reply_is_split_under_the_limit_and_nothing_is_lost(platform: Platform, tmp_path: Path) -> None:
    p = platform
    chat, sender = p.person(0)
    responder = ScriptedResponder(answer=lambda m: p.long_answer, chunks=6, delay=0.05)
    async with running(p, responder, tmp_path):
        await p.say(chat, sender, "tell me a lot")
        messages = await p.outbox.wait_for_text(chat, p.shown(p.long_answer), timeout=30)
    assert len(messages) in p.long_messages
    assert all(len(m.text) <= p.max_text for m in messages) and p.over_limit() == []
    if not p.edits:
        assert all(m.edits == 0 for m in messages)
    for m in messages:  # every message renders its code on its own: fences come in pairs
        assert m.text.count("```") % 2 == 0, m.text


async def test_unknown_sender_gets_a_pairing_code_and_no_answer_until_approved(
    platform: Platform, tmp_path: Path
) -> None:
    p = platform
    chat, stranger = p.person(7)
    others = [p.person(20 + i) for i in range(4)]
    responder = ScriptedResponder()
    async with running(p, responder, tmp_path, allow_from=[]) as (_, wiring):
        await p.say(chat, stranger, "let me in")
        await p.outbox.wait_for(lambda: len(p.outbox.in_chat(chat)) == 1)
        [offer] = p.outbox.in_chat(chat)
        code = re.search(r"approve ([A-Z0-9]{8})", offer.text)
        assert code is not None, offer.text
        assert responder.calls == []
        approved = wiring.pairing.approve(code.group(1))
        assert (approved.sender_id, approved.role) == (stranger, "owner")
        await p.say(chat, stranger, "now?")
        await p.outbox.wait_for(lambda: any(m.text == "You said: now?" for m in p.outbox.in_chat(chat)))
        for other_chat, other in others:  # three codes may wait; the fourth stranger gets nothing
            await p.say(other_chat, other, "hello?")
        await p.outbox.wait_for(lambda: sum(len(p.outbox.in_chat(c)) for c, _ in others) == 3)
        await asyncio.sleep(0.3)
        await wiring.audit.flush()
        with wiring.store.session() as s:
            audit = list(s.scalars(select(AuditEntry)))
    assert [m.text for m in responder.calls] == ["now?"]
    assert [len(p.outbox.in_chat(c)) for c, _ in others] == [1, 1, 1, 0]
    decisions = [(e.sender_id, e.decision) for e in audit]
    assert (stranger, "pairing_code_sent") in decisions and (stranger, "accepted") in decisions
    assert (others[3][1], "pairing_refused") in decisions
    assert not any("let me in" in e.detail or "now?" in e.detail for e in audit), "the audit log holds no content"


async def test_a_bad_token_fails_the_connector_with_a_reason(platform: Platform, tmp_path: Path) -> None:
    p = platform
    for n, (overrides, reason, leaked) in enumerate(p.bad_tokens()):
        settings = p.settings(**overrides)
        connector = p.connector(settings)
        async with wired(connector, settings, ScriptedResponder(), tmp_path / str(n)):
            health = connector.health()
        assert health.state == "failed", overrides
        assert reason in health.detail and leaked not in health.detail, health.detail


async def test_secrets_stay_out_of_the_logs_even_at_debug(platform: Platform, tmp_path: Path, caplog) -> None:
    p = platform
    chat, sender = p.person(0)
    caplog.set_level(logging.DEBUG)
    async with running(p, ScriptedResponder(), tmp_path):
        await p.say(chat, sender, "hello")
        await p.outbox.wait_for_text(chat, "You said: hello")
    raw = "\n".join(r.getMessage() for r in caplog.records)
    marker = p.log_marker(chat)
    assert marker in raw, "debug logging was captured"
    for formatter in (JsonFormatter(), TextFormatter()):
        written = "\n".join(formatter.format(r) for r in caplog.records)
        assert marker in written and not any(secret in written for secret in p.secrets())
    if p.token_in_urls:  # so the formatters above had something to mask
        assert any(p.secrets()[0] in r.getMessage() for r in caplog.records), "the URLs with the token were logged"
    else:
        assert not any(secret in raw for secret in p.secrets())
