"""The inbox and its reply journal, without a daemon: stored before acknowledging,
deduped by the platform's message id across restarts, and a reply interrupted by a
crash is finished in the same chat message instead of a second one.

`RecordingConnector` is a real `Connector` subclass that keeps what it was asked to
send in memory: these tests are about the bookkeeping, the platforms' wire protocols
are covered by the connector tests and test_crash_recovery.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from aibox.store import Store
from connectors.audit_log import AuditLog
from connectors.base import Connector, Health, InboundMessage, MessageSink
from connectors.errors import ConnectorError, Undeliverable
from connectors.inbox import Inbox
from connectors.gateway import Gateway
from connectors.outbound import Journal
from connectors.pairing import Pairing
from connectors.settings import ConnectorSettings
from connectors.tables import AuditEntry, InboxMessage
from tests.servers.scripted import ScriptedResponder


class RecordingConnector(Connector):
    platform = "telegram"
    max_text = 4096

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}
        self.sends = 0
        self.edits = 0

    async def start(self, sink: MessageSink) -> None: ...
    async def stop(self) -> None: ...

    def health(self) -> Health:
        return Health("ok")

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        self.sends += 1
        message_id = str(100 + self.sends)
        self.messages[message_id] = text
        return message_id

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        if message_id not in self.messages:
            raise ConnectorError("Bad Request: message to edit not found")
        if self.messages[message_id] == text:
            raise ConnectorError("Bad Request: message is not modified")
        self.edits += 1
        self.messages[message_id] = text

    async def typing(self, chat_id: str) -> None: ...


MSG = InboundMessage("telegram", "42", "42", "7", "hello")


async def test_admit_stores_once_and_dedupes_across_restarts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    inbox = Inbox(Store.open(url))
    assert await inbox.admit(MSG)
    assert not await inbox.admit(MSG), "the same platform message while it is being answered"
    assert [m.key for m in inbox.pending()] == [MSG.key], "stored before anything else happens"

    restarted = Inbox(Store.open(url))  # a crash: nothing in memory survives
    [again] = restarted.pending()
    assert (again.key, again.text, again.sender_id) == (MSG.key, "hello", "42")
    assert await restarted.admit(again), "an unanswered message is answered after a restart"
    await restarted.answered(again)
    assert restarted.pending() == []
    assert not await Inbox(Store.open(url)).admit(MSG), "a redelivered message that was answered is not answered twice"
    assert restarted.counts() == {"answered": 1}


async def test_a_reply_cut_by_a_crash_is_finished_in_the_same_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    connector = RecordingConnector()
    inbox = Inbox(Store.open(url))
    assert await inbox.admit(MSG)
    first = await Journal(connector, inbox).send("42", "Hel", reply_to="7")
    # kill -9 here: the chat shows "Hel", the message is still pending.

    restarted = Inbox(Store.open(url))
    [msg] = restarted.pending()
    assert await restarted.admit(msg)
    again = await Journal(connector, restarted).send("42", "Hello there!", reply_to="7")
    assert again == first and connector.sends == 1 and connector.edits == 1
    assert connector.messages == {first: "Hello there!"}
    same = await Journal(connector, restarted).send("42", "Hello there!", reply_to="7")
    assert same == first and connector.sends == 1, "'not modified' means the text is already there"

    del connector.messages[first]  # the user deleted the partial reply: a new one is sent
    replaced = await Journal(connector, restarted).send("42", "Hello!", reply_to="7")
    assert replaced != first and connector.messages == {replaced: "Hello!"}
    assert await restarted.reply_message("telegram", "42", "7") == replaced


async def test_messages_the_box_starts_itself_are_not_journaled(tmp_path: Path) -> None:
    connector = RecordingConnector()
    inbox = Inbox(Store.open(f"sqlite:///{tmp_path / 'aibox.db'}"))
    journal = Journal(connector, inbox)
    a = await journal.send("42", "⏰ Reminder: stretch")
    b = await journal.send("42", "⏰ Reminder: stretch")
    assert a != b and connector.sends == 2


async def test_an_acknowledged_long_answer_stays_pending_until_it_is_out(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aibox.db'}"
    inbox = Inbox(Store.open(url))
    assert await inbox.admit(MSG)
    inbox.hold(MSG)  # the runner started a background answer and replied "On it"
    await inbox.answered(MSG)  # the gateway delivered the acknowledgement
    assert [m.key for m in Inbox(Store.open(url)).pending()] == [MSG.key], "a crash now must replay the message"
    assert not await inbox.admit(MSG), "still being answered in this process"
    await inbox.settle(MSG)  # the long answer was posted
    assert inbox.pending() == [] and not await inbox.admit(MSG)


async def test_answered_messages_are_pruned_after_the_retention_unanswered_ones_never(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'box.db'}")
    inbox = Inbox(store)
    old_answered = InboundMessage("telegram", "42", "42", "1", "old question")
    new_answered = InboundMessage("telegram", "42", "42", "2", "new question")
    old_pending = InboundMessage("telegram", "42", "42", "3", "never answered")
    for msg in (old_answered, new_answered, old_pending):
        assert await inbox.admit(msg)
    await inbox.answered(old_answered)
    await inbox.answered(new_answered)
    with store.session() as s:  # age two of them by 40 days
        for key in (old_answered.key, old_pending.key):
            row = s.get(InboxMessage, key)
            row.received_at -= timedelta(days=40)
            if row.answered_at is not None:
                row.answered_at -= timedelta(days=40)
    assert inbox.prune(timedelta(days=30)) == 1
    assert inbox.counts() == {"answered": 1, "pending": 1}
    assert [m.text for m in inbox.pending()] == ["never answered"]
    assert not await inbox.admit(new_answered), "a recent duplicate is still recognised"
    assert inbox.prune(timedelta(days=30)) == 0


class RefusingConnector(RecordingConnector):
    """Refuses every reply for good, as WhatsApp does outside the 24-hour window."""

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        self.sends += 1
        raise Undeliverable("131047: more than 24 hours have passed since the customer last replied")


async def test_a_reply_the_platform_refuses_for_good_is_undeliverable_and_never_retried(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
    inbox, audit = Inbox(store), AuditLog(store)
    gateway = Gateway(Pairing(store), audit, ScriptedResponder(), inbox=inbox)
    connector = RefusingConnector()
    gateway.attach(connector, ConnectorSettings(allow_from=["42"]))
    await gateway.handle(MSG)
    await gateway.drain()
    assert inbox.counts() == {"undeliverable": 1} and inbox.pending() == []
    assert not await inbox.admit(MSG), "a redelivery of the message is not answered again"
    assert connector.sends == 1 and gateway._waiting == {}, "no retry is scheduled"
    with store.session() as s:
        [entry] = [e for e in s.scalars(select(AuditEntry)) if e.decision == "undeliverable"]
    assert "131047" in entry.detail
