"""The routing decision: which model serves a request, and which ones stand in if it fails.

The rule is the expected time to the full answer, load + queue wait + time to first
token + predicted tokens / decode rate, minimised over the models whose cards do not
rule them out for this kind of request (code, long answers, chat). A user's explicit
choice wins over everything, then the agent's pin; both only when the model is here.
Every decision is logged with its reason and the features it was made from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aibox.router.candidates import Candidate, CandidateSource
from aibox.router.estimator import Estimator, LengthModel
from aibox.router.fallback import Backends, FallbackStream, TokenCounter
from aibox.router.features import extract
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


@dataclass
class Decision:
    model: str
    predicted_tokens: int
    length_class: str
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
        self, source: CandidateSource, estimator: Estimator, default_model: str, backends: Backends | None = None
    ) -> None:
        self.source = source
        self.estimator = estimator
        self.default_model = default_model
        self.backends = backends

    @classmethod
    def for_config(cls, config: "Config", store: "Store | None" = None) -> "Router":
        """A router without a daemon (the CLI's dry run): nothing loaded, nothing queued."""
        from models.catalog import Catalog

        catalog = Catalog.load(config.state_path / "cards")
        source = CandidateSource(catalog, config.models_path, store, None, None, config.state_path, config.threads)
        return cls(source, Estimator(LengthModel.load(), store), config.default_model)

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
        for c in candidates:
            c.expected_s = round(expected_seconds(c, tokens), 3)
            bad = need.intersection(c.unsuitable_for)
            if bad:
                c.excluded = f"card: unsuitable for {', '.join(sorted(bad))}"
        candidates.sort(key=lambda c: (bool(c.excluded), c.expected_s))
        names = [c.model for c in candidates]
        by_name = {c.model: c for c in candidates}
        reason_bits = [f"{estimate.length_class} answer predicted ({tokens} tokens, {estimate.source})"]

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
                reason_bits.append(f"every model's card rules it out; {chosen} is the fastest anyway")
            else:
                reason_bits.append(f"{chosen} has the lowest expected time to the full answer ({best.expected_s:.1f} s)")
                skipped = [c.model for c in candidates if c.excluded and c.expected_s < best.expected_s]
                if skipped:
                    reason_bits.append(f"faster but unsuitable: {', '.join(skipped)}")
        decision = Decision(
            model=chosen,
            predicted_tokens=tokens,
            length_class=estimate.length_class,
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
                   "candidates": {c.model: c.expected_s for c in candidates}},
        )
        return decision

    def serve(self, decision: Decision, messages: list[Message], params: SamplingParams, tags: UsageTags) -> FallbackStream:
        """The answer from the decided model, or from the next candidate when it fails."""
        return FallbackStream(self._backends(), [decision.model, *decision.fallbacks], messages, params, tags)

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
        """The model for quick background work (summaries): the first fast one here."""
        for card in self.source.catalog.with_role("fast"):
            if self.available(card):
                return card.name
        return self.default_model

    def _backends(self) -> Backends:
        if self.backends is None:
            raise RuntimeError("this router only decides; serving needs the daemon's models")
        return self.backends

    async def close(self) -> None:
        if self.backends is not None:
            await self.backends.remotes.close()
