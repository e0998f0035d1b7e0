"""The WhatsApp connector: our webhook and httpx against a local Meta
(tests/servers/whatsapp.py) that signs its webhooks and checks every Graph API call.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from pathlib import Path

import pytest

from aibox.config import ConfigError
from aibox.secrets import Secret
from connectors.manager import load_settings
from connectors.whatsapp import WhatsAppConnector, WhatsAppSettings
from tests.servers.scripted import ScriptedResponder, wired
from tests.servers.whatsapp import FakeWhatsApp

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


LONG_ANSWER = (
    "First paragraph. " * 150
    + "\n\n```python\n"
    + "".join(f"print('line {i}')\n" for i in range(200))
    + "```\n\n"
    + "Closing words, said plainly. " * 150
)


async def test_long_reply_is_split_under_the_limit_and_nothing_is_lost(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    responder = ScriptedResponder(answer=lambda m: LONG_ANSWER, chunks=6, delay=0.05)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        await meta.user_message(OWNER, "tell me a lot")
        messages = await meta.outbox.wait_for_text(OWNER, LONG_ANSWER, timeout=20)
    assert len(messages) >= 3
    assert all(len(m.text) <= 4096 and m.edits == 0 for m in messages)
    for m in messages:
        assert m.text.count("```") % 2 == 0, m.text


async def test_unknown_sender_gets_a_pairing_code_and_no_answer_until_approved(
    meta: FakeWhatsApp, tmp_path: Path
) -> None:
    settings = fast(meta, allow_from=[])
    responder = ScriptedResponder()
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path) as wiring:
        await started(meta, connector)
        await meta.user_message("15559990000", "let me in")
        await meta.outbox.wait_for(lambda: len(meta.outbox.in_chat("15559990000")) == 1)
        [offer] = meta.outbox.in_chat("15559990000")
        code = re.search(r"approve ([A-Z0-9]{8})", offer.text)
        assert code is not None, offer.text
        assert responder.calls == []
        assert wiring.pairing.approve(code.group(1)).role == "owner"
        await meta.user_message("15559990000", "now?")
        await meta.outbox.wait_for(lambda: any(m.text == "You said: now?" for m in meta.outbox.in_chat("15559990000")))
    assert [m.text for m in responder.calls] == ["now?"]


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


async def test_a_429_while_streaming_is_waited_out(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    meta.faults.add("send", status=429, retry_after=0.5)
    responder = ScriptedResponder(answer=lambda m: LONG_ANSWER, chunks=4, delay=0.1)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        await meta.user_message(OWNER, "rate limit me")
        messages = await meta.outbox.wait_for_text(OWNER, LONG_ANSWER, timeout=20)
    assert [f.status for f in meta.faults.played] == [429]
    assert len({m.text for m in messages}) == len(messages), "no piece was sent twice"


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


async def test_server_errors_are_retried_and_the_reply_arrives_once(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    meta.faults.add("send", status=500)
    meta.faults.add("send", status=503)
    responder = ScriptedResponder(chunks=3, delay=0.1)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        await meta.user_message(OWNER, "break it")
        [reply] = await meta.outbox.wait_for_text(OWNER, "You said: break it", timeout=20)
    assert [f.status for f in meta.faults.played] == [500, 503]
    assert reply.text == "You said: break it"


async def test_connection_dropped_and_webhook_redelivered_still_replies_once(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    responder = ScriptedResponder(chunks=4, delay=0.1)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        # The first send is cut before Meta sees it; Meta also delivers the webhook twice,
        # as it does when it did not get our 200 in time.
        meta.faults.add("send", drop="before")
        meta.faults.add("typing", drop="before")
        await meta.user_message(OWNER, "are you there?", times=2)
        await meta.outbox.wait_for_text(OWNER, "You said: are you there?", timeout=15)
        await asyncio.sleep(0.3)
        assert connector.health().state == "ok"
    assert sorted(f.route for f in meta.faults.played) == ["send", "typing"]
    assert len(meta.outbox.in_chat(OWNER)) == 1
    assert [m.text for m in responder.calls] == ["are you there?"]


async def test_malformed_webhook_posts_are_refused_and_nothing_breaks(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    responder = ScriptedResponder()
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        for body in (b"{not json", b"[1, 2, 3]", json.dumps({"entry": [{"changes": "nope"}]}).encode()):
            assert (await meta.post_raw(body)).status_code == 400
        odd = meta.envelope(OWNER, {"from": OWNER, "id": "wamid.odd", "type": "text", "text": {"body": 42}})
        assert (await meta.post_raw(json.dumps(odd).encode())).status_code == 400
        status_only = {"entry": [{"changes": [{"field": "messages", "value": {"statuses": [{"id": "x"}]}}]}]}
        assert (await meta.post_raw(json.dumps(status_only).encode())).status_code == 200
        await meta.user_message(OWNER, "still there?")
        await meta.outbox.wait_for_text(OWNER, "You said: still there?", timeout=15)
        assert connector.health().state == "ok"
    assert [m.text for m in responder.calls] == ["still there?"]


async def test_a_100000_character_message_arrives_whole(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    huge = ("0123456789" * 10_000)[:99_990] + "THE-END!!!"
    responder = ScriptedResponder(answer=lambda m: m.text)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        await meta.user_message(OWNER, huge)
        messages = await meta.outbox.wait_for_text(OWNER, huge, timeout=30)
    assert responder.calls[0].text == huge
    assert len(messages) == 25 and all(len(m.text) <= 4096 for m in messages)


async def test_emoji_rtl_and_zero_width_text_round_trips_exactly(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta)
    text = "héllo 👩‍👩‍👧‍👦 🇺🇳 مرحبا بالعالم שלום zero\u200bwidth\u200d joiner \u2060 \u202eflipped\u202c ✔️"
    responder = ScriptedResponder(answer=lambda m: m.text, chunks=7)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        await meta.user_message(OWNER, text)
        await meta.outbox.wait_for(lambda: [m.text for m in meta.outbox.in_chat(OWNER)] == [text], timeout=15)
    assert responder.calls[0].text == text


async def test_a_burst_of_100_messages_from_20_chats_gets_every_reply_once(meta: FakeWhatsApp, tmp_path: Path) -> None:
    senders = [f"1555000{i:04d}" for i in range(20)]
    settings = fast(meta, allow_from=senders, rate_limit_burst=10)
    responder = ScriptedResponder(chunks=2)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, responder, tmp_path):
        await started(meta, connector)
        texts = {(s, f"chat {s} message {r}") for s in senders for r in range(5)}
        ids = await asyncio.gather(*(meta.user_message(s, t) for s, t in sorted(texts)))
        sent = dict(zip(ids, (t for _, t in sorted(texts))))
        await meta.outbox.wait_for(lambda: len(meta.outbox.all()) >= 100, timeout=60)
        await asyncio.sleep(0.3)  # anything sent twice would show up by now
    replies = meta.outbox.all()
    assert len(replies) == 100
    assert sorted(m.reply_to for m in replies) == sorted(sent)
    for m in replies:
        assert m.text == f"You said: {sent[m.reply_to]}"


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


async def test_a_bad_access_token_fails_the_connector_with_a_reason(meta: FakeWhatsApp, tmp_path: Path) -> None:
    settings = fast(meta, access_token=Secret("EAAG-wrong-token"))
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        health = connector.health()
    assert health.state == "failed" and "Invalid OAuth access token" in health.detail
    assert "EAAG-wrong-token" not in health.detail


async def test_secrets_stay_out_of_the_logs_even_at_debug(meta: FakeWhatsApp, tmp_path: Path, caplog) -> None:
    settings = fast(meta)
    caplog.set_level(logging.DEBUG)
    connector = WhatsAppConnector(settings)
    async with wired(connector, settings, ScriptedResponder(), tmp_path):
        await started(meta, connector)
        await meta.user_message(OWNER, "hello")
        await meta.outbox.wait_for_text(OWNER, "You said: hello")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "graph" in logged.lower() or "HTTP Request" in logged, "debug logging was captured"
    assert meta.access_token not in logged and meta.app_secret not in logged and VERIFY not in logged


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"connectors\.whatsapp\.app_secret"):
        load_settings({"whatsapp": {"access_token": "env:A", "verify_token": "env:V", "phone_number_id": "1"}})
    with pytest.raises(ConfigError, match=r"connectors\.whatsapp\.listen_port"):
        load_settings({"whatsapp": {"access_token": "env:A", "app_secret": "env:S", "verify_token": "env:V",
                                    "phone_number_id": "1", "listen_port": 70000}})
