"""How often a model answers right, per kind of task, measured on this box.

The evaluation set (data/eval.jsonl) was written for this project: short facts,
arithmetic, translation, instructions with checkable constraints, summaries with key
points to find, and code with unit tests, in several languages. Every item carries its own
automatic check, so a run needs no judge model and no person: the score of an answer is a
pure function of the item and the text. Items whose id is in the "test" split are held
out for `aibox bench router`; `aibox models eval` measures on the rest.

Code answers are run: the first Python block of the answer, with the item's asserts
appended, in a fresh `python -I` in a temporary directory, with CPU-time, memory and
wall-clock limits, so a wrong or runaway answer fails the item instead of the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import select

from aibox.store import Store
from aibox.store.schema import ModelQuality

EVAL_SET = Path(__file__).parent / "data" / "eval.jsonl"
KINDS = ("fact", "arithmetic", "translation", "instruction", "summary", "code")
CODE_TIMEOUT_S = 10
CODE_CPU_S = 5
CODE_MEMORY_BYTES = 512 * 1024 * 1024
ANSWER_KEPT = 400

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|$)", re.S | re.I)


class EvalSetError(ValueError):
    """The evaluation set (or an item of it) is malformed; the message names the item."""


@dataclass(frozen=True)
class Item:
    id: str
    kind: str
    lang: str
    prompt: str
    score: dict
    max_tokens: int
    split: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: str


def load_items(path: Path = EVAL_SET) -> list[Item]:
    items: list[Item] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = Item(**json.loads(line))
        except (json.JSONDecodeError, TypeError) as e:
            raise EvalSetError(f"{path}:{n}: {e}") from None
        if item.kind not in KINDS:
            raise EvalSetError(f"{path}:{n}: item {item.id} has unknown kind {item.kind!r} (known: {', '.join(KINDS)})")
        if item.id in seen:
            raise EvalSetError(f"{path}:{n}: duplicate item id {item.id}")
        seen.add(item.id)
        items.append(item)
    return items


def set_digest(items: Iterable[Item]) -> str:
    """Identifies a version of the set: results of another version are not mixed in."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(asdict(it), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def stratified(items: list[Item], per_kind: int | None, split: str = "train") -> list[Item]:
    """The items of `split`, at most `per_kind` of each kind, spread evenly over the kind's
    list (which interleaves languages and sub-types) rather than its first entries."""
    out: list[Item] = []
    for kind in KINDS:
        pool = [it for it in items if it.kind == kind and it.split == split]
        if per_kind is not None and per_kind < len(pool):
            pool = [pool[math.floor(i * len(pool) / per_kind)] for i in range(per_kind)]
        out += pool
    return out


# -- scoring -------------------------------------------------------------------


def fold(text: str) -> str:
    """Case-, width- and accent-insensitive form, so "Brasília" matches "brasilia"."""
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    return "".join(ch for ch in text if not unicodedata.combining(ch))


def _has(text: str, phrase: str, whole_word: bool = True) -> bool:
    phrase = fold(phrase)
    if not whole_word or CJK.search(phrase):
        return phrase in text
    return re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", text) is not None


def words(text: str) -> int:
    """Words, with each CJK character counted as one."""
    return len(CJK.findall(text)) + len(re.findall(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+", CJK.sub(" ", text)))


def parse_number(token: str) -> float:
    """1,234 and 1.234,5 style separators as well as 0,5 decimal commas."""
    if "," in token and "." in token:
        token = token.replace(".", "").replace(",", ".") if token.rfind(",") > token.rfind(".") else token.replace(",", "")
    elif "," in token:
        parts = token.split(",")
        token = token.replace(",", "") if all(len(p) == 3 for p in parts[1:]) else token.replace(",", ".")
    return float(token)


def final_number(answer: str) -> float | None:
    """The last number in the answer: an instruct model that shows its working ends on the result."""
    found = NUMBER.findall(answer)
    if not found:
        return None
    try:
        return parse_number(found[-1])
    except ValueError:
        return None


def _plain(answer: str) -> str:
    """The answer as a bare phrase: no surrounding quotes, markdown or final full stop."""
    return fold(answer).strip().strip("*_`\"'“”«»").strip().rstrip(".!。").strip().strip("*_`\"'“”«»").strip()


def _json_value(answer: str) -> Any:
    body = FENCE.search(answer)
    text = body.group(1) if body else answer
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError:
        return None
    return value


def _edge_word(answer: str, last: bool) -> str:
    tokens = re.findall(r"[^\W_]+", fold(answer))
    if not tokens:
        return ""
    return tokens[-1] if last else tokens[0]


def check(rule: dict, answer: str) -> str:
    """'' when the answer keeps the rule, else what it broke."""
    (name, arg), = rule.items()
    text = fold(answer)
    stripped = answer.strip()
    if name == "equals":
        return "" if _plain(answer) == fold(arg) else f"not exactly {arg!r}"
    if name == "uppercase":
        letters = [c for c in stripped if c.isalpha() and c.lower() != c.upper()]
        return "" if letters and all(c.isupper() for c in letters) else "not all capitals"
    if name == "lowercase":
        letters = [c for c in stripped if c.isalpha() and c.lower() != c.upper()]
        return "" if letters and all(c.islower() for c in letters) else "not all lowercase"
    if name == "lines":
        n = len([line for line in stripped.splitlines() if line.strip()])
        return "" if n == arg else f"{n} lines, not {arg}"
    if name == "bullets":
        n = len([line for line in stripped.splitlines() if re.match(r"\s*[-*•]\s+\S", line)])
        return "" if n == arg else f"{n} bullet points, not {arg}"
    if name == "max_words":
        return "" if words(answer) <= arg else f"{words(answer)} words, over {arg}"
    if name == "min_words":
        return "" if words(answer) >= arg else f"{words(answer)} words, under {arg}"
    if name in ("max_chars", "min_chars"):
        n = len(re.sub(r"\s", "", stripped))
        ok = n <= arg if name == "max_chars" else n >= arg
        return "" if ok else f"{n} characters ({name.replace('_', ' ')} {arg})"
    if name == "max_sentences":
        n = len(re.findall(r"[.!?。！？](?=\s|$)", stripped)) or (1 if stripped else 0)
        return "" if n <= arg else f"{n} sentences, over {arg}"
    if name == "starts_with":
        return "" if _edge_word(answer, last=False) == fold(arg) else f"does not start with {arg!r}"
    if name == "ends_with":
        return "" if _edge_word(answer, last=True) == fold(arg) else f"does not end with {arg!r}"
    if name == "contains":
        missing = [w for w in arg if not _has(text, w, whole_word=False)]
        return "" if not missing else f"missing {', '.join(missing)}"
    if name == "contains_any":
        return "" if any(_has(text, w, whole_word=False) for w in arg) else f"none of {', '.join(arg)}"
    if name == "not_contains":
        present = [w for w in arg if _has(text, w)]
        return "" if not present else f"uses {', '.join(present)}"
    if name == "not_contains_chars":
        present = sorted({c for c in stripped if c in arg})
        return "" if not present else f"uses {''.join(present)}"
    if name == "json_keys":
        value = _json_value(answer)
        if not isinstance(value, dict):
            return "no JSON object"
        missing = [k for k in arg if k not in value]
        return "" if not missing else f"JSON lacks {', '.join(missing)}"
    if name == "json_array":
        value = _json_value(answer)
        ok = isinstance(value, list) and len(value) == arg and all(isinstance(v, (int, float)) for v in value)
        return "" if ok else f"not a JSON array of {arg} numbers"
    if name == "regex":
        return "" if re.search(arg, stripped, re.I | re.S) else "wrong form"
    raise EvalSetError(f"unknown check {name!r}")


def extract_code(answer: str) -> str:
    blocks = FENCE.findall(answer)
    if blocks:
        return max(blocks, key=lambda b: ("def " in b, len(b)))
    return answer


def run_tests(code: str, tests: str) -> str:
    """'' when the asserts pass, else the last line of the failure."""
    def limits() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_CPU, (CODE_CPU_S, CODE_CPU_S))
        resource.setrlimit(resource.RLIMIT_AS, (CODE_MEMORY_BYTES, CODE_MEMORY_BYTES))

    with tempfile.TemporaryDirectory(prefix="aibox-eval-") as tmp:
        script = Path(tmp) / "answer.py"
        script.write_text(code + "\n\n" + tests + "\n", encoding="utf-8")
        try:
            done = subprocess.run([sys.executable, "-I", str(script)], cwd=tmp, capture_output=True, text=True,
                                  timeout=CODE_TIMEOUT_S, preexec_fn=limits, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"timed out after {CODE_TIMEOUT_S} s"
    if done.returncode == 0:
        return ""
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else f"exit status {done.returncode}"


def score(item: Item, answer: str) -> Verdict:
    """Whether `answer` is a right answer to `item`, and if not, why."""
    rule = item.score
    if not answer.strip():
        return Verdict(False, "empty answer")
    if "accept" in rule:
        text = fold(answer)
        ok = any(_has(text, a) for a in rule["accept"])
        return Verdict(ok, "" if ok else f"none of {', '.join(rule['accept'])}")
    if "number" in rule:
        got = final_number(answer)
        ok = got is not None and math.isclose(got, float(rule["number"]), rel_tol=1e-6, abs_tol=1e-9)
        return Verdict(ok, "" if ok else f"final number {got}, expected {rule['number']}")
    if "checks" in rule:
        broken = [b for b in (check(r, answer) for r in rule["checks"]) if b]
        return Verdict(not broken, "; ".join(broken))
    if "key_points" in rule:
        text = fold(answer)
        missing = [alts[0] for alts in rule["key_points"] if not any(_has(text, a, whole_word=False) for a in alts)]
        too_long = words(answer) > rule["max_words"]
        problems = ([f"misses {', '.join(missing)}"] if missing else []) + ([f"over {rule['max_words']} words"] if too_long else [])
        return Verdict(not problems, "; ".join(problems))
    if "tests" in rule:
        failure = run_tests(extract_code(answer), rule["tests"])
        return Verdict(not failure, failure)
    raise EvalSetError(f"item {item.id} has no scoring rule")


# -- running a model over the set ------------------------------------------------


@dataclass
class ItemResult:
    id: str
    kind: str
    passed: bool
    seconds: float
    tokens: int
    detail: str
    answer: str = ""  # the model's text, cut to ANSWER_KEPT characters, to see why an item failed


@dataclass
class KindScore:
    kind: str
    items: int
    correct: int
    mean_s: float

    @property
    def rate(self) -> float:
        return self.correct / self.items if self.items else 0.0

    def as_dict(self) -> dict:
        return {"kind": self.kind, "items": self.items, "correct": self.correct, "rate": round(self.rate, 4),
                "mean_s": round(self.mean_s, 3)}


Answerer = Callable[[Item], tuple[str, float, int]]  # text, seconds to the full answer, completion tokens


class ResultLog:
    """Per-item results of a model on one version of the set, appended as they come, so an
    interrupted run resumes where it stopped."""

    def __init__(self, path: Path, digest: str, model_sha: str) -> None:
        self.path = path
        self.digest = digest
        self.model_sha = model_sha

    def done(self) -> dict[str, ItemResult]:
        out: dict[str, ItemResult] = {}
        if not self.path.exists():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
            if row.get("set") == self.digest and row.get("model_sha") == self.model_sha:
                out[row["id"]] = ItemResult(**{k: row[k] for k in ("id", "kind", "passed", "seconds", "tokens", "detail")},
                                            answer=row.get("answer", ""))
        return out

    def add(self, result: ItemResult) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"set": self.digest, "model_sha": self.model_sha} | asdict(result), ensure_ascii=False) + "\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def evaluate(items: list[Item], answer: Answerer, log: ResultLog | None = None,
             progress: Callable[[ItemResult], None] = lambda _r: None) -> list[ItemResult]:
    """Answers and scores every item, reusing results the log already holds."""
    done = log.done() if log is not None else {}
    results = []
    for item in items:
        result = done.get(item.id)
        if result is None:
            text, seconds, tokens = answer(item)
            verdict = score(item, text)
            result = ItemResult(item.id, item.kind, verdict.passed, round(seconds, 3), tokens, verdict.detail,
                                text[:ANSWER_KEPT])
            if log is not None:
                log.add(result)
        results.append(result)
        progress(result)
    return results


def by_kind(results: list[ItemResult]) -> list[KindScore]:
    out = []
    for kind in KINDS:
        rows = [r for r in results if r.kind == kind]
        if rows:
            out.append(KindScore(kind, len(rows), sum(r.passed for r in rows), sum(r.seconds for r in rows) / len(rows)))
    return out


def local_answerer(model: Any) -> Answerer:
    """Greedy answers from a loaded `models.runtime.LocalModel`, one fresh conversation per item."""
    from models.sampling import SamplingParams

    def answer(item: Item) -> tuple[str, float, int]:
        pieces: list[str] = []
        prompt = model.chat_tokens([{"role": "user", "content": item.prompt}])
        stats = model.generate(prompt, SamplingParams(max_tokens=item.max_tokens, temperature=0.0), pieces.append)
        return "".join(pieces), stats.total_s, stats.completion_tokens

    return answer


# -- the measurements in the store -------------------------------------------------


def save_scores(store: Store, model: str, scores: list[KindScore], digest: str) -> None:
    now = datetime.now(timezone.utc)
    with store.session() as s:
        for sc in scores:
            row = s.get(ModelQuality, (model, sc.kind))
            if row is None:
                row = ModelQuality(model=model, kind=sc.kind)
                s.add(row)
            row.items, row.correct, row.rate, row.mean_s = sc.items, sc.correct, sc.rate, sc.mean_s
            row.eval_set, row.measured_at = digest, now


@dataclass(frozen=True)
class Quality:
    rate: float
    items: int


def measured_quality(store: Store | None, model: str) -> dict[str, Quality]:
    """Rate of right answers per task kind for a model, as `aibox models eval` stored it."""
    if store is None:
        return {}
    with store.session() as s:
        rows = s.scalars(select(ModelQuality).where(ModelQuality.model == model)).all()
    return {r.kind: Quality(r.rate, r.items) for r in rows if r.items > 0}
