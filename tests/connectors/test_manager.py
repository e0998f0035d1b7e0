"""The connector manager: built from the config, one connector failing to start leaves
the others running, health for `aibox status`, pairing through it, a clean stop.

The answers come from a scripted responder, not a model: the model's words do not
matter here."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aibox.config import ConfigError, parse_config
from aibox.store import Store
from connectors.manager import ConnectorManager
from tests.servers.scripted import ScriptedResponder
from aibox.bench.platforms.telegram import TelegramServer
from aibox.bench.platforms.whatsapp import FakeWhatsApp

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def test_a_bad_token_fails_one_connector_and_the_others_keep_working(tmp_path: Path) -> None:
    async with TelegramServer() as telegram, FakeWhatsApp() as meta:
        config = parse_config({
            "connectors": {
                "telegram": {"token": "111:revoked-token", "base_url": telegram.base_url, "poll_timeout_s": 1},
                "whatsapp": {
                    "access_token": meta.access_token, "app_secret": meta.app_secret, "verify_token": "v",
                    "phone_number_id": meta.phone_number_id, "graph_url": meta.graph_url, "listen_port": 0,
                    "dm_policy": "open", "edit_interval_s": 0.05,
                },
                "slack": {"enabled": False, "bot_token": "env:NOT_SET", "app_token": "env:NOT_SET"},
            }
        })
        store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
        responder = ScriptedResponder()
        manager = ConnectorManager(config, store, responder)
        await manager.start()
        try:
            health = manager.health()
            assert health["telegram"]["state"] == "failed" and "rejected the bot token" in health["telegram"]["detail"]
            assert "revoked-token" not in str(health)
            assert health["whatsapp"]["state"] == "ok"
            assert health["slack"] == health["slack"] | {"state": "stopped", "detail": "disabled in config"}
            meta.webhook_url = manager.connectors["whatsapp"].webhook_url  # type: ignore[attr-defined]
            await meta.user_message("15550009999", "anyone home?")
            await meta.outbox.wait_for_text("15550009999", "You said: anyone home?", timeout=15)
        finally:
            await manager.stop()
            store.close()
        assert manager.health()["whatsapp"]["state"] == "stopped"


async def test_pairing_through_the_manager_is_audited(tmp_path: Path) -> None:
    async with TelegramServer() as telegram:
        config = parse_config({"connectors": {"telegram": {
            "token": telegram.token, "base_url": telegram.base_url, "poll_timeout_s": 1, "edit_interval_s": 0.05,
        }}})
        store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
        manager = ConnectorManager(config, store, ScriptedResponder())
        await manager.start()
        try:
            telegram.user_message(5150, "hi")
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("5150")) == 1)
            [pending] = manager.pending()
            assert pending.sender_id == "5150" and pending.code in telegram.outbox.in_chat("5150")[0].text
            approved = manager.approve(pending.code)
            assert approved.role == "owner" and manager.pending() == []
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("5150")) == 2)
            assert "approved" in telegram.outbox.in_chat("5150")[1].text
            assert [a.sender_id for a in manager.revoke("5150")] == ["5150"] and manager.approved() == []
        finally:
            await manager.stop()
        decisions = [e["decision"] for e in manager.audit.recent()]
        store.close()
    assert {"pairing_code_sent", "pairing_approved", "pairing_revoked"} <= set(decisions)


def test_unknown_connectors_and_bad_keys_are_config_errors(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
    try:
        with pytest.raises(ConfigError, match=r"connectors\.signal': unknown connector"):
            ConnectorManager(parse_config({"connectors": {"signal": {}}}), store, ScriptedResponder())
        with pytest.raises(ConfigError, match=r"connectors\.telegram\.rate_limit_burst"):
            ConnectorManager(
                parse_config({"connectors": {"telegram": {"token": "env:T", "rate_limit_burst": 0}}}),
                store, ScriptedResponder(),
            )
    finally:
        store.close()


async def test_a_reload_applies_access_settings_to_the_running_connector(tmp_path: Path) -> None:
    async with TelegramServer() as telegram:
        base = {"token": telegram.token, "base_url": telegram.base_url, "poll_timeout_s": 1, "edit_interval_s": 0.05}
        config = parse_config({"connectors": {"telegram": base | {"allow_from": ["4242"], "dm_policy": "allowlist"}}})
        manager = ConnectorManager(config, Store.open(f"sqlite:///{tmp_path / 'aibox.db'}"), ScriptedResponder())
        await manager.start()
        try:
            telegram.user_message(4242, "before")
            await telegram.outbox.wait_for_text("4242", "You said: before", timeout=15)
            revoked = parse_config({"connectors": {"telegram": base | {"allow_from": ["77"], "dm_policy": "allowlist"}}})
            assert manager.reload(revoked) == []
            telegram.user_message(4242, "after")
            telegram.user_message(77, "newly allowed")
            await telegram.outbox.wait_for_text("77", "You said: newly allowed", timeout=15)
            await asyncio.sleep(0.5)
            assert [m.text for m in telegram.outbox.in_chat("4242")] == ["You said: before"], "access revoked in place"
            moved = parse_config({"connectors": {"telegram": base | {"poll_timeout_s": 2}}})
            assert manager.reload(moved) == ["telegram"], "a setting bound at start is reported, not applied"
        finally:
            await manager.stop()
