"""Speculative generation inside the runtime, switched on per model only where it pays.

The pool attaches an `Accelerator` to a loaded `LocalModel` when this machine's cached
SPS(B) profile for that model says drafts can beat plain decoding. The first time a model
loads on a machine (or a llama.cpp build) the pool measures a quick profile on the model's own
context (`profile_on_load`: seconds, before its worker takes any job, so nothing else decodes
on it meanwhile); `aibox models profile NAME` re-measures the full one. It then runs the model's generations through the engine with the
`auto` drafter on the model's own llama.cpp context, so KV reuse and saved chat states keep
working. Output is unchanged, token for token (greedy requests; see `applies`).

Where the model's card names a trained DSpark drafter, `auto` may ask it too, if the
acceptance `aibox draft eval` recorded for it could beat plain decoding on this machine's
profile even with drafting for free; otherwise it is not loaded (torch and the target's
dequantized embedding cost hundreds of MB). It reads the target's hidden states, which make
every prefill compute logits for every prompt row, so the context returns them only for
requests where DSpark is still worth asking (its measured payoff, see
`models.speculative.drafters.auto`), and plain requests never pay for them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from models.catalog import Catalog, ModelCard
from models.dspark.registry import dspark_checkpoint, recorded_acceptance
from models.files import is_present, model_path
from models.runtime import LocalModel, PieceDecoder
from models.sampling import SamplingParams
from models.speculative.drafters.auto import AutoDrafter
from models.speculative.drafters.base import Drafter
from models.speculative.drafters.draft_model import DraftModelDrafter
from models.speculative.drafters.prompt_lookup import PromptLookupDrafter
from models.speculative.engine import SpecEngine
from models.speculative.metrics import SpecStats
from models.speculative.profile import QUICK_BATCH_SIZES, QUICK_REPEATS, SpsProfile, load_profile, machine_info, measure, save_profile
from models.speculative.scheduler import MIN_GAIN, Assessment, Scheduler
from models.speculative.target import LlamaTarget
from models.stream import GenerationStats

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What `aibox models info` shows and what the pool acts on."""

    profile: SpsProfile | None
    drafters: list[str]
    assessment: Assessment | None
    draft_model: str | None
    reason: str
    dspark: bool = False

    @property
    def pays(self) -> bool:
        return self.assessment is not None and self.assessment.pays


def available_drafters(card: ModelCard, catalog: Catalog, models_dir: Path) -> list[str]:
    """Drafters this model can use on this box (a draft model only if its file is here)."""
    names = ["prompt_lookup"]
    for name in card.draft_models:
        if name in catalog and is_present(catalog.get(name), models_dir):
            names.append(f"draft_model:{name}")
    if dspark_checkpoint(card) is not None:
        names.append("dspark")
    return names


def plan(card: ModelCard, catalog: Catalog, models_dir: Path, state_dir: Path, threads: int) -> Plan:
    """Decide from the cached profiles whether speculation pays for this model here."""
    drafters = available_drafters(card, catalog, models_dir)
    info = machine_info(threads)
    profile = load_profile(state_dir, card.name, info)
    if profile is None:
        return Plan(None, drafters, None, None, "no profile measured on this machine yet: the daemon measures one the first time "
                    f"it loads the model, or run `aibox models profile {card.name}`")
    scheduler = Scheduler(profile)
    assessment = scheduler.assess(0.0)
    draft_model = None
    for name in drafters:
        if not name.startswith("draft_model:"):
            continue
        draft_name = name.split(":", 1)[1]
        draft_profile = load_profile(state_dir, draft_name, info)
        if draft_profile is None:
            continue
        cost = draft_profile.step_seconds(1)
        if scheduler.assess(cost).pays:
            draft_model = draft_name
    reason = f"prompt lookup {assessment.reason}"
    if draft_model:
        reason += f"; draft model {draft_model} can pay too"
    elif any(d.startswith("draft_model:") for d in drafters):
        reason += "; a draft model costs too much per token here (or has no profile)"
    dspark = False
    if "dspark" in drafters and assessment.pays:
        dspark, why = dspark_can_pay(scheduler, dspark_checkpoint(card))
        reason += f"; DSpark {why}"
    return Plan(profile, drafters, assessment, draft_model, reason, dspark)


def profile_on_load(model: LocalModel, state_dir: Path, threads: int) -> SpsProfile:
    """This machine's profile for a model just loaded: the cached one, else a quick one measured
    now on the model's own context (which it leaves empty) and cached. Must run before the
    model's worker takes jobs: the timings need the context to themselves."""
    info = machine_info(threads)
    cached = load_profile(state_dir, model.card.name, info)
    if cached is not None:
        log.info("speculation profile cached", extra={"model": model.card.name, "quick": cached.quick})
        return cached
    start = time.perf_counter()
    profile = measure(LlamaTarget(model.llm), model.card.name, info, batch_sizes=QUICK_BATCH_SIZES,
                      repeats=QUICK_REPEATS, context=32, quick=True)
    model._kv = []  # the measurement rolled the context back to empty
    path = save_profile(state_dir, profile)
    log.info("speculation profile measured", extra={"model": model.card.name, "seconds": round(time.perf_counter() - start, 2),
                                                    "batch_sizes": profile.batch_sizes, "exact_batch": profile.exact_batch,
                                                    "path": str(path)})
    return profile


def dspark_can_pay(scheduler: Scheduler, checkpoint: Path | None) -> tuple[bool, str]:
    """Could drafts kept as often as the recorded evaluation found beat plain decoding here,
    if drafting cost nothing? If not, the drafter is not worth its memory on this machine."""
    survival = recorded_acceptance(checkpoint) if checkpoint else None
    if not survival:
        return True, "has no recorded evaluation; asked while the time it saves, measured as it runs, stays positive"
    plain = scheduler.rate([], 0.0)
    n = min(len(survival), scheduler.max_draft)
    best = max((scheduler.rate(survival[:k], 0.0) / plain for k in range(1, n + 1)), default=0.0)
    tau = 1.0 + sum(survival)
    if best <= MIN_GAIN:
        return False, f"not loaded: at its recorded acceptance (τ {tau:.2f}) it could not beat plain decoding here ({best:.2f}x with free drafting)"
    return True, (f"can pay at its recorded acceptance (τ {tau:.2f}; up to {best:.2f}x with free drafting); "
                  "asked while the time it saves, measured as it runs, stays positive")


class Accelerator:
    def __init__(self, model: LocalModel, scheduler: Scheduler, drafters: list[Drafter]) -> None:
        self.scheduler = scheduler
        self.drafter = AutoDrafter(scheduler, drafters)
        self.target = LlamaTarget(model.llm, layers=self.drafter.hidden_layers)
        if self.drafter.hidden_layers:  # the capture comes with a fresh context: nothing is cached
            model._kv = []
        self.last: SpecStats | None = None

    @classmethod
    def for_model(
        cls, model: LocalModel, catalog: Catalog, models_dir: Path, state_dir: Path, threads: int
    ) -> "Accelerator | None":
        decision = plan(model.card, catalog, models_dir, state_dir, threads)
        if not decision.pays:
            log.info("speculative decoding off", extra={"model": model.card.name, "reason": decision.reason})
            return None
        drafters: list[Drafter] = [PromptLookupDrafter()]
        if decision.draft_model:
            draft_card = catalog.get(decision.draft_model)
            drafters.append(DraftModelDrafter.load(model_path(draft_card, models_dir), n_ctx=model.n_ctx, threads=threads))
        if decision.dspark:
            from models.dspark.drafter import dspark_for_card  # torch: imported only where DSpark is loaded

            try:
                dspark = dspark_for_card(model.card, model_path(model.card, models_dir))
            except (OSError, ValueError) as e:  # a damaged checkpoint costs the drafter, not the model
                log.warning("DSpark drafter not loaded", extra={"model": model.card.name, "error": str(e)})
            else:
                if dspark is not None:
                    drafters.append(dspark)
        log.info("speculative decoding on", extra={"model": model.card.name, "reason": decision.reason})
        return cls(model, Scheduler(decision.profile), drafters)

    @staticmethod
    def applies(params: SamplingParams) -> bool:
        """Greedy requests without a grammar or penalties. Those need llama.cpp's
        sampler; sampled requests stay there too, because the engine's numpy sampling over a
        150k vocabulary costs about 2.5 ms a token on this 2-core box, more than drafts win
        back here (the engine itself is exact at any temperature)."""
        return not params.grammar and params.greedy and not params.penalized

    def generate(
        self,
        model: LocalModel,
        prompt: list[int],
        params: SamplingParams,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> GenerationStats:
        """`LocalModel.generate` with the token loop replaced by the speculative engine."""
        model.check_fits(prompt)
        start = time.perf_counter()
        stats = GenerationStats(prompt_tokens=len(prompt))
        stats.cached_tokens = model.prepare(prompt)
        max_tokens = max(0, min(params.max_tokens, model.n_ctx - len(prompt)))
        spec = SpecStats()
        text = PieceDecoder(params.stop, on_text)
        stats.finish_reason = "stop"
        hidden = self.drafter.wants_hidden()
        self.drafter.uses_hidden = hidden
        self.target.set_hidden(hidden)
        tokens = None
        try:
            tokens = SpecEngine(self.target, self.drafter, self.scheduler).generate(prompt, max_tokens, params, spec)
            for token in tokens:
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - start
                stats.completion_tokens += 1
                if text.push(model._piece_bytes(token)):
                    break
                if cancelled():
                    stats.finish_reason = "cancelled"
                    break
            else:
                if stats.completion_tokens >= max_tokens:
                    stats.finish_reason = "length"
        finally:
            if tokens is not None:
                tokens.close()
            self.target.set_hidden(False)
            model._kv = self.target.tokens
        text.flush()
        stats.total_s = time.perf_counter() - start
        stats.extra["speculative"] = spec.as_dict()
        self.last = spec
        return stats

    def close(self) -> None:
        for d in self.drafter.drafters:
            if isinstance(d, DraftModelDrafter):
                d.model.llm.close()
