"""The routing decision: which model serves a request, and which ones stand in if it fails.

Right first, then fast. The request's task kind (fact, arithmetic, translation,
instruction, summary, code) and predicted answer length come from its text. Models whose
card rules them out for the request (code, long answers, chat) drop out; of the rest, a
model whose measured rate of right answers for this kind (`aibox models eval`, stored per
kind) is more than `quality_margin` points below the best measured one drops out too; a
model never measured for the kind is judged by its card alone. The winner is the fastest
remaining model by expected time to the full answer: load + queue wait + time to first
token + predicted tokens / decode rate. A user's explicit choice wins over everything,
then the agent's pin (both only when the model is here); `/fast` asks for the quickest
answer and so skips the quality margin, `/long` sets the length. Every decision is logged
with its reason, the features and each candidate's expected seconds and quality.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aibox.router.candidates import Candidate, CandidateSource
from aibox.router.estimator import Estimator, LengthModel
from aibox.router.fallback import Backends, FallbackStream, TokenCounter
from aibox.router.features import extract, task_kind
from aibox.usage import UsageTags
from models.catalog import ModelCard
from models.chat_template import Message
from models.files import is_present
from models.sampling import SamplingParams
from models.stream import TextStream

if TYPE_CHECKING:
    from aibox.config import Config
    from aibox.store import Store

log = logging.getLogger("aibox.router")

# A queued request ahead of ours is assumed to be a typical answer of this many tokens.
TYPICAL_QUEUED_TOKENS = 128
# Points of right answers (out of 100) a model may trail the best measured one for a kind.
DEFAULT_QUALITY_MARGIN = 5.0


@dataclass
class Decision:
    model: str
    predicted_tokens: int
    length_class: str
    task_kind: str
    reason: str
    candidates: list[Candidate]
    fallbacks: list[str]
    estimate_source: str
    features: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "predicted_tokens": self.predicted_tokens,
            "length_class": self.length_class,
            "task_kind": self.task_kind,
            "reason": self.reason,
            "candidates": [c.as_dict() for c in self.candidates],
            "fallbacks": self.fallbacks,
            "estimate_source": self.estimate_source,
            "features": self.features,
        }


def expected_seconds(c: Candidate, tokens: int) -> float:
    per_job = c.ttft_s + TYPICAL_QUEUED_TOKENS / c.tok_s
    return c.load_s + c.queue * per_job + c.ttft_s + tokens / c.tok_s


def needs(features_code: bool, length_class: str, chatty: bool) -> set[str]:
    """What the request is, in the terms cards use for `unsuitable_for`."""
    out = set()
    if features_code:
        out.add("code")
    if length_class == "long":
        out.add("long")
    if chatty:
        out.add("chat")
    return out


class Router:
    """Decides (always), and in the daemon, where `backends` is set, is the one way from the
    box to its models: routed requests with their fallback chain, and named ones."""

    def __init__(
        self, source: CandidateSource, estimator: Estimator, default_model: str, backends: Backends | None = None,
        quality_margin: float = DEFAULT_QUALITY_MARGIN,
    ) -> None:
        self.source = source
        self.estimator = estimator
        self.default_model = default_model
        self.backends = backends
        self.quality_margin = quality_margin

    @classmethod
    def for_config(cls, config: "Config", store: "Store | None" = None) -> "Router":
        """A router without a daemon (the CLI's dry run): nothing loaded, nothing queued."""
        from models.catalog import Catalog

        catalog = Catalog.load(config.state_path / "cards")
        source = CandidateSource(catalog, config.models_path, store, None, None, config.state_path, config.threads)
        return cls(source, Estimator(LengthModel.load(), store), config.default_model,
                   quality_margin=config.router.quality_margin)

    def decide(
        self,
        text: str,
        agent: str | None = None,
        sender: str | None = None,
        pinned: str | None = None,
        override: str | None = None,
        attachment_chars: int = 0,
    ) -> Decision:
        """Picks the model for one request. `pinned` is the agent's model pin, `override`
        the user's explicit choice for this message; `attachment_chars` the length of text
        attached outside the message."""
        features = extract(text, agent, attachment_chars)
        estimate = self.estimator.estimate(features, sender)
        tokens = estimate.tokens
        candidates = self.source.candidates()
        if not candidates:
            raise LookupError("no model is available on this box; run `aibox models pull NAME`")
        chatty = features.greeting or (estimate.length_class == "short" and not features.code)
        need = needs(features.code_write or (features.code and estimate.length_class != "short"), estimate.length_class, chatty)
        kind = task_kind(text, features)
        for c in candidates:
            c.expected_s = round(expected_seconds(c, tokens), 3)
            c.quality = c.quality_by_kind.get(kind)
            bad = need.intersection(c.unsuitable_for)
            if bad:
                c.excluded = f"card: unsuitable for {', '.join(sorted(bad))}"
        reason_bits = [f"{estimate.length_class} answer predicted ({tokens} tokens, {estimate.source}); task: {kind}"]
        best_quality = self._apply_quality_margin(candidates, kind, skip=features.hint == "fast")
        candidates.sort(key=lambda c: (bool(c.excluded), c.expected_s))
        names = [c.model for c in candidates]
        by_name = {c.model: c for c in candidates}

        chosen = None
        for label, wanted in (("user override", override), ("agent pin", pinned)):
            if not wanted:
                continue
            if wanted in by_name:
                chosen = wanted
                reason_bits.insert(0, f"{label}: {wanted}")
                break
            reason_bits.append(f"{label} {wanted} is not available here, routed instead")
        if chosen is None:
            best = candidates[0]
            chosen = best.model
            if best.excluded:
                reason_bits.append(f"every model is ruled out; {chosen} is the fastest anyway")
            else:
                reason_bits.append(self._why(best, kind, best_quality, features.hint == "fast"))
                for why, test in (("unsuitable by card", "card:"), ("below the quality margin", "quality:")):
                    skipped = [c.model for c in candidates
                               if c.excluded.startswith(test) and c.expected_s < best.expected_s]
                    if skipped:
                        reason_bits.append(f"faster but {why}: {', '.join(skipped)}")
        decision = Decision(
            model=chosen,
            predicted_tokens=tokens,
            length_class=estimate.length_class,
            task_kind=kind,
            reason="; ".join(reason_bits),
            candidates=candidates,
            fallbacks=[n for n in names if n != chosen],
            estimate_source=estimate.source,
            features=features.as_dict(),
        )
        log.info(
            "route",
            extra={"model": chosen, "length_class": decision.length_class, "predicted_tokens": tokens,
                   "reason": decision.reason, "features": decision.features, "sender": sender,
                   "task_kind": kind,
                   "candidates": {c.model: {"expected_s": c.expected_s, "quality": c.quality} for c in candidates}},
        )
        return decision

    def _apply_quality_margin(self, candidates: list[Candidate], kind: str, skip: bool) -> float | None:
        """Rules out the measured models more than the margin below the best measured one
        still in the running; returns that best figure (None when nothing is measured)."""
        measured = [c.quality for c in candidates if c.quality is not None and not c.excluded]
        if not measured:
            return None
        best = max(measured)
        if skip:
            return best
        for c in candidates:
            if c.quality is not None and not c.excluded and c.quality < best - self.quality_margin:
                c.excluded = (f"quality: {c.quality:.0f} points right on {kind}, more than {self.quality_margin:g} "
                              f"below the best ({best:.0f})")
        return best

    def _why(self, best: Candidate, kind: str, best_quality: float | None, fast_hint: bool) -> str:
        seconds = f"{best.expected_s:.1f} s"
        if fast_hint:
            return f"/fast: {best.model} has the lowest expected time to the full answer ({seconds}), quality not weighed"
        if best_quality is None:
            return f"{best.model} has the lowest expected time to the full answer ({seconds}); no model is measured on {kind}"
        quality = f"{best.quality:.0f} points right" if best.quality is not None else "not measured on it, card allows it"
        return (f"{best.model} is the fastest ({seconds}) of the models within {self.quality_margin:g} points of the best "
                f"measured {kind} quality ({best_quality:.0f}); {quality}")

    def serve(
        self, decision: Decision, messages: list[Message], params: SamplingParams, tags: UsageTags, notes: bool = True,
    ) -> FallbackStream:
        """The answer from the decided model, or from the next candidate when it fails;
        `notes`: the text says so (see FallbackStream)."""
        return FallbackStream(self._backends(), [decision.model, *decision.fallbacks], messages, params, tags, notes)

    async def open(self, model: str, messages: Sequence[Message], params: SamplingParams, tags: UsageTags) -> TextStream:
        """The answer from one named model, with no fallback: its failures are the caller's."""
        return await self._backends().open(model, messages, params, tags)

    async def measure(self, order: Sequence[str]) -> tuple[int, TokenCounter]:
        """Context window and token counter of the first model in `order` that can load."""
        return await self._backends().measure(order)

    def available(self, card: ModelCard) -> bool:
        """Whether the model runs here: remote, or its file is on this box."""
        return not card.is_local or is_present(card, self.source.models_dir)

    def answering_models(self) -> list[str]:
        """The models a chat may pick with /model: here, and not only a draft model."""
        return [card.name for card in self.source.catalog if self.source.available(card)]

    def fast_model(self) -> str:
        """The model for quick background work (summaries): the default model when it is a fast
        one, else the first fast one here."""
        fast = [card.name for card in self.source.catalog.with_role("fast") if self.available(card)]
        if self.default_model in fast or not fast:
            return self.default_model
        return fast[0]

    def _backends(self) -> Backends:
        if self.backends is None:
            raise RuntimeError("this router only decides; serving needs the daemon's models")
        return self.backends

    async def close(self) -> None:
        if self.backends is not None:
            await self.backends.remotes.close()
