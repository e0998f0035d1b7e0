"""The router: which model answers each request, served with its fallback chain over the local pool or a remote server (the one way from the box to its models). See decide.py for the rule.
May import: aibox.config, aibox.store, aibox.usage, models."""

from aibox.router.decide import Decision, Router

__all__ = ["Decision", "Router"]
