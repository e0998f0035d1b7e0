"""Telegram through python-telegram-bot's `Bot`, with long polling.

The Bot API does the talking (request encoding, error mapping); the polling loop is our
own rather than PTB's `Updater`, for two reasons: a single malformed update must be
skipped instead of wedging the offset (PTB's updater re-fetches the same batch forever
when one update fails to parse), and reconnects need our backoff with jitter and a
health state `aibox status` can show.

Updates are fetched raw and parsed one by one, so a malformed one is skipped alone (and
PTB's own parser, which logs a failed batch with the messages' text at CRITICAL, is never
used); the offset moves past every update seen, parsed or not, and is confirmed with a
last `getUpdates(timeout=0)` on stop so that a restart does not replay old messages.

Replies are Markdown rendered as Telegram HTML (connectors/markdown.py); when Telegram
refuses the entities ("can't parse entities") the same text goes out plain. Lengths
count UTF-16 code units, as Telegram does. A message without text is passed on with what
can be read of it: its caption, the content of a small text document; a sticker or a
photo alone arrives empty, and the gateway says it cannot read that yet. An edited
message is answered as a new message, quoting the edit (its id carries the edit's date,
so the inbox does not take it for a repeat). At start the bot's command menu is set.

Webhook mode (`mode = "webhook"`) is for boxes behind an HTTPS reverse proxy: Telegram
posts each update to `webhook_url`, with `webhook_secret` in a header that we check.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import warnings
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from telegram import Bot, BotCommand, Message, ReplyParameters, Update
from telegram.constants import ChatAction, MessageEntityType, ParseMode
from telegram.error import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from aiohttp import web
from telegram.request import HTTPXRequest
from telegram.warnings import PTBUserWarning

from aibox.secrets import Secret, redact
from connectors.base import Attachment, Connector, InboundMessage, MessageSink
from connectors.commands import COMMANDS
from connectors.markdown import to_telegram_html
from connectors.errors import ConnectorError, RateLimited, TransientError
from connectors.reconnect import Reconnect, Reconnecting
from connectors.settings import ConnectorSettings
from connectors.webhook import WebhookListener

log = logging.getLogger(__name__)

# Calls in flight to the Bot API at once (the poll has its own connection). More wait
# here, in a cheap queue: httpx's pool queue rescans every waiting request whenever a
# connection frees up, which under a burst costs more than the calls themselves.
MAX_IN_FLIGHT = 16

# After a batch fails to parse we fetch it raw through `do_api_request` (see the module
# doc); PTB then advises using `get_updates`, which is exactly what failed.
warnings.filterwarnings("ignore", message=r"Please use 'Bot\.getUpdates'", category=PTBUserWarning)



class _WithoutContent(logging.Filter):
    """PTB logs every call's parameters and answer at DEBUG: the text of every message
    sent and received. Keep the endpoint, drop the content (message text never reaches
    the log, at any level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(("Calling Bot API endpoint", "Call to Bot API endpoint")):
            endpoint = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = "Bot API call `%s` (content not logged)", (endpoint,)
        return True


logging.getLogger("telegram.Bot").addFilter(_WithoutContent())
logging.getLogger("telegram.ext.ExtBot").addFilter(_WithoutContent())

UPDATES = ["message", "edited_message"]
EDIT_MARK = "~edit"  # message ids of edits: "<id>~edit<edit date>"
TEXT_DOCUMENT_BYTES = 64 * 1024  # a text document up to this size is read to the model
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-yaml", "application/toml")


class TelegramSettings(ConnectorSettings):
    token: Secret = Field(description="bot token from @BotFather")
    base_url: str = Field("https://api.telegram.org/bot", description="Bot API base; the token is appended")
    base_file_url: str = "https://api.telegram.org/file/bot"
    mode: Literal["polling", "webhook"] = Field("polling", description="long polling, or a webhook Telegram posts to")
    poll_timeout_s: int = Field(30, ge=0, le=50, description="how long one getUpdates long poll waits")
    request_timeout_s: float = Field(15.0, gt=0, description="connect/read timeout of ordinary calls")
    webhook_url: str | None = Field(
        None, validate_default=True, description="webhook mode: the public HTTPS URL of listen_* below"
    )
    webhook_secret: Secret | None = Field(
        None, validate_default=True, description="webhook mode: Telegram sends it in every post"
    )
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(8645, ge=0, le=65535)
    webhook_path: str = "/telegram/webhook"

    @field_validator("webhook_url", "webhook_secret")
    @classmethod
    def _needed_for_webhooks(cls, v: object, info: ValidationInfo) -> object:
        if v is None and info.data.get("mode") == "webhook":
            raise ValueError("required in webhook mode")
        return v


class TelegramConnector(Connector):
    platform = "telegram"
    max_text = 4096
    length_unit = "utf-16"
    settings_model = TelegramSettings

    def __init__(self, settings: TelegramSettings) -> None:
        super().__init__()
        self.settings = settings
        self.bot: Bot | None = None
        self._sink: MessageSink | None = None
        self._offset: int | None = None
        self._polling = Reconnecting(self, max_delay=30.0)
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._listener: WebhookListener | None = None
        self._secret = ""

    async def start(self, sink: MessageSink) -> None:
        self._sink = sink
        self._set_health("starting", "connecting to Telegram")
        timeout = self.settings.request_timeout_s
        self.bot = Bot(
            self.settings.token.get(),
            base_url=self.settings.base_url,
            base_file_url=self.settings.base_file_url,
            request=HTTPXRequest(connection_pool_size=MAX_IN_FLIGHT, read_timeout=timeout, connect_timeout=timeout, pool_timeout=timeout),
            get_updates_request=HTTPXRequest(connection_pool_size=2, read_timeout=timeout, connect_timeout=timeout),
        )
        if self.settings.mode == "webhook":
            await self._start_webhook()
            return
        try:
            await self._connect()
        except (InvalidToken, Forbidden) as e:
            self._set_health("failed", f"Telegram rejected the bot token: {e}")
            return
        except TelegramError as e:
            self._set_health("degraded", f"cannot reach Telegram yet, retrying: {e}")
        self._polling.start(self._poll, name="telegram-poll")

    async def _start_webhook(self) -> None:
        """Listens first, then tells Telegram where to post, so no update finds us deaf."""
        s = self.settings
        assert s.webhook_secret is not None and s.webhook_url is not None
        self._secret = s.webhook_secret.get()
        listener = WebhookListener(s.listen_host, s.listen_port, [("POST", s.webhook_path, self._webhook)])
        try:
            await listener.start()
        except OSError as e:
            self._set_health("failed", f"cannot listen on {s.listen_host}:{s.listen_port}: {e.strerror}")
            return
        self._listener = listener
        try:
            await self._bot.initialize()
            await self._bot.set_webhook(s.webhook_url, secret_token=self._secret, allowed_updates=UPDATES)
            await self._set_commands()
        except (InvalidToken, Forbidden) as e:
            self._set_health("failed", f"Telegram rejected the bot token: {e}")
            return
        except TelegramError as e:
            self._set_health("failed", f"Telegram refused the webhook {s.webhook_url}: {e}")
            return
        self._set_health("ok", f"webhook as @{self._bot.username} on {listener.url(s.webhook_path)}")

    async def _webhook(self, request: web.Request) -> web.Response:
        """One update from Telegram. A post without our secret is refused; a body that is
        not an update is answered 200 anyway, or Telegram would redeliver it forever."""
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token", "")
        if not hmac.compare_digest(secret.encode(), self._secret.encode()):
            log.warning("telegram webhook post without the right secret token refused")
            return web.Response(status=403, text="forbidden")
        try:
            raw = json.loads(await request.read())
        except ValueError:
            log.warning("telegram webhook post is not JSON; skipped")
            return web.Response(text="ok")
        await self._dispatch(_update_id(raw), _parse(raw, self._bot))
        return web.Response(text="ok")

    async def _connect(self) -> None:
        assert self.bot is not None
        await self.bot.initialize()
        await self.bot.delete_webhook()
        await self._set_commands()
        self._set_health("ok", f"polling as @{self.bot.username}")

    async def _set_commands(self) -> None:
        """The menu Telegram shows next to the text field; a refusal costs only the menu."""
        try:
            await self._bot.set_my_commands([BotCommand(name, what) for name, what in COMMANDS])
        except (BadRequest, NetworkError) as e:
            log.warning("telegram refused the command menu: %s", redact(str(e)))

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()  # the webhook stays set: Telegram keeps updates until we are back
            self._listener = None
        await self._polling.stop()
        if self.bot is not None:
            if self._offset is not None and self._health.state != "failed":
                try:
                    await self._get_updates(timeout=0)
                except TelegramError as e:
                    log.info("could not confirm the last Telegram update on stop: %s", redact(str(e)))
            await self.bot.shutdown()
        self._set_health("stopped", "")

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        quoted = int(reply_to.partition(EDIT_MARK)[0]) if reply_to else None
        reply = ReplyParameters(quoted, allow_sending_without_reply=True) if quoted else None
        message = await self._formatted(
            lambda body, mode: self._bot.send_message(chat_id, body, parse_mode=mode, reply_parameters=reply), text
        )
        return str(message.message_id)

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        try:
            await self._formatted(
                lambda body, mode: self._bot.edit_message_text(body, chat_id=chat_id, message_id=int(message_id), parse_mode=mode),
                text,
            )
        except ConnectorError as e:
            if "message is not modified" not in str(e).lower():
                raise

    async def _formatted(self, call: Any, text: str) -> Any:
        """Sends `text` rendered as HTML; plain when Telegram cannot parse the entities, or
        when the rendering shows nothing yet (a streamed answer that so far only opens a
        code block), which Telegram refuses as an empty message."""
        html = to_telegram_html(text)
        if not re.sub(r"<[^>]*>", "", html).strip():
            return await self._call(call(text, None))
        try:
            return await self._call(call(html, ParseMode.HTML))
        except ConnectorError as e:
            if "can't parse entities" not in str(e).lower() or isinstance(e, TransientError):
                raise
            log.info("telegram refused the formatting (%s); sending the text plain", e)
        return await self._call(call(text, None))

    async def typing(self, chat_id: str) -> None:
        await self._call(self._bot.send_chat_action(chat_id, ChatAction.TYPING))

    @property
    def _bot(self) -> Bot:
        if self.bot is None:
            raise ConnectorError("the Telegram connector is not started")
        return self.bot

    async def _call(self, call: Any) -> Any:
        """Maps PTB's exceptions onto the ones the reply streamer understands."""
        try:
            async with self._slots:
                return await call
        except RetryAfter as e:
            raise RateLimited(_seconds(e), "Telegram flood control") from None
        except (BadRequest, Forbidden, InvalidToken) as e:
            raise ConnectorError(redact(str(e))) from None
        except NetworkError as e:
            raise TransientError(redact(str(e))) from None
        except TelegramError as e:
            if "invalid server response" in str(e).lower():  # a 200 cut off mid-body: it may have worked
                raise TransientError(redact(str(e))) from None
            raise ConnectorError(redact(str(e))) from None

    async def _poll(self) -> None:
        """Long polls until a poll fails; the next session reconnects first."""
        while True:
            try:
                if self._health.state != "ok":
                    await self._connect()
                updates = await self._get_updates(timeout=self.settings.poll_timeout_s)
            except InvalidToken as e:
                self._set_health("failed", f"Telegram rejected the bot token: {e}")
                return
            except RetryAfter as e:
                raise Reconnect("Telegram asked us to slow down", retry_after=_seconds(e)) from None
            except Exception as e:  # network, conflict, bad answers: back off and reconnect
                what = "another client is polling this bot" if isinstance(e, Conflict) else str(e)
                raise Reconnect(f"polling failed ({what})") from None
            self._polling.reset()
            for update_id, update in updates:
                await self._dispatch(update_id, update)

    async def _get_updates(self, timeout: int) -> list[tuple[int | None, Update | None]]:
        """The next batch as (update_id, update); the update is None when it is malformed."""
        raw = await self._bot.do_api_request(
            "getUpdates",
            api_kwargs={"offset": self._offset, "timeout": timeout, "allowed_updates": UPDATES},
            read_timeout=self.settings.request_timeout_s + timeout,
        )
        if not isinstance(raw, list):
            raise NetworkError(f"getUpdates answered {type(raw).__name__}, not a list")
        return [(_update_id(r), _parse(r, self._bot)) for r in raw]

    async def _dispatch(self, update_id: int | None, update: Update | None) -> None:
        if update_id is not None:
            self._offset = max(self._offset or 0, update_id + 1)
        try:
            message = (update.message or update.edited_message) if update is not None else None
            msg = await self._inbound(message) if message is not None else None
        except Exception as e:  # one malformed update must not stop the others
            log.warning("skipped a malformed Telegram update %r: %s", update_id, e)
            return
        if update is None:
            log.warning("skipped a malformed Telegram update %r", update_id)
        if msg is None or self._sink is None:
            return
        try:
            await self._sink(msg)
        except Exception:
            log.exception("the gateway failed on Telegram update %s", update_id)

    async def _inbound(self, m: Message) -> InboundMessage | None:
        sender = m.from_user
        if sender is None or sender.is_bot:
            return None
        text = m.text or m.caption or ""
        mentioned = self._mentions_bot(m)
        if mentioned:
            text = _without_mention(text, f"@{self._bot.username}")
        if m.text is None:
            text = await self._readable(m, text)
        message_id = str(m.message_id)
        if m.edit_date is not None:
            message_id += f"{EDIT_MARK}{int(m.edit_date.timestamp())}"
        return InboundMessage(
            platform=self.platform,
            chat_id=str(m.chat.id),
            sender_id=str(sender.id),
            message_id=message_id,
            text=text,
            sender_name=sender.full_name,
            attachments=_attachments(m),
            reply_to=str(m.reply_to_message.message_id) if m.reply_to_message else None,
            is_direct=m.chat.type == "private",
            mentions_bot=mentioned,
        )

    async def _readable(self, m: Message, caption: str) -> str:
        """What the model can be given of a message without text: the caption, and the
        content of a small text document; what it cannot see is named, so it does not
        answer as if there were nothing."""
        doc = m.document
        if doc is not None and _is_text(doc.mime_type, doc.file_name) and (doc.file_size or 0) <= TEXT_DOCUMENT_BYTES:
            try:
                data = await (await self._call(self._bot.get_file(doc.file_id))).download_as_bytearray()
                content = bytes(data[:TEXT_DOCUMENT_BYTES]).decode("utf-8")
            except (ConnectorError, TelegramError, UnicodeDecodeError, OSError) as e:
                log.info("could not read a text document from telegram: %s", redact(str(e)))
            else:
                return f"{caption}\n\n[{doc.file_name or 'document'}]\n{content}".strip()
        if not caption:
            return ""
        unread = [f"{a.kind} {a.name}" if a.name else a.kind for a in _attachments(m)]
        return f"{caption}\n\n(attached, which the box cannot read: {', '.join(unread)})" if unread else caption

    def _mentions_bot(self, m: Message) -> bool:
        bot_id = self._bot.id
        username = f"@{self._bot.username}".lower()
        if m.reply_to_message and m.reply_to_message.from_user and m.reply_to_message.from_user.id == bot_id:
            return True
        entities = m.parse_entities() if m.text else m.parse_caption_entities()
        for entity, value in entities.items():
            if entity.type == MessageEntityType.MENTION and value.lower() == username:
                return True
            if entity.type == MessageEntityType.TEXT_MENTION and entity.user and entity.user.id == bot_id:
                return True
            if entity.type == MessageEntityType.BOT_COMMAND and value.lower().endswith(username):
                return True
        return False


def _without_mention(text: str, mention: str) -> str:
    """"@aibox_bot what time is it?" -> "what time is it?": the model gets the question,
    not the address. Commands keep their form ("/models@aibox_bot" is still a command)."""
    lowered = text.lower()
    at = lowered.find(mention.lower())
    if at < 0 or (at > 0 and text[at - 1] not in " \n"):
        return text
    return (text[:at] + text[at + len(mention):]).strip()


def _update_id(raw: Any) -> int | None:
    value = raw.get("update_id") if isinstance(raw, dict) else None
    return value if isinstance(value, int) else None


def _parse(raw: Any, bot: Bot) -> Update | None:
    try:
        return Update.de_json(raw, bot)
    except Exception:
        return None


def _seconds(e: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = e.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _is_text(mime_type: str | None, name: str | None) -> bool:
    if mime_type and mime_type.startswith(TEXT_TYPES):
        return True
    return bool(name) and name.lower().endswith((".txt", ".md", ".csv", ".json", ".py", ".toml", ".yaml", ".yml", ".log"))


def _attachments(m: Message) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    if m.photo:
        p = m.photo[-1]
        found.append(Attachment("image", None, "image/jpeg", p.file_size, p.file_id))
    for kind, media in (("document", m.document), ("audio", m.audio), ("voice", m.voice), ("video", m.video)):
        if media is not None:
            found.append(
                Attachment(kind, getattr(media, "file_name", None), media.mime_type, media.file_size, media.file_id)
            )
    if m.sticker:
        found.append(Attachment("sticker", m.sticker.emoji, None, m.sticker.file_size, m.sticker.file_id))
    return tuple(found)
