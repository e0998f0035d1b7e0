"""Prometheus metrics of one daemon, in a registry of its own (tests run several daemons).
May import: models."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from models.stream import GenerationStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("aibox_requests", "Generation requests by model and outcome", ["model", "outcome"], registry=r)
        self.tokens = Counter("aibox_generated_tokens", "Completion tokens generated", ["model"], registry=r)
        self.prompt_tokens = Counter("aibox_prompt_tokens", "Prompt tokens, by whether the KV cache already held them", ["model", "cached"], registry=r)
        self.tok_s = Gauge("aibox_tokens_per_second", "Decode speed of the last finished generation", ["model"], registry=r)
        self.ttft = Histogram(
            "aibox_time_to_first_token_seconds",
            "Time from request to first token",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.duration = Histogram(
            "aibox_generation_seconds",
            "Time from request to last token",
            ["model"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.spec_tau = Histogram(
            "aibox_spec_tokens_per_forward",
            "Speculative decoding: accepted length tau per request (tokens per target forward, bonus included)",
            ["model"],
            buckets=(1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 12, 16),
            registry=r,
        )
        self.spec_drafted = Counter(
            "aibox_spec_drafted_tokens", "Speculative decoding: draft tokens verified, by draft position", ["model", "position"], registry=r
        )
        self.spec_accepted = Counter(
            "aibox_spec_accepted_tokens", "Speculative decoding: draft tokens accepted, by draft position", ["model", "position"], registry=r
        )
        self.spec_draft_s = Counter("aibox_spec_draft_seconds", "Speculative decoding: time spent drafting", ["model"], registry=r)
        self.spec_verify_s = Counter("aibox_spec_verify_seconds", "Speculative decoding: time spent in target verify steps", ["model"], registry=r)

    def observe(self, model: str, stats: GenerationStats) -> None:
        self.requests.labels(model, stats.finish_reason).inc()
        self.tokens.labels(model).inc(stats.completion_tokens)
        self.prompt_tokens.labels(model, "true").inc(stats.cached_tokens)
        self.prompt_tokens.labels(model, "false").inc(stats.prefilled_tokens)
        if stats.tokens_per_s:
            self.tok_s.labels(model).set(stats.tokens_per_s)
        if stats.ttft_s is not None:
            self.ttft.labels(model).observe(stats.ttft_s)
        self.duration.labels(model).observe(stats.total_s)
        spec = stats.extra.get("speculative")
        if spec:
            self.observe_speculation(model, spec)

    def observe_speculation(self, model: str, spec: dict) -> None:
        """Per-request figures from models.speculative (SpecStats.as_dict())."""
        if spec["steps"]:
            self.spec_tau.labels(model).observe(spec["tau"])
        for position, drafted in enumerate(spec["position_drafted"]):
            self.spec_drafted.labels(model, str(position + 1)).inc(drafted)
            self.spec_accepted.labels(model, str(position + 1)).inc(spec["position_accepted"][position])
        self.spec_draft_s.labels(model).inc(spec["draft_ms"] / 1000)
        self.spec_verify_s.labels(model).inc(spec["verify_ms"] / 1000)

    def add_live_gauges(self, queue_depths: Callable[[], dict[str, int]]) -> None:
        """Queue depth and loaded models are read at scrape time, never stale."""

        class _Live:
            def collect(self):
                depths = queue_depths()
                depth = GaugeMetricFamily("aibox_queue_depth", "Requests waiting or running per model", labels=["model"])
                loaded = GaugeMetricFamily("aibox_model_loaded", "1 for each model held in memory", labels=["model"])
                for name, d in depths.items():
                    depth.add_metric([name], d)
                    loaded.add_metric([name], 1)
                yield depth
                yield loaded

        self.registry.register(_Live())

    def render(self) -> bytes:
        return generate_latest(self.registry)
