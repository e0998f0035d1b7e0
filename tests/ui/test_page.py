"""The box's own page in a real browser: Chromium (Debian's package, /usr/bin/chromium)
driven by Playwright against a real `aibox run` with the real SmolLM2 model and a
Telegram connector talking to the local Telegram server (aibox/bench/platforms).

It logs in through `aibox ui --json`'s link, approves a pairing code a stranger got in
Telegram, pulls a model (a card whose source is a local file, so no network) and watches
the progress bar reach 100%, sends a web chat message and sees the streamed answer, and
checks the refusals: no session gets the login page, a POST without the CSRF token gets
403, a used login link is refused. A screenshot of every page is saved under the test's
tmp dir (`screenshots/`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from aibox.bench.platforms.telegram import TelegramServer
from aibox.process import DaemonProcess
from models.catalog import Catalog

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHROMIUM = Path("/usr/bin/chromium")
COPY = "smollm2-copy"


def _copy_card(source: Path) -> str:
    """A card for SmolLM2's file under another name, pulled from a local path."""
    card = Catalog.load().get("smollm2-135m-instruct")
    return (
        f'name = "{COPY}"\ndescription = "SmolLM2 again, pulled from a local file"\nroles = ["fast"]\n'
        f'file = "{COPY}.gguf"\nsize = {card.size}\nsha256 = "{card.sha256}"\nlicense = "Apache-2.0"\n'
        f'chat_template = "gguf"\ncontext_length = 8192\n\n[[sources]]\ntype = "path"\npath = "{source}"\n'
    )


def _login_url(daemon: DaemonProcess) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "aibox", "--config", str(daemon.config_path), "ui", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    url = json.loads(out.stdout)["url"]
    assert url.startswith(daemon.api + "/ui/login?token=")
    return url


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as c:
        return c.execute(sql).fetchall()


async def _shot(page: Page, shots: Path, name: str) -> None:
    await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


@pytest.fixture
async def browser() -> Browser:
    if not CHROMIUM.exists():
        pytest.fail("Chromium not found at /usr/bin/chromium; .ci/run installs Debian's 'chromium' package")
    async with async_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            yield b
        finally:
            await b.close()


async def test_the_page_logs_in_pairs_pulls_chats_and_refuses(tmp_path: Path, models_dir: Path, smollm2_path: Path, browser: Browser) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    box = tmp_path / "box"
    models = tmp_path / "models"
    models.mkdir()
    (models / smollm2_path.name).symlink_to(smollm2_path)
    (box / "cards").mkdir(parents=True)
    (box / "cards" / f"{COPY}.toml").write_text(_copy_card(smollm2_path))
    async with TelegramServer() as telegram:
        config = {
            "models_dir": str(models),
            "runtime": {"max_tokens": 24},
            "logging": {"dir": str(box / "logs")},
            "connectors": {"telegram": {"token": telegram.token, "base_url": telegram.base_url,
                                        "base_file_url": telegram.base_file_url, "poll_timeout_s": 2}},
        }
        daemon = DaemonProcess(box, config)
        await asyncio.to_thread(daemon.start)
        try:
            context = await browser.new_context(viewport={"width": 1100, "height": 900})
            page = await context.new_page()

            # No session: the login page, for pages and actions alike.
            r = await page.goto(daemon.api + "/ui/")
            assert r is not None and r.status == 401
            await expect(page.locator("#login")).to_contain_text("aibox ui")
            await _shot(page, shots, "login")

            # Log in through `aibox ui`'s link; the cookie is HttpOnly and SameSite=Strict.
            url = await asyncio.to_thread(_login_url, daemon)
            await page.goto(url)
            await expect(page).to_have_url(daemon.api + "/ui/")
            await expect(page.locator("h1")).to_have_text("Overview")
            cookie = next(c for c in await context.cookies() if c["name"] == "aibox_ui")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
            await expect(page.locator("table").first).to_contain_text("telegram")

            # The same link again, in another browser: refused.
            other = await browser.new_context()
            again = await (await other.new_page()).goto(url)
            assert again is not None and again.status == 403
            assert "already used" in await again.text()
            await other.close()

            # Pairing: a stranger writes in Telegram, the code shows up, approve it here.
            telegram.user_message(31337, "hello box", first_name="Ada")
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("31337")) == 1, timeout=30)
            code = re.search(r"approve ([A-Z0-9]{8})", telegram.outbox.in_chat("31337")[0].text).group(1)
            await page.get_by_role("link", name="Pairing").click()
            await expect(page.locator("body")).to_contain_text(code)
            await _shot(page, shots, "pairing")
            # A forged POST (same origin, session cookie sent, no CSRF token): 403, nothing approved.
            forged = await page.evaluate(
                "async (code) => (await fetch('/ui/pairing/approve', {method: 'POST', body: new URLSearchParams({code})})).status",
                code,
            )
            assert forged == 403
            await expect(page.locator("body")).to_contain_text(code)
            await page.get_by_role("button", name=f"Approve {code}").click()
            await expect(page.get_by_role("status")).to_contain_text("Approved telegram:31337 as owner.")
            await expect(page.get_by_role("button", name="Revoke telegram:31337")).to_be_visible()
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("31337")) == 2, timeout=30)
            assert "approved" in telegram.outbox.in_chat("31337")[1].text
            # A second stranger's code: deny it; it is gone and nobody was approved.
            telegram.user_message(31338, "hi", first_name="Eve")
            await telegram.outbox.wait_for(lambda: len(telegram.outbox.in_chat("31338")) == 1, timeout=30)
            code2 = re.search(r"approve ([A-Z0-9]{8})", telegram.outbox.in_chat("31338")[0].text).group(1)
            await page.reload()
            await page.get_by_role("button", name=f"Deny {code2}").click()
            await expect(page.get_by_role("status")).to_contain_text(f"Denied telegram:31338 (code {code2}).")
            await expect(page.locator("main table").first).not_to_contain_text(code2)
            await asyncio.sleep(1.5)  # the audit log is written in batches every 0.5 s
            assert _rows(box / "aibox.db", "SELECT decision, sender_id, detail FROM connector_audit "
                         "WHERE decision IN ('pairing_approved', 'pairing_denied') ORDER BY id") == [
                ("pairing_approved", "31337", "via admin api"), ("pairing_denied", "31338", "via admin api"),
            ]
            assert _rows(box / "aibox.db", "SELECT sender_id FROM connector_senders") == [("31337",)]

            # Models: pull the copy from its local path; the bar reaches 100% and the file is verified.
            await page.get_by_role("link", name="Models").click()
            row = page.locator(f'tr[data-model="{COPY}"]')
            await expect(row.locator(".present")).to_have_text("no")
            await row.get_by_role("button", name=f"Pull {COPY}").click()
            await expect(row.locator(".pull-state")).to_have_text("100% verified", timeout=60_000)
            bar = row.locator("progress")
            assert await bar.evaluate("b => b.value === b.max && b.max > 0")
            await expect(row.locator(".present")).to_have_text("yes")
            assert (models / f"{COPY}.gguf").stat().st_size == Catalog.load(box / "cards").get(COPY).size
            await _shot(page, shots, "models")
            await row.get_by_role("button", name=f"Verify {COPY}").click()
            await expect(page.get_by_role("status")).to_contain_text(f"{COPY}: sha256 matches the card")

            # Web chat: a question, and the answer streams into the page from the real model.
            await page.get_by_role("link", name="Web chat").click()
            await page.get_by_label("Message").fill("What is the capital of France?")
            await page.get_by_role("button", name="Send").click()
            await expect(page.locator("#transcript .msg.user .text")).to_have_text("What is the capital of France?")
            answer = page.locator("#transcript .msg.assistant .text").first
            await expect(answer).not_to_be_empty(timeout=120_000)
            await telegram.outbox.wait_for(lambda: _rows(box / "aibox.db", "SELECT count(*) FROM generations WHERE source = 'web'")[0][0] == 1, timeout=120)
            await asyncio.sleep(1.0)  # the last edit follows the generation within one pacing interval
            shown = (await answer.text_content() or "").strip()
            assert shown and shown != "(no answer)"
            await _shot(page, shots, "chat")

            # The page survives a reload: the transcript comes back from the connector.
            await page.reload()
            await expect(page.locator("#transcript .msg.assistant .text").first).to_have_text(shown)

            await page.get_by_role("link", name="Agents and jobs").click()
            await expect(page.get_by_role("button", name="Disable assistant")).to_be_visible()
            await _shot(page, shots, "agents")
            await page.get_by_role("link", name="Logs").click()
            await expect(page.locator("#log")).to_contain_text("page login")
            await _shot(page, shots, "logs")

            # Overview again, now with generations in the chart and the web chat's health.
            await page.get_by_role("link", name="Overview").click()
            await expect(page.locator("body")).to_contain_text("generation")
            assert await page.locator("svg.chart circle, svg.chart rect, svg.chart path[fill]").count() > 0
            await _shot(page, shots, "overview")

            # Log out: the session is gone and the page asks for a login again.
            await page.get_by_role("button", name="Log out").click()
            r = await page.goto(daemon.api + "/ui/pairing")
            assert r is not None and r.status == 401
            await context.close()
        finally:
            assert await asyncio.to_thread(daemon.stop) == 0
    assert {p.name for p in shots.iterdir()} >= {"login.png", "overview.png", "pairing.png", "models.png", "chat.png", "agents.png", "logs.png"}
