"""The page's login rules without a browser: a login token works once and only for a few
minutes, sessions expire and can be revoked, and the CSRF check needs the session's token."""

from __future__ import annotations

import pytest

from aibox.ui.auth import LoginRefused, UiAuth


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_login_token_works_once_and_a_second_use_is_told_so() -> None:
    auth = UiAuth(clock=Clock())
    token, _ = auth.issue_login()
    cookie, session = auth.redeem(token)
    assert auth.session(cookie) is session
    with pytest.raises(LoginRefused, match="already used"):
        auth.redeem(token)
    with pytest.raises(LoginRefused, match="unknown or has expired"):
        auth.redeem("made-up-token")


def test_tokens_and_sessions_expire() -> None:
    clock = Clock()
    auth = UiAuth(login_ttl_s=300, session_ttl_s=3600, clock=clock)
    late, _ = auth.issue_login()
    token, _ = auth.issue_login()
    cookie, _ = auth.redeem(token)
    clock.now += 301
    with pytest.raises(LoginRefused):
        auth.redeem(late)
    assert auth.session(cookie) is not None
    clock.now += 3600
    assert auth.session(cookie) is None
    assert auth.sessions() == []


def test_sessions_can_be_revoked_one_by_one_or_all() -> None:
    auth = UiAuth(clock=Clock())
    cookies = [auth.redeem(auth.issue_login()[0]) for _ in range(3)]
    (first, s1), (second, _), (third, _) = cookies
    assert auth.revoke(s1.id) == 1
    assert auth.session(first) is None and auth.session(second) is not None
    assert auth.revoke() == 2
    assert auth.session(third) is None
    assert auth.revoke("nope") == 0


def test_the_csrf_check_needs_the_sessions_own_token() -> None:
    auth = UiAuth(clock=Clock())
    _, a = auth.redeem(auth.issue_login()[0])
    _, b = auth.redeem(auth.issue_login()[0])
    assert a.csrf_ok(a.csrf)
    assert not a.csrf_ok(None) and not a.csrf_ok("") and not a.csrf_ok(b.csrf)
