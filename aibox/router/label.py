"""Labels the shipped prompt set with the real output length of the long model.

The estimator learns from these labels, so they must be what the model really does:
greedy decoding (temperature 0) of each prompt as a single user turn, counted in the
model's own tokens, capped at `MAX_TOKENS`, one past the long-class threshold: a capped
answer is long for sure, and on a small shared CPU full answers would cost several times
as much. Prompts are decoded several at a time in one llama.cpp context (one sequence
each, one batched decode per step), because reading the weights once per step for many
sequences is what makes this affordable on a CPU; batched and single decoding can differ
in the last bits of a float, so a near-tie may rarely pick another token. The run is
resumable: labelled prompts are appended one by one and skipped on the next start, and
prompts added to the source while it runs are picked up before it ends.

    python -m aibox.router.label --model-path PATH [--threads N] [--batch B] [--worker I/N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import numpy as np

from models.catalog import Catalog
from models.runtime import LocalModel

DATA_DIR = Path(__file__).parent / "data"
SOURCE = DATA_DIR / "prompts_source.jsonl"
LABELLED = DATA_DIR / "prompts.jsonl"
LABEL_MODEL = "qwen2.5-coder-1.5b-instruct"
MAX_TOKENS = 201
TEST_SHARE = 0.25


def split_of(prompt_id: str) -> str:
    """Train or test, fixed by the id so a re-run never moves a prompt across the split."""
    h = int(hashlib.sha256(prompt_id.encode()).hexdigest()[:8], 16)
    return "test" if h % 100 < TEST_SHARE * 100 else "train"


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _order(prompt_id: str) -> str:
    return hashlib.sha256(b"order" + prompt_id.encode()).hexdigest()


class BatchDecoder:
    """Greedy decoding of several prompts at once, one llama.cpp sequence per slot."""

    def __init__(self, model: LocalModel, slots: int, slot_ctx: int, threads: int) -> None:
        self.model = model
        self.slots = slots
        self.slot_ctx = slot_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slots * slot_ctx
        params.n_batch = 512
        params.n_ubatch = 512
        params.n_seq_max = slots
        params.n_threads = threads
        params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(model.llm._model.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batched context")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(model._vocab)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """entries: (token, position, sequence, wants logits)."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        if llama_cpp.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def _argmax(self, index: int) -> int:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, index)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def _prefill(self, seq: int, prompt: list[int]) -> int:
        """Fills the sequence with the prompt; returns the first generated token."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)
        for start in range(0, len(prompt), 512):
            chunk = prompt[start : start + 512]
            last = start + len(chunk) == len(prompt)
            self._decode([(t, start + i, seq, last and i == len(chunk) - 1) for i, t in enumerate(chunk)])
        return self._argmax(len(prompt) - 1 - ((len(prompt) - 1) // 512) * 512)

    def run(
        self, rows: list[dict], max_tokens: int, done: Callable[[dict, int, bool, int], None],
        skip: Callable[[dict], bool] = lambda _row: False,
    ) -> None:
        """Decodes every row; calls `done(row, tokens, capped, prompt_tokens)` as each finishes.
        `skip` is asked before a row starts (another worker may have labelled it meanwhile)."""
        pending = list(rows)
        active: dict[int, dict] = {}  # slot -> {"row", "prompt", "next", "count", "pos"}
        while pending or active:
            for seq in range(self.slots):
                if seq in active or not pending:
                    continue
                row = pending.pop(0)
                if skip(row):
                    continue
                prompt = self.model.chat_tokens([{"role": "user", "content": row["text"]}])
                if len(prompt) + max_tokens >= self.slot_ctx:
                    raise ValueError(f"{row['id']}: {len(prompt)} prompt tokens do not fit a slot of {self.slot_ctx}")
                first = self._prefill(seq, prompt)
                active[seq] = {"row": row, "prompt": len(prompt), "next": first, "count": 0, "pos": len(prompt)}
            stepping = []
            for seq, a in list(active.items()):
                if self.model.is_eog(a["next"]) or a["count"] >= max_tokens:
                    done(a["row"], a["count"], a["count"] >= max_tokens and not self.model.is_eog(a["next"]), a["prompt"])
                    llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)
                    del active[seq]
                    continue
                a["count"] += 1
                if a["count"] >= max_tokens:
                    continue  # the cap is reached: no need to decode this token
                stepping.append(seq)
            if not stepping:
                continue
            self._decode([(active[seq]["next"], active[seq]["pos"], seq, True) for seq in stepping])
            for i, seq in enumerate(stepping):
                active[seq]["pos"] += 1
                active[seq]["next"] = self._argmax(i)

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)


def labelled_ids() -> set[str]:
    return {row["id"] for row in read_jsonl(LABELLED)}


def label_pending(decoder: BatchDecoder, worker: int = 0, workers: int = 1) -> int:
    """Labels the source prompts not labelled yet, in a fixed shuffled order so that an
    interrupted run still covers every category. Parallel workers start at evenly spaced
    points of that order and skip what another worker has labelled meanwhile."""
    pending = sorted((r for r in read_jsonl(SOURCE) if r["id"] not in labelled_ids()), key=lambda r: _order(r["id"]))
    offset = len(pending) * worker // workers
    pending = pending[offset:] + pending[:offset]
    started = time.monotonic()
    with LABELLED.open("a", encoding="utf-8") as out:

        def done(row: dict, tokens: int, capped: bool, prompt_tokens: int) -> None:
            labelled = {
                **row, "tokens": tokens, "capped": capped, "max_tokens": MAX_TOKENS, "prompt_tokens": prompt_tokens,
                "model": LABEL_MODEL, "split": split_of(row["id"]),
            }
            out.write(json.dumps(labelled, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{row['id']}: {tokens} tokens (at {time.monotonic() - started:.0f} s)", flush=True)

        decoder.run(pending, MAX_TOKENS, done, skip=lambda row: row["id"] in labelled_ids())
    return len(pending)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8, help="prompts decoded at once")
    parser.add_argument("--worker", default="0/1", help="this process's place among parallel workers, as I/N")
    args = parser.parse_args(argv)
    card = Catalog.load().get(LABEL_MODEL)
    model = LocalModel(card, args.model_path, threads=args.threads, n_ctx=512, state_cache_bytes=0)
    decoder = BatchDecoder(model, args.batch, 1024, args.threads)
    start = time.monotonic()
    worker, workers = (int(part) for part in args.worker.split("/"))
    while label_pending(decoder, worker, workers):
        pass
    decoder.close()
    print(f"all prompts labelled in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
