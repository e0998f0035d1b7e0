"""Discord through discord.py: the gateway for inbound messages, REST for replies.

The bot listens for direct messages and for mentions in servers; reading what people
write needs the privileged message-content intent, switched on in the developer portal
(without it Discord closes the gateway with 4014, which health() reports).

discord.py reconnects its gateway by itself (RESUME, exponential backoff with jitter).
When it gives up (a close code it will not retry, an unexpected exception) this
connector starts a fresh client after its own backoff (connectors/reconnect.py), so one
bad event never ends the connector. A rejected token is final: health() says so and
the daemon carries on.

Sends carry a nonce with `enforce_nonce`, and a send whose connection dropped is retried
with the same nonce, so Discord returns the first message instead of posting it twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets

import aiohttp
import discord
import yarl
from pydantic import Field

from aibox.secrets import Secret, SecretError
from connectors.base import Attachment, Connector, InboundMessage, MessageSink
from connectors.errors import ConnectorError, RateLimited, TransientError
from connectors.reconnect import Reconnect, Reconnecting
from connectors.settings import ConnectorSettings

log = logging.getLogger(__name__)

DISCORD_API = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg/"
SEND_ATTEMPTS = 3


class DiscordSettings(ConnectorSettings):
    token: Secret = Field(description="bot token from the developer portal (Bot > Reset Token)")
    api_base: str = Field(DISCORD_API, description="REST API base URL; only tests change it")
    gateway_url: str = Field(DISCORD_GATEWAY, description="gateway websocket URL; only tests change it")
    start_timeout_s: float = Field(30.0, gt=0, description="how long start() waits for the gateway")
    reconnect_max_delay_s: float = Field(60.0, gt=0, description="longest wait between restarts")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="silence from the gateway before it counts as dead")


def point_discord_at(api_base: str, gateway_url: str) -> None:
    """discord.py has no base-URL setting; these two class attributes are where it reads
    them. They are process-wide, so one process talks to one Discord."""
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class _Client(discord.Client):
    def __init__(self, owner: DiscordConnector) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = True
        super().__init__(
            intents=intents,
            max_messages=None,
            chunk_guilds_at_startup=False,
            member_cache_flags=discord.MemberCacheFlags.none(),
            max_ratelimit_timeout=30.0,
            guild_ready_timeout=0.5,
            heartbeat_timeout=owner.settings.heartbeat_timeout_s,
        )
        self.owner = owner

    async def on_connect(self) -> None:
        self.owner._connected()

    async def on_resumed(self) -> None:
        self.owner._connected()

    async def on_disconnect(self) -> None:
        self.owner._disconnected()

    async def on_message(self, message: discord.Message) -> None:
        await self.owner._on_message(self, message)


class DiscordConnector(Connector):
    platform = "discord"
    max_text = 2000
    settings_model = DiscordSettings

    def __init__(self, settings: DiscordSettings) -> None:
        super().__init__()
        self.settings = settings
        self._sink: MessageSink | None = None
        self._client: _Client | None = None
        self._logged_in = asyncio.Event()
        self._sessions = Reconnecting(self, max_delay=settings.reconnect_max_delay_s)

    # lifecycle

    async def start(self, sink: MessageSink) -> None:
        self._sink = sink
        self._set_health("starting", "connecting to Discord")
        try:
            token = self.settings.token.get()
        except SecretError as e:
            self._set_health("failed", f"connectors.discord.token: {e}")
            return
        point_discord_at(self.settings.api_base, self.settings.gateway_url)
        self._sessions.start(lambda: self._session(token), name="discord-connector")
        wait = self.settings.start_timeout_s
        if not await self._sessions.wait_settled(wait) and self._health.state == "starting":
            self._set_health("degraded", f"gateway not ready after {wait:g} s; still trying")

    async def stop(self) -> None:
        self._sessions.stopping = True  # closing the client ends its session: not one to retry
        client = self._client
        if client is not None:
            await client.close()
        await self._sessions.stop()
        self._logged_in.clear()
        self._set_health("stopped", "")

    async def _session(self, token: str) -> None:
        """One discord.py client, until it ends; the next one follows unless the
        connector is stopping or the token was refused."""
        client = _Client(self)
        self._client = client
        try:
            await client.login(token)
            self._logged_in.set()
            await client.connect(reconnect=True)
        except discord.LoginFailure:
            self._fail("connectors.discord.token was rejected by Discord (401 Unauthorized)")
            return
        except discord.PrivilegedIntentsRequired:
            self._fail("the Message Content intent is not enabled for this bot in the developer portal")
            return
        except discord.ConnectionClosed as e:
            if e.code == 4004:
                self._fail("connectors.discord.token was rejected by the gateway (4004)")
                return
            raise Reconnect(f"gateway closed with code {e.code}") from None
        except Exception as e:  # anything discord.py gives up on: restart a fresh client
            raise Reconnect(f"discord client stopped: {_describe(e)}") from None
        finally:
            self._logged_in.clear()
            await client.close()
        raise Reconnect("discord client stopped")

    def _connected(self) -> None:
        self._set_health("ok", "gateway connected")
        self._sessions.settle()

    def _disconnected(self) -> None:
        if self._health.state == "ok":
            self._set_health("degraded", "gateway disconnected; reconnecting")

    def _fail(self, detail: str) -> None:
        self._set_health("failed", detail)
        self._sessions.settle()

    # inbound

    async def _on_message(self, client: discord.Client, message: discord.Message) -> None:
        me = client.user
        if me is None or message.author.id == me.id or message.author.bot or message.webhook_id is not None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        mentions_bot = any(user.id == me.id for user in message.mentions)
        text = re.sub(rf"<@!?{me.id}>", "", message.content).strip() if mentions_bot else message.content
        reference = message.reference.message_id if message.reference is not None else None
        inbound = InboundMessage(
            platform=self.platform,
            chat_id=str(message.channel.id),
            sender_id=str(message.author.id),
            message_id=str(message.id),
            text=text,
            sender_name=message.author.display_name,
            attachments=tuple(_attachment(a) for a in message.attachments),
            reply_to=str(reference) if reference is not None else None,
            is_direct=isinstance(message.channel, discord.DMChannel),
            mentions_bot=mentions_bot,
        )
        assert self._sink is not None
        try:
            await self._sink(inbound)
        except Exception:
            log.exception("handing a discord message to the daemon failed")

    # outbound

    async def send(self, chat_id: str, text: str, reply_to: str | None = None) -> str:
        channel = await self._channel(chat_id)
        reference = None
        if reply_to is not None:
            reference = discord.MessageReference(
                message_id=int(reply_to), channel_id=int(chat_id), fail_if_not_exists=False
            )
        nonce = str(secrets.randbits(63))
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                message = await channel.send(
                    text, nonce=nonce, reference=reference, allowed_mentions=discord.AllowedMentions.none()
                )
                return str(message.id)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if attempt == SEND_ATTEMPTS:
                    raise TransientError(f"discord send: {_describe(e)}") from None
                log.info("discord send lost its connection; retrying with the same nonce")
            except Exception as e:
                raise _mapped(e, "send") from None
        raise AssertionError("unreachable")

    async def edit(self, chat_id: str, message_id: str, text: str) -> None:
        channel = await self._channel(chat_id)
        try:
            await channel.get_partial_message(int(message_id)).edit(
                content=text, allowed_mentions=discord.AllowedMentions.none()
            )
        except Exception as e:
            raise _mapped(e, "edit") from None

    async def typing(self, chat_id: str) -> None:
        channel = await self._channel(chat_id)
        try:
            await channel.typing()
        except Exception as e:
            raise _mapped(e, "typing") from None

    async def _channel(self, chat_id: str) -> discord.PartialMessageable:
        """The chat as discord.py's send target, once a client is logged in (REST works
        while the gateway is reconnecting; only a client restart makes callers wait)."""
        try:
            await asyncio.wait_for(self._logged_in.wait(), self.settings.start_timeout_s)
        except asyncio.TimeoutError:
            raise TransientError("discord client is not logged in") from None
        assert self._client is not None
        return self._client.get_partial_messageable(int(chat_id))


def _attachment(a: discord.Attachment) -> Attachment:
    mime = a.content_type or None
    kind = mime.split("/", 1)[0] if mime and mime.split("/", 1)[0] in ("image", "audio", "video") else "file"
    return Attachment(kind=kind, name=a.filename, mime_type=mime, size=a.size, ref=a.url)


def _mapped(e: Exception, what: str) -> ConnectorError:
    """discord.py's exceptions as the reply streamer's three kinds."""
    if isinstance(e, discord.RateLimited):
        return RateLimited(e.retry_after, f"discord {what}: rate limited for {e.retry_after:.1f} s")
    if isinstance(e, discord.DiscordServerError):
        return TransientError(f"discord {what}: server error {e.status}")
    if isinstance(e, discord.HTTPException):
        if e.status == 429:
            return RateLimited(5.0, f"discord {what}: 429 without a usable retry_after")
        return ConnectorError(f"discord {what}: HTTP {e.status} {e.text or ''}".strip())
    if isinstance(e, (aiohttp.ClientError, OSError, asyncio.TimeoutError, RuntimeError)):
        return TransientError(f"discord {what}: {_describe(e)}")
    return ConnectorError(f"discord {what}: {_describe(e)}")


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
