"""Saved KV states of earlier conversations, so a follow-up turn skips re-prefilling history.

A llama.cpp context holds one conversation's KV cache at a time. When another chat takes
the context, the state of the one that was there (only its sequence's cells, via
llama_state_seq_get_data) is copied into this LRU. A later turn of that chat restores the
state with the longest common token prefix and prefills only what is new.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class SavedState:
    tokens: tuple[int, ...]
    data: bytes


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class StateCache:
    """Byte-bounded LRU of saved sequence states."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[tuple[int, ...], SavedState] = OrderedDict()
        self.size = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, state: SavedState) -> None:
        if len(state.data) > self.capacity:
            return
        old = self._items.pop(state.tokens, None)
        if old is not None:
            self.size -= len(old.data)
        self._items[state.tokens] = state
        self.size += len(state.data)
        while self.size > self.capacity:
            _, evicted = self._items.popitem(last=False)
            self.size -= len(evicted.data)

    def best(self, prompt: list[int]) -> tuple[SavedState | None, int]:
        """The saved state sharing the longest prefix with `prompt`, and that length."""
        best, best_len = None, 0
        for state in self._items.values():
            n = common_prefix(state.tokens, prompt)
            if n > best_len:
                best, best_len = state, n
        if best is not None:
            self._items.move_to_end(best.tokens)
        return best, best_len
