"""What every answer being generated looks like to its consumer, wherever the model runs.

A local model (`models.pool.LocalStream`) and a remote server (`models.remote.RemoteStream`)
stream the same way, so the router, the API and the agents treat them alike: iterate for
text pieces, read `stats` once the answer has finished, `cancel()` to stop it early.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class GenerationStats:
    """What one answer cost and how it ended, for metrics, usage records and the router's measured
    speeds; `extra` holds what only one path knows (the speculative engine's figures)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    total_s: float = 0.0
    finish_reason: str = "stop"
    extra: dict = field(default_factory=dict)

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.total_s - (self.ttft_s or 0.0)
        return (self.completion_tokens - 1) / decode_s if self.completion_tokens > 1 and decode_s > 0 else 0.0


class TextStream(ABC):
    """An answer being generated: iterate for text pieces; `stats` is set at the end.

    Stopping the iteration early (or the consumer going away) ends the generation too."""

    model: str  # the name of the model answering
    stats: GenerationStats | None

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[str]:
        """The answer's text pieces as they are generated."""

    @abstractmethod
    def cancel(self) -> None:
        """Asks the generation to stop; the iteration then ends at the next piece."""

    async def text(self) -> str:
        """The whole answer, once it has finished."""
        return "".join([piece async for piece in self])
