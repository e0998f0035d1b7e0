"""The WhatsApp connector: our webhook and httpx against a local Meta
(aibox/bench/platforms/whatsapp.py) that signs its webhooks and checks every Graph API call.

The fault scenarios every platform shares (rate limits, dropped connections, malformed
input, bursts, bad tokens, secrets in logs) are in test_faults.py; these are WhatsApp's own.

The answers come from a scripted responder, not a model: these tests are about
delivery, and the model's words do not matter here.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from aibox.bench.platforms.whatsapp import FakeWhatsApp
from aibox.config import ConfigError
from aibox.secrets import Secret
from connectors.manager import load_settings
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
