"""One local GGUF model running in-process on llama.cpp.

`LocalModel` is synchronous and owns one llama.cpp context; `models.pool` runs it on a
worker thread and streams to asyncio. Generation is our own token loop on the low-level
API: sampling happens inside llama.cpp's sampler chain (no Python pass over a 150k-entry
logit vector per token), the KV cache is reused across turns of a chat, and the loop is
the place the speculative engine plugs into.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import llama_cpp
from llama_cpp import _internals
from llama_cpp.llama_grammar import LlamaGrammar

from models.catalog import ModelCard
from models.chat_template import ChatTemplate, Message
from models.kv_cache import SavedState, StateCache, common_prefix
from models.sampling import SamplingParams
from models.stream import GenerationStats

log = logging.getLogger(__name__)

# A conversation evicted from the context is worth saving only if it holds at least this
# many tokens beyond what the next request shares with it.
MIN_SAVE_TOKENS = 32


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context window."""


class SamplingError(ValueError):
    """Sampling parameters this model cannot apply (a logit bias on a token it does not have)."""


class LocalModel:
    """A loaded model and its single llama.cpp context (one conversation's KV at a time,
    others parked in a byte-bounded LRU of saved states)."""

    def __init__(
        self, card: ModelCard, path: Path, *, threads: int, n_ctx: int, state_cache_bytes: int, kv_reuse: bool = True
    ) -> None:
        self.card = card
        self.kv_reuse = kv_reuse
        self.path = path
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=min(n_ctx, card.context_length),
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=True,
            verbose=False,
        )
        self.n_ctx = self.llm.n_ctx()
        self._vocab = self.llm._model.vocab
        self._kv: list[int] = []
        self._states = StateCache(state_cache_bytes)
        meta = self.llm.metadata
        source = meta.get("tokenizer.chat_template") if card.chat_template == "gguf" else card.chat_template
        if not source:
            raise ValueError(f"{card.name}: no chat template in the GGUF metadata or the card")
        self.template = ChatTemplate(source, bos_token=self._piece(self.llm.token_bos(), True), eos_token=self._piece(self.llm.token_eos(), True))

    # -- tokens ---------------------------------------------------------------

    def tokenize(self, text: str, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def chat_tokens(self, messages: Sequence[Message]) -> list[int]:
        tokens = self.template.tokens(messages, self.tokenize)
        if self.llm._model.add_bos_token() and (not tokens or tokens[0] != self.llm.token_bos()):
            tokens.insert(0, self.llm.token_bos())
        return tokens

    def _piece(self, token: int, special: bool = False) -> str:
        return self._piece_bytes(token, special).decode("utf-8", errors="replace")

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- KV cache -------------------------------------------------------------

    @property
    def cached_tokens(self) -> list[int]:
        return list(self._kv)

    @property
    def saved_states(self) -> int:
        return len(self._states)

    def _save_current(self) -> None:
        ctx = self.llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        self._states.put(SavedState(tuple(self._kv), bytes(buf[:n])))

    def _restore(self, state: SavedState) -> None:
        ctx = self.llm._ctx.ctx
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), 0, -1, -1)
        buf = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if llama_cpp.llama_state_seq_set_data(ctx, buf, len(state.data), 0) == 0:
            raise RuntimeError("llama.cpp refused a saved sequence state")
        self._kv = list(state.tokens)
        self.llm.n_tokens = len(self._kv)
        self.llm.input_ids[: len(self._kv)] = self._kv

    def prepare(self, prompt: list[int]) -> int:
        """Makes the KV cache hold the longest reusable prefix of `prompt`; returns its length.

        Always leaves at least one prompt token to decode, since sampling needs its logits."""
        if not self.kv_reuse:
            self._kv = []
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm._ctx.ctx), True)
            self.llm.n_tokens = 0
            return 0
        keep = common_prefix(self._kv, prompt)
        saved, saved_len = self._states.best(prompt)
        if saved is not None and saved_len > keep:
            if len(self._kv) - keep >= MIN_SAVE_TOKENS:
                self._save_current()
            self._restore(saved)
            keep = saved_len
        elif len(self._kv) - keep >= MIN_SAVE_TOKENS:
            self._save_current()
        keep = min(keep, len(prompt) - 1)
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.llm._ctx.ctx), 0, keep, -1)
        self._kv = self._kv[:keep]
        self.llm.n_tokens = keep
        return keep

    def decode(self, tokens: Sequence[int]) -> None:
        """Appends tokens to the KV cache; logits are kept for the last one only."""
        self.llm.eval(tokens)
        self._kv.extend(tokens)

    # -- generation -----------------------------------------------------------

    def _sampler(self, params: SamplingParams) -> _internals.LlamaSampler:
        sampler = _internals.LlamaSampler()
        if params.grammar and params.grammar_trigger:
            patterns = (ctypes.c_char_p * 1)(params.grammar_trigger.encode("utf-8"))
            lazy = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                self.llm._model.vocab, params.grammar.encode("utf-8"), b"root", patterns, 1, None, 0
            )
            llama_cpp.llama_sampler_chain_add(sampler.sampler, lazy)
        elif params.grammar:
            sampler.add_grammar(self.llm._model, LlamaGrammar.from_string(params.grammar, verbose=False))
        if params.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(*params.logit_bias)
            llama_cpp.llama_sampler_chain_add(
                sampler.sampler, llama_cpp.llama_sampler_init_logit_bias(self.llm.n_vocab(), len(biases), biases)
            )
        if params.presence_penalty or params.frequency_penalty or params.repeat_penalty != 1.0:
            # over the whole answer (llama.cpp counts the last N sampled tokens)
            last_n = min(params.max_tokens, self.n_ctx)
            llama_cpp.llama_sampler_chain_add(sampler.sampler, llama_cpp.llama_sampler_init_penalties(
                self.llm.n_vocab(), last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty))
        if params.greedy:
            sampler.add_greedy()
        else:
            if params.top_k > 0:
                sampler.add_top_k(params.top_k)
            sampler.add_top_p(params.top_p, 1)
            if params.min_p > 0:
                sampler.add_min_p(params.min_p, 1)
            sampler.add_temp(params.temperature)
            sampler.add_dist(params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        return sampler

    def check_params(self, params: SamplingParams) -> None:
        vocab = self.llm.n_vocab()
        for token, _bias in params.logit_bias:
            if not 0 <= token < vocab:
                raise SamplingError(f"logit_bias: token {token} is not in {self.card.name}'s vocabulary of {vocab} tokens")

    def check_fits(self, prompt: list[int]) -> None:
        if len(prompt) >= self.n_ctx:
            raise ContextLengthError(
                f"the prompt has {len(prompt)} tokens; {self.card.name} runs with a context of {self.n_ctx} tokens"
            )

    def generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool] = lambda: False,
    ) -> GenerationStats:
        """Generates a completion of `prompt`, calling `on_text` with each new piece of text."""
        self.check_fits(prompt)
        start = time.perf_counter()
        stats = GenerationStats(prompt_tokens=len(prompt))
        stats.cached_tokens = self.prepare(prompt)
        self.decode(prompt[stats.cached_tokens :])
        max_tokens = max(0, min(params.max_tokens, self.n_ctx - len(prompt)))
        sampler = self._sampler(params)
        text = PieceDecoder(params.stop, on_text)
        try:
            stats.finish_reason = "length"
            while stats.completion_tokens < max_tokens:
                if cancelled():
                    stats.finish_reason = "cancelled"
                    break
                token = sampler.sample(self.llm._ctx, -1)
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - start
                if self.is_eog(token):
                    stats.finish_reason = "stop"
                    break
                stats.completion_tokens += 1
                if text.push(self._piece_bytes(token)):
                    stats.finish_reason = "stop"
                    break
                if stats.completion_tokens < max_tokens:
                    self.decode([token])
        finally:
            sampler.close()
        text.flush()
        stats.total_s = time.perf_counter() - start
        return stats

    def close(self) -> None:
        self.llm.close()


class PieceDecoder:
    """Bytes of token pieces in, whole UTF-8 text out, with stop strings cut off; plain and
    speculative generation (`models.speculative.accelerator`) both emit through it.

    Text that could be the start of a stop string is held back until it is clear."""

    def __init__(self, stop: tuple[str, ...], emit: Callable[[str], None]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._emit = emit
        self._text = ""
        self._sent = 0
        self._stopped = False

    def push(self, piece: bytes) -> bool:
        """Adds a token's bytes; returns True when a stop string was reached."""
        self._text += self._decoder.decode(piece)
        for s in self._stop:
            i = self._text.find(s, max(0, self._sent - len(s)))
            if i >= 0:
                self._text = self._text[:i]
                self._flush_to(len(self._text))
                self._stopped = True
                return True
        self._flush_to(len(self._text) - self._hold)
        return False

    def flush(self) -> None:
        if self._stopped:
            return
        self._text += self._decoder.decode(b"", final=True)
        self._flush_to(len(self._text))

    def _flush_to(self, end: int) -> None:
        if end > self._sent:
            self._emit(self._text[self._sent : end])
            self._sent = end
