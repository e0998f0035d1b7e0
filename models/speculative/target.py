"""The target model seen by speculative decoding: llama.cpp through its low-level API.

`Llama.generate` decodes one token at a time and keeps logits only for the last row; a
verify step needs one `llama_decode` of the whole draft with logits for every row (and,
for learned drafters, the final hidden state of every row), and a KV cache that can be
cut back to the last accepted token. This wraps an existing `Llama` so the runtime's
own bookkeeping (`n_tokens`, `input_ids`, used for KV reuse) stays true afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import llama_cpp
import numpy as np
from llama_cpp import Llama

from models.speculative.layers import install


@dataclass
class StepOutput:
    """Target outputs for the rows of one decode: logits (rows x vocab), hidden (rows x d, or
    d times the number of captured layers plus one) or None."""

    logits: np.ndarray
    hidden: np.ndarray | None = None


class Target(Protocol):
    """What the engine needs from a target model: batched decode, KV roll-back, vocabulary."""

    n_vocab: int

    @property
    def n_past(self) -> int: ...

    @property
    def tokens(self) -> list[int]: ...

    def decode(self, tokens: Sequence[int], all_logits: bool = True) -> StepOutput: ...

    def rollback(self, n_keep: int) -> None: ...

    def is_eog(self, token: int) -> bool: ...


class LlamaTarget:
    """A llama.cpp context driven one `llama_decode` per verify step."""

    def __init__(self, llm: Llama, hidden: bool = False, layers: Sequence[int] = ()) -> None:
        """`layers`: target layers whose outputs come with the hidden states, before the final
        one (see `models.speculative.layers`; giving any makes `llm` a fresh context)."""
        self.llm = llm
        self.n_vocab = llm.n_vocab()
        self.n_embd = llm.n_embd()
        self.capture = install(llm, layers) if layers else None
        self.layers = list(layers)
        self._ctx = llm._ctx.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self._n_batch = llm.n_batch
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        self.set_hidden(hidden)

    @classmethod
    def load(
        cls,
        path: Path | str,
        n_ctx: int = 4096,
        threads: int | None = None,
        hidden: bool = False,
        n_batch: int = 512,
        layers: Sequence[int] = (),
    ) -> "LlamaTarget":
        """Open a GGUF with the settings that make batched and one-by-one decodes bit-identical.

        flash_attn=True is what makes greedy speculative output equal plain output: without
        it batched rows differ from single-row decodes by up to 0.7 logit here.
        """
        threads = threads or os.cpu_count() or 1
        llm = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=True,
            embedding=hidden,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
            verbose=False,
        )
        return cls(llm, hidden=hidden, layers=layers)

    def set_hidden(self, on: bool) -> None:
        """Return final hidden states from now on, or stop. While on, llama.cpp outputs every
        row of a decode (logits too), so a prompt's prefill costs its LM head for every token:
        the runtime only switches it on for requests a drafter reads them for."""
        self.hidden = on
        llama_cpp.llama_set_embeddings(self._ctx, on)
        if self.capture is not None:
            self.capture.active = on

    def __del__(self) -> None:
        batch = getattr(self, "_batch", None)
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
            self._batch = None

    @property
    def n_past(self) -> int:
        return self.llm.n_tokens

    @property
    def tokens(self) -> list[int]:
        return self.llm.input_ids[: self.llm.n_tokens].tolist()

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def decode(self, tokens: Sequence[int], all_logits: bool = True) -> StepOutput:
        """Append `tokens` to the KV cache; logits (and hidden states) for every row, or the last.

        Long inputs (a prompt) go in chunks of n_batch; rows of earlier chunks are returned
        only when all_logits is set.
        """
        if not tokens:
            raise ValueError("decode needs at least one token")
        if self.n_past + len(tokens) > self.llm.n_ctx():
            raise ValueError(
                f"context full: {self.n_past} + {len(tokens)} tokens exceed n_ctx {self.llm.n_ctx()}"
            )
        logits_parts: list[np.ndarray] = []
        hidden_parts: list[np.ndarray] = []
        for start in range(0, len(tokens), self._n_batch):
            chunk = tokens[start : start + self._n_batch]
            last_chunk = start + self._n_batch >= len(tokens)
            self._decode_chunk(chunk, all_logits)
            layer_rows = self.capture.take() if self.hidden and self.capture is not None else []
            if all_logits:
                rows = range(len(chunk))
            elif last_chunk:
                rows = range(len(chunk) - 1, len(chunk))
            else:
                continue
            logits_parts.append(self._rows(llama_cpp.llama_get_logits_ith, rows, self.n_vocab))
            if self.hidden:
                final = self._rows(llama_cpp.llama_get_embeddings_ith, rows, self.n_embd)
                # (rows, d * (len(layers) + 1)): the chosen layers in order, the final state last
                hidden_parts.append(np.concatenate([r[rows.start : rows.stop] for r in layer_rows] + [final], axis=1))
        logits = np.concatenate(logits_parts) if len(logits_parts) > 1 else logits_parts[0]
        hidden = None
        if self.hidden:
            hidden = np.concatenate(hidden_parts) if len(hidden_parts) > 1 else hidden_parts[0]
        return StepOutput(logits=logits, hidden=hidden)

    def _decode_chunk(self, chunk: Sequence[int], all_logits: bool) -> None:
        n_past = self.n_past
        batch = self._batch
        batch.n_tokens = len(chunk)
        for i, tok in enumerate(chunk):
            batch.token[i] = tok
            batch.pos[i] = n_past + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits
        batch.logits[len(chunk) - 1] = True
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        self.llm.input_ids[n_past : n_past + len(chunk)] = chunk
        self.llm.n_tokens = n_past + len(chunk)

    def _rows(self, getter: Callable, rows: range, cols: int) -> np.ndarray:
        """Copy rows by batch index (llama.cpp maps them to its output buffer, which holds
        every row whenever embeddings are on)."""
        out = np.empty((len(rows), cols), dtype=np.float32)
        for j, i in enumerate(rows):
            ptr = getter(self._ctx, i)
            if not ptr:
                raise RuntimeError(f"llama.cpp returned no output for batch row {i}")
            out[j] = np.ctypeslib.as_array(ptr, shape=(cols,))
        return out

    def rollback(self, n_keep: int) -> None:
        """Forget every position from n_keep on (rejected draft tokens)."""
        if n_keep < 0 or n_keep > self.n_past:
            raise ValueError(f"cannot roll back to {n_keep}: {self.n_past} tokens in the cache")
        mem = llama_cpp.llama_get_memory(self._ctx)
        llama_cpp.llama_memory_seq_rm(mem, 0, n_keep, -1)
        self.llm.n_tokens = n_keep
