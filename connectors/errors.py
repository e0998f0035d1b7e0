"""The few ways a platform call can fail that the reply streamer treats differently.

Each connector maps its library's exceptions onto these, so the streamer never needs
to know which platform it is talking to:

- `RateLimited`: the platform said 429; wait `retry_after` seconds and try again.
- `TransientError`: a 5xx answer or a dropped connection; retry with backoff.
- `ConnectorError`: anything else (bad request, forbidden, message gone); retrying
  would not help.
- `Undeliverable`: the platform refuses this reply for good (e.g. WhatsApp's error
  131047, outside the 24-hour window); the message gets a terminal state in the inbox
  instead of being retried at every start.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """A platform call failed and retrying the same call will not help."""


class RateLimited(ConnectorError):
    """The platform asked us to slow down (HTTP 429 or its equivalent)."""

    def __init__(self, retry_after: float, detail: str = "") -> None:
        self.retry_after = max(0.0, float(retry_after))
        super().__init__(detail or f"rate limited: retry after {self.retry_after:g} s")


class TransientError(ConnectorError):
    """A server error or a dropped connection: the same call may well succeed later."""


class Undeliverable(ConnectorError):
    """The platform will never accept this reply in this chat; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
