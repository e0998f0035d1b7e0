"""The models a request could go to, each with what it costs in seconds right now.

Speed is measured, never assumed from a datasheet: decode tokens/s and time to first
token are the medians of this box's recent generations of that model (the `generations`
table, which also holds what the speculative engine achieved when it served them), with
the live worker's last rate when the table has nothing yet; a model never run here gets
a prior scaled from its file size, marked as such in the reason. Queue depth comes from
the pool (local) or the remote client (offloaded), and a model not in memory pays its
load time. Quality is measured too: the rate of right answers per task kind that `aibox
models eval` stored (aibox.router.quality); the card's `unsuitable_for` rules a model out
whether or not it was measured.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from aibox.router.quality import measured_quality
from aibox.store import Store
from aibox.store.schema import Generation
from models.catalog import Catalog, ModelCard
from models.files import is_present

if TYPE_CHECKING:
    from models.pool import ModelPool
    from models.remote import RemoteModels

SPEED_WINDOW = 30
# Priors for a model never run on this box, from the measurements on a 2-core CPU in
# shared/reference/hardware.md (Qwen 1.5B Q4_K_M, 1.1 GB: 40 tok/s; SmolLM2 135M: about
# 140 tok/s): decoding reads the whole file once per token, so tokens/s scales with
# 1 / size until fixed per-token costs take over.
PRIOR_BYTES_PER_S = 4.4e10
PRIOR_MAX_TOK_S = 140.0
# Prefill of a short prompt costs about 0.3 s per GB of weights here.
PRIOR_TTFT_S_PER_GB = 0.3
MIN_TTFT_S = 0.05
PRIOR_REMOTE_TOK_S = 50.0
PRIOR_REMOTE_TTFT_S = 1.0
LOAD_BYTES_PER_S = 1.0e9


@dataclass
class Speed:
    tok_s: float
    ttft_s: float
    source: str  # "measured (N runs)", "live worker", "prior"
    accelerated: str = ""  # what the speculative profile says for this model here, if there is one


@dataclass
class Candidate:
    model: str
    remote: bool
    tok_s: float
    ttft_s: float
    queue: int
    load_s: float
    speed_source: str
    unsuitable_for: list[str]
    roles: list[str]
    accelerated: str = ""
    quality_by_kind: dict[str, float] = field(default_factory=dict)  # measured right answers, 0-100 points
    quality_items: dict[str, int] = field(default_factory=dict)  # items each figure was measured on
    expected_s: float = 0.0
    quality: float | None = None  # measured points for this request's kind; None: not measured, the card decides
    excluded: str = ""  # why the router will not use it for this request

    def as_dict(self) -> dict:
        return asdict(self)


def measured_speed(store: Store | None, model: str) -> Speed | None:
    """Median decode rate and TTFT of the model's recent generations on this box."""
    if store is None:
        return None
    query = (
        select(Generation.completion_tokens, Generation.ttft_ms, Generation.total_ms)
        .where(Generation.model == model, Generation.completion_tokens > 8, Generation.ttft_ms.is_not(None))
        .order_by(Generation.id.desc())
        .limit(SPEED_WINDOW)
    )
    with store.session() as s:
        rows = s.execute(query).all()
    rates = [(n - 1) / ((total - ttft) / 1000) for n, ttft, total in rows if total > ttft]
    if not rates:
        return None
    return Speed(statistics.median(rates), statistics.median(r[1] for r in rows) / 1000, f"measured ({len(rates)} runs)")


def prior_speed(card: ModelCard) -> Speed:
    if not card.is_local:
        return Speed(PRIOR_REMOTE_TOK_S, PRIOR_REMOTE_TTFT_S, "prior (remote, not measured yet)")
    size = card.size or 1e9
    ttft = max(MIN_TTFT_S, PRIOR_TTFT_S_PER_GB * size / 1e9)
    return Speed(min(PRIOR_MAX_TOK_S, PRIOR_BYTES_PER_S / size), ttft, "prior (from file size, not measured yet)")


def acceleration_note(state_dir: Path | None, card: ModelCard, threads: int) -> str:
    """What the speculative engine's profile for this model on this machine says, if it exists."""
    if state_dir is None or not card.is_local or not card.draft_models:
        return ""
    try:
        from models.speculative.profile import load_profile, machine_info
        from models.speculative.scheduler import Scheduler
    except ImportError:
        return ""
    try:
        profile = load_profile(state_dir, card.name, machine_info(threads))
    except ValueError as e:
        return f"speculation profile unreadable: {e}"
    if profile is None:
        return ""
    assessment = Scheduler(profile).assess()
    state = "on" if assessment.pays else "off"
    return f"speculation {state}: {assessment.reason}"


class CandidateSource:
    """Builds the candidate list from the catalog, the store, the pool and the remotes.

    Works without a pool (the CLI's dry run without a daemon): then nothing is loaded or
    queued and every local model pays its load time."""

    def __init__(
        self,
        catalog: Catalog,
        models_dir: Path,
        store: Store | None = None,
        pool: "ModelPool | None" = None,
        remotes: "RemoteModels | None" = None,
        state_dir: Path | None = None,
        threads: int = 1,
    ) -> None:
        self.catalog = catalog
        self.models_dir = models_dir
        self.store = store
        self.pool = pool
        self.remotes = remotes
        self.state_dir = state_dir
        self.threads = threads
        self._accel: dict[str, str] = {}

    def available(self, card: ModelCard) -> bool:
        """Remote models, and local ones whose file is here; a model that only drafts is no candidate."""
        if card.roles == ["draft"]:
            return False
        return not card.is_local or is_present(card, self.models_dir)

    def speed(self, card: ModelCard) -> Speed:
        measured = measured_speed(self.store, card.name)
        if measured is None and card.is_local and self.pool is not None:
            worker = self.pool.loaded.get(card.name)
            if worker is not None and worker.recent_tok_s > 0:
                measured = Speed(worker.recent_tok_s, prior_speed(card).ttft_s, "live worker")
        if measured is None and not card.is_local and self.remotes is not None:
            remote = self.remotes.measured(card.name)
            if remote is not None:
                measured = Speed(remote.tok_s, remote.ttft_s, f"measured here ({remote.runs} runs)")
        speed = measured or prior_speed(card)
        if card.name not in self._accel:
            self._accel[card.name] = acceleration_note(self.state_dir, card, self.threads)
        speed.accelerated = self._accel[card.name]
        return speed

    def queue_and_load(self, card: ModelCard) -> tuple[int, float]:
        if not card.is_local:
            return (self.remotes.in_flight(card.name) if self.remotes is not None else 0), 0.0
        worker = self.pool.loaded.get(card.name) if self.pool is not None else None
        if worker is not None:
            return worker.depth, 0.0
        return 0, (card.size or 1e9) / LOAD_BYTES_PER_S

    def candidates(self) -> list[Candidate]:
        out = []
        for card in self.catalog:
            if not self.available(card):
                continue
            speed = self.speed(card)
            queue, load_s = self.queue_and_load(card)
            quality = measured_quality(self.store, card.name)
            out.append(Candidate(
                model=card.name, remote=not card.is_local, tok_s=speed.tok_s, ttft_s=speed.ttft_s, queue=queue,
                load_s=load_s, speed_source=speed.source, unsuitable_for=list(card.unsuitable_for),
                roles=list(card.roles), accelerated=speed.accelerated,
                quality_by_kind={k: round(100 * q.rate, 1) for k, q in quality.items()},
                quality_items={k: q.items for k, q in quality.items()},
            ))
        return out
