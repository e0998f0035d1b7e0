"""The WhatsApp connector: our webhook and httpx against a local Meta
(aibox/bench/platforms/whatsapp.py) that signs its webhooks and checks every Graph API call.

The fault scenarios every platform shares (rate limits, dropped connections, malformed
input, bursts, bad tokens, secrets in logs) are in test_faults.py; these are WhatsApp's
own, among them those of issue 20: sends whose answer is lost after Meta stored the
message, a 200 cut off, the 24-hour window (error 131047), a webhook post with one
malformed message among valid ones, a store that fails, media without a caption, a
token revoked while the box runs, and read receipts for messages a restart left pending.
The local Meta posts `sent` statuses to the webhook, as Meta does.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from aibox.bench.platforms.whatsapp import FakeWhatsApp
from aibox.config import ConfigError
from aibox.secrets import Secret
from aibox.store import Store
from connectors.audit_log import AuditLog
from connectors.base import InboundMessage
from connectors.errors import Undeliverable
from connectors.gateway import Gateway
from connectors.inbox import Inbox
from connectors.manager import load_settings
from connectors.pairing import Pairing
from connectors.reply import ReplyStreamer
from connectors.whatsapp import WhatsAppConnector, WhatsAppSettings
from tests.servers.scripted import ScriptedResponder, wired

OWNER = "15551230000"
VERIFY = "my-verify-token"


@pytest.fixture
async def meta():
    async with FakeWhatsApp() as m:
        yield m


def settings_for(meta: FakeWhatsApp, **overrides) -> WhatsAppSettings:
    values = {
        "access_token": Secret(meta.access_token),
        "app_secret": Secret(meta.app_secret),
        "verify_token": Secret(VERIFY),
        "phone_number_id": meta.phone_number_id,
        "graph_url": meta.graph_url,
        "listen_port": 0,
        "allow_from": [OWNER],
        **overrides,
    }
    return WhatsAppSettings(**values)


def fast(meta: FakeWhatsApp, **overrides) -> WhatsAppSettings:
    """Settings with a short pacing interval, for tests about what arrives rather than pacing."""
    return settings_for(meta, edit_interval_s=0.05, **overrides)


async def started(meta: FakeWhatsApp, connector: WhatsAppConnector) -> None:
    """Points Meta at the webhook once the connector listens (it picks a free port)."""
    meta.webhook_url = connector.webhook_url


async def test_dm_round_trip_with_typing_and_a_streamed_reply(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = settings_for(meta)
    responder = ScriptedResponder(chunks=5, delay=0.3)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        assert connector.health().state == "ok"
        await started(meta, connector)
        asked = await meta.user_message(OWNER, "hello there")
        [reply] = await meta.outbox.wait_for_text(OWNER, "You said: hello there", timeout=15)
    # WhatsApp cannot edit: the reply is sent once, whole, after "typing…" was shown.
    assert reply.versions == ["You said: hello there"] and reply.reply_to == asked
    assert OWNER in meta.outbox.typing and meta.read_receipts[0] == asked
    [call] = responder.calls
    assert call.is_direct and call.sender_id == OWNER and call.sender_name == "Test User"


async def test_webhook_verification_and_signatures(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    responder = ScriptedResponder()
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        ok = await meta.verify(VERIFY, challenge="98765")
        assert (ok.status_code, ok.text) == (200, "98765")
        assert (await meta.verify("wrong-token")).status_code == 403
        body = json.dumps(meta.envelope(OWNER, meta.text_message(OWNER, "forged"))).encode()
        assert (await meta.post_raw(body, sign=False)).status_code == 401
        assert (await meta.post_raw(body, signature="sha256=" + "0" * 64)).status_code == 401
        tampered = body.replace(b"forged", b"FORGED")
        assert (await meta.post_raw(tampered, signature=meta.sign(body))).status_code == 401
        await meta.user_message(OWNER, "genuine")
        await meta.outbox.wait_for_text(OWNER, "You said: genuine")
    assert [m.text for m in responder.calls] == ["genuine"]


async def test_media_and_replies_arrive_as_metadata(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    responder = ScriptedResponder()
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        image = {
            "from": OWNER, "id": "wamid.img1", "timestamp": "1700000000", "type": "image",
            "image": {"caption": "what plant is this?", "mime_type": "image/jpeg", "sha256": "abc", "id": "MEDIA-1"},
            "context": {"from": meta.display_number, "id": "wamid.out.earlier"},
        }
        answer = await meta.post_raw(json.dumps(meta.envelope(OWNER, image)).encode())
        assert answer.status_code == 200
        await meta.outbox.wait_for_text(OWNER, "You said: what plant is this?")
    [msg] = responder.calls
    assert msg.text == "what plant is this?" and msg.reply_to == "wamid.out.earlier"
    [photo] = msg.attachments
    assert (photo.kind, photo.mime_type, photo.ref) == ("image", "image/jpeg", "MEDIA-1")


async def test_the_pair_rate_limit_sent_as_a_400_is_waited_out_too(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    meta.faults.add("send", status=400)
    responder = ScriptedResponder()
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        await meta.user_message(OWNER, "again please")
        [reply] = await meta.outbox.wait_for_text(OWNER, "You said: again please", timeout=15)
    assert [f.status for f in meta.faults.played] == [400]
    assert reply.text == "You said: again please"


async def test_graph_api_unreachable_at_start_is_degraded_until_a_send_gets_through(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on, yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    late = FakeWhatsApp(port=port)
    settings = fast(late)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        assert connector.health().state == "degraded" and "not reachable yet" in connector.health().detail
        async with late:
            await started(late, connector)
            await late.user_message(OWNER, "hello again")
            await late.outbox.wait_for_text(OWNER, "You said: hello again", timeout=20)
            await late.outbox.wait_for(lambda: connector.health().state == "ok", timeout=5)


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"connectors\.whatsapp\.app_secret"):
        load_settings({"whatsapp": {"access_token": "env:A", "verify_token": "env:V", "phone_number_id": "1"}})
    with pytest.raises(ConfigError, match=r"connectors\.whatsapp\.listen_port"):
        load_settings({"whatsapp": {"access_token": "env:A", "app_secret": "env:S", "verify_token": "env:V",
                                    "phone_number_id": "1", "listen_port": 70000}})


@asynccontextmanager
async def box(meta: FakeWhatsApp, responder: ScriptedResponder, state_dir: Path, **overrides) -> AsyncIterator[tuple[WhatsAppConnector, Gateway]]:
    """The connector behind a real gateway with its inbox and journal, on SQLite."""
    store = Store.open(f"sqlite:///{state_dir / 'aibox.db'}")
    gateway = Gateway(Pairing(store), AuditLog(store), responder, inbox=Inbox(store))
    settings = fast(meta, confirm_wait_s=3.0, **overrides)
    connector = WhatsAppConnector(settings)
    await connector.start(gateway.attach(connector, settings))
    meta.webhook_url = connector.webhook_url
    try:
        yield connector, gateway
    finally:
        await gateway.drain(timeout=5.0)
        await connector.stop()
        store.close()


async def test_a_send_dropped_after_meta_stored_it_is_not_sent_again(meta: FakeWhatsApp, tmp_path: Path) -> None:
    meta.faults.add("send", drop="after")
    async with box(meta, ScriptedResponder(), tmp_path) as (_, gateway):
        await meta.user_message(OWNER, "only once")
        await meta.outbox.wait_for_text(OWNER, "You said: only once", timeout=15)
        await meta.outbox.wait_for(lambda: gateway.inbox.counts() == {"answered": 1}, timeout=10)
        await asyncio.sleep(0.5)
    assert [f.kind for f in meta.faults.played] == ["drop_after"]
    assert len(meta.outbox.in_chat(OWNER)) == 1


async def test_a_send_dropped_before_meta_stored_it_is_sent_once(meta: FakeWhatsApp, tmp_path: Path) -> None:
    meta.faults.add("send", drop="before")
    async with box(meta, ScriptedResponder(), tmp_path) as (_, gateway):
        await meta.user_message(OWNER, "lost on the way")
        [reply] = await meta.outbox.wait_for_text(OWNER, "You said: lost on the way", timeout=20)
        await meta.outbox.wait_for(lambda: gateway.inbox.counts() == {"answered": 1}, timeout=10)
    assert reply.text == "You said: lost on the way"


async def test_a_200_cut_off_counts_as_delivered_not_pending(meta: FakeWhatsApp, tmp_path: Path) -> None:
    meta.faults.add("send", truncate=True)
    async with box(meta, ScriptedResponder(), tmp_path) as (_, gateway):
        await meta.user_message(OWNER, "cut me off")
        await meta.outbox.wait_for_text(OWNER, "You said: cut me off", timeout=15)
        await meta.outbox.wait_for(lambda: gateway.inbox.counts() == {"answered": 1}, timeout=10)
        assert gateway.inbox.pending() == []
    assert len(meta.outbox.in_chat(OWNER)) == 1


async def test_outside_the_24_hour_window_the_reply_is_undeliverable_at_once(meta: FakeWhatsApp, tmp_path: Path) -> None:
    async with box(meta, ScriptedResponder(), tmp_path) as (connector, _):
        await meta.user_message(OWNER, "hello")
        await meta.outbox.wait_for_text(OWNER, "You said: hello")
        meta.close_window(OWNER)
        delivered = await ReplyStreamer(connector).send_text(OWNER, "a day later")
    assert isinstance(delivered.error, Undeliverable) and "131047" in delivered.error.reason
    assert delivered.message_ids == [] and len(meta.outbox.in_chat(OWNER)) == 1


async def test_one_malformed_message_does_not_hold_back_the_valid_ones(
    meta: FakeWhatsApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    responder = ScriptedResponder()
    caplog.set_level(logging.WARNING, logger="connectors.whatsapp")
    async with box(meta, responder, tmp_path) as (_, gateway):
        post = meta.envelope(OWNER, meta.text_message(OWNER, "first valid"))
        value = post["entry"][0]["changes"][0]["value"]
        value["messages"] += [
            {"from": OWNER, "id": "wamid.bad1", "type": "text", "text": {"body": ["SECRET-WORDS"]}},
            "not a message",
            {"from": OWNER, "id": "wamid.bad2", "type": "image", "image": "SECRET-PICTURE"},
            meta.text_message(OWNER, "second valid"),
        ]
        post["entry"].append({"id": "x", "changes": "not a list"})
        answer = await meta.post_raw(json.dumps(post).encode())
        await meta.outbox.wait_for(lambda: len(meta.outbox.in_chat(OWNER)) == 2, timeout=15)
        await meta.outbox.wait_for(lambda: gateway.inbox.counts() == {"answered": 2}, timeout=10)
    assert answer.status_code == 200, "a 400 would have Meta post the same batch again and again"
    assert sorted(m.text for m in responder.calls) == ["first valid", "second valid"]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) >= 3 and not any("SECRET" in line for line in skipped), skipped


async def test_a_store_that_fails_gets_no_200_so_meta_posts_again(meta: FakeWhatsApp) -> None:
    arrived: list[InboundMessage] = []

    async def broken_store(msg: InboundMessage) -> None:
        arrived.append(msg)
        raise OSError("database is locked")

    connector = WhatsAppConnector(fast(meta))
    await connector.start(broken_store)
    meta.webhook_url = connector.webhook_url
    try:
        message = meta.text_message(OWNER, "keep me")
        answer = await meta.post_raw(json.dumps(meta.envelope(OWNER, message)).encode())
    finally:
        await connector.stop()
    assert [m.text for m in arrived] == ["keep me"]
    assert answer.status_code == 503 and "keep me" not in answer.text


async def test_media_without_a_caption_is_not_an_empty_model_turn(meta: FakeWhatsApp, tmp_path: Path) -> None:
    responder = ScriptedResponder()
    async with box(meta, responder, tmp_path):
        sticker = {"from": OWNER, "id": "wamid.st1", "timestamp": "1700000000", "type": "sticker",
                   "sticker": {"mime_type": "image/webp", "sha256": "abc", "id": "MEDIA-ST", "animated": False}}
        place = {"from": OWNER, "id": "wamid.loc1", "timestamp": "1700000001", "type": "location",
                 "location": {"latitude": 52.52, "longitude": 13.40, "name": "Berlin"}}
        for message in (sticker, place):
            assert (await meta.post_raw(json.dumps(meta.envelope(OWNER, message)).encode())).status_code == 200
        await meta.outbox.wait_for(lambda: len(meta.outbox.in_chat(OWNER)) == 2, timeout=15)
    assert responder.calls == [], "nothing readable: the model is not asked"
    notices = [m.text for m in meta.outbox.in_chat(OWNER)]  # the gateway names the kind it got
    assert "stickers" in notices[0] and "location" in notices[1], notices


async def test_a_token_revoked_at_runtime_fails_health_with_the_reason(meta: FakeWhatsApp, tmp_path: Path) -> None:
    async with box(meta, ScriptedResponder(), tmp_path) as (connector, _):
        assert connector.health().state == "ok"
        revoked, meta.access_token = meta.access_token, "EAAG-rotated"
        await meta.user_message(OWNER, "anyone?")
        await meta.outbox.wait_for(lambda: connector.health().state == "failed", timeout=15)
        health = connector.health()
    assert "connectors.whatsapp.access_token" in health.detail and revoked not in health.detail


async def test_a_message_left_pending_by_a_crash_is_marked_read_when_answered(meta: FakeWhatsApp, tmp_path: Path) -> None:
    asked = meta.text_message(OWNER, "answer me after the restart")
    meta.person_wrote(OWNER)
    store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
    left = InboundMessage(platform="whatsapp", chat_id=OWNER, sender_id=OWNER, message_id=asked["id"], text=asked["text"]["body"])
    assert await Inbox(store).admit(left)  # what the last run stored before it was killed
    store.close()
    async with box(meta, ScriptedResponder(), tmp_path) as (_, gateway):
        assert await gateway.replay() == (1, 0)
        await meta.outbox.wait_for_text(OWNER, "You said: answer me after the restart", timeout=15)
        await meta.outbox.wait_for(lambda: asked["id"] in meta.read_receipts, timeout=5)
