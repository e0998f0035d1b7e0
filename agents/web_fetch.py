"""The web_fetch tool: GET a page and hand the model its readable text.

A model chooses the URL, so the fetch must not become a way into the owner's network
(SSRF): the host is resolved here, every address it resolves to must be public, and the
connection goes to that checked address (the Host header and TLS SNI keep the name), so a
second DNS answer cannot swap in a private one. Every redirect is checked the same way.
Loopback, private, link-local, CGNAT and cloud metadata addresses are refused unless the
owner lists the host in `[tools.web_fetch] allow_hosts`. Size, time and redirects are
capped; the text is extracted with trafilatura.
May import: aibox.config.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass

import httpx

from aibox.config import WebFetchConfig

METADATA = {ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")}
TEXT_TYPES = ("text/plain", "application/json", "text/markdown", "text/csv", "application/xml", "text/xml")
USER_AGENT = "aibox-web-fetch/1 (+https://github.com/aibox)"


class WebFetchError(ValueError):
    """A refused or failed fetch; the message is for the model and names the URL."""


@dataclass(frozen=True)
class Page:
    url: str
    status: int
    title: str
    text: str
    truncated: bool

    def render(self, max_chars: int) -> str:
        head = f"URL: {self.url}\nStatus: {self.status}\n" + (f"Title: {self.title}\n" if self.title else "")
        text = self.text
        notes = []
        if len(text) > max_chars:
            notes.append(f"text cut to {max_chars} of {len(text)} characters")
            text = text[:max_chars]
        if self.truncated:
            notes.append("the page was larger than the download limit; only its start was read")
        return head + "\n" + text + (f"\n[{'; '.join(notes)}]" if notes else "")


def refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a fetch may not connect to `ip`, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "not a public address"
    return None


class WebFetcher:
    def __init__(self, settings: WebFetchConfig) -> None:
        self.settings = settings
        self.allowed = {h.lower().rstrip(".") for h in settings.allow_hosts}

    async def fetch(self, url: str) -> Page:
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise WebFetchError(f"{url}: no complete answer within {self.settings.timeout_s:g} s") from None

    async def _fetch(self, url: str) -> Page:
        # trust_env=False: a proxy from the environment would connect on our behalf, unchecked.
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self.settings.timeout_s) as client:
            current = url
            for hop in range(self.settings.max_redirects + 1):
                target = _parse(current)
                request = await self._request(client, target)
                response = await client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        location = response.headers.get("location", "")
                        if hop == self.settings.max_redirects:
                            raise WebFetchError(f"{url}: more than {self.settings.max_redirects} redirects")
                        current = str(target.join(location))
                        continue
                    body, truncated = await self._read(response)
                    return _page(str(target), response, body, truncated)
                finally:
                    await response.aclose()
        raise WebFetchError(f"{url}: more than {self.settings.max_redirects} redirects")

    async def _request(self, client: httpx.AsyncClient, target: httpx.URL) -> httpx.Request:
        """A request to the checked address of `target`'s host (or to the host itself when the owner allowed it)."""
        host = target.host.lower().rstrip(".")
        headers = {"user-agent": USER_AGENT, "accept": "text/html,text/plain;q=0.9,*/*;q=0.5"}
        if host in self.allowed:
            return client.build_request("GET", target, headers=headers)
        address = await self._public_address(target)
        headers["host"] = target.netloc.decode("ascii")
        extensions = {"sni_hostname": host} if target.scheme == "https" else {}
        return client.build_request("GET", target.copy_with(host=address), headers=headers, extensions=extensions)

    async def _public_address(self, target: httpx.URL) -> str:
        host = target.host
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, target.port or (443 if target.scheme == "https" else 80),
                                                                 type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise WebFetchError(f"{target}: cannot resolve {host!r}: {e.strerror}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:
            reason = refusal(ipaddress.ip_address(address.split("%")[0]))
            if reason is not None:
                raise WebFetchError(f"refused {target}: {host} is {reason} ({address}); the owner can allow it in [tools.web_fetch] allow_hosts")
        return addresses[0]

    async def _read(self, response: httpx.Response) -> tuple[bytes, bool]:
        limit = self.settings.max_bytes
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                return bytes(body[:limit]), True
        return bytes(body), False


def _parse(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise WebFetchError(f"{url!r} is not a valid URL: {e}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise WebFetchError(f"{url!r}: only http:// and https:// URLs can be fetched")
    if target.userinfo:
        raise WebFetchError(f"{url!r}: URLs with a user name or password are not fetched")
    return target


def _page(url: str, response: httpx.Response, body: bytes, truncated: bool) -> Page:
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    text = body.decode(response.encoding or "utf-8", errors="replace")
    if kind in ("text/html", "application/xhtml+xml", ""):
        title, text = _readable(text)
    elif kind in TEXT_TYPES or kind.startswith("text/"):
        title = ""
    else:
        raise WebFetchError(f"{url}: the content is {kind}, not text; it is not read")
    return Page(url, response.status_code, title, text.strip(), truncated)


def _readable(html: str) -> tuple[str, str]:
    """The title and the main text; the whole visible text where trafilatura finds no main part (short pages)."""
    import trafilatura  # slow to import; most agents never fetch
    from lxml import html as lxml_html

    match = re.search(r"<title[^>]*>(.*?)</title>", html, re.S | re.I)
    title = re.sub(r"\s+", " ", match.group(1)).strip() if match else ""
    text = trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True)
    if not text:
        try:
            tree = lxml_html.fromstring(html)
        except Exception:  # lxml raises several types on hopeless markup; the raw text is the fallback
            return title, re.sub(r"<[^>]+>", " ", html)
        for node in tree.xpath("//script|//style|//noscript|//head"):
            node.drop_tree()
        text = re.sub(r"[ \t]+", " ", tree.text_content())
        text = re.sub(r"\n\s*\n+", "\n\n", text)
    return title, text
