"""The router: which model answers each request, with fallback, background long jobs and
remote offload. See decide.py for the rule."""

from aibox.router.decide import Decision, Router

__all__ = ["Decision", "Router"]
