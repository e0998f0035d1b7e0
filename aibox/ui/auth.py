"""Who may use the page: one-time login links, sessions and their CSRF tokens.

`aibox ui` asks the daemon over the admin socket (root and the aibox group only) for a
login token; whoever can reach that socket is the box's owner, so a redeemed token makes
an owner session. Tokens are single-use and live a few minutes; sessions expire and can be
revoked one by one or all at once. Only sha256 digests of tokens and session ids are kept,
so neither a log line nor a memory dump of this table hands out a working cookie. Both live
in memory: a restart of the daemon logs everyone out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOGIN_TTL_S = 300.0
SESSION_TTL_S = 12 * 3600.0


class LoginRefused(Exception):
    """The login token is unknown, already used or expired; the message says what to do."""


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass
class Session:
    id: str  # a short public handle (a prefix of the digest), never the cookie itself
    csrf: str
    created_at: float
    expires_at: float
    last_seen: float
    flash: list[str] = field(default_factory=list)

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def summary(self) -> dict:
        return {"id": self.id, "created_at": self.created_at, "expires_at": self.expires_at, "last_seen": self.last_seen}


class UiAuth:
    def __init__(
        self, login_ttl_s: float = LOGIN_TTL_S, session_ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.time,
    ) -> None:
        self.login_ttl_s = login_ttl_s
        self.session_ttl_s = session_ttl_s
        self.clock = clock
        self._tokens: dict[str, float] = {}  # digest -> expiry
        self._used: dict[str, float] = {}  # digest -> expiry, so a second use is told "already used"
        self._sessions: dict[str, Session] = {}  # digest of the cookie -> session
        self._lock = threading.Lock()

    def issue_login(self) -> tuple[str, float]:
        """A new single-use login token and its expiry (epoch seconds)."""
        token = secrets.token_urlsafe(32)
        expires = self.clock() + self.login_ttl_s
        with self._lock:
            self._forget_expired()
            self._tokens[_digest(token)] = expires
        return token, expires

    def redeem(self, token: str) -> tuple[str, Session]:
        """Spends a login token; returns the new session's cookie value and the session."""
        key = _digest(token)
        now = self.clock()
        with self._lock:
            self._forget_expired()
            expires = self._tokens.pop(key, None)
            if expires is None:
                if key in self._used:
                    raise LoginRefused("this login link was already used; run `aibox ui` on the box for a new one")
                raise LoginRefused("this login link is unknown or has expired; run `aibox ui` on the box for a new one")
            self._used[key] = expires
            cookie = secrets.token_urlsafe(32)
            digest = _digest(cookie)
            session = Session(digest[:12], secrets.token_urlsafe(24), now, now + self.session_ttl_s, now)
            self._sessions[digest] = session
        return cookie, session

    def session(self, cookie: str | None) -> Session | None:
        """The live session a cookie belongs to, or None (no cookie, expired, revoked)."""
        if not cookie:
            return None
        with self._lock:
            self._forget_expired()
            session = self._sessions.get(_digest(cookie))
            if session is not None:
                session.last_seen = self.clock()
            return session

    def sessions(self) -> list[Session]:
        with self._lock:
            self._forget_expired()
            return sorted(self._sessions.values(), key=lambda s: s.created_at)

    def revoke(self, session_id: str | None = None) -> int:
        """Ends the session with that public id, or every session when None; returns how many."""
        with self._lock:
            doomed = [k for k, s in self._sessions.items() if session_id is None or s.id == session_id]
            for k in doomed:
                del self._sessions[k]
        return len(doomed)

    def _forget_expired(self) -> None:
        now = self.clock()
        for table in (self._tokens, self._used):
            for k in [k for k, exp in table.items() if exp <= now]:
                del table[k]
        for k in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[k]
