"""Drafters: cheap guessers of the next tokens, checked losslessly by the target."""

from models.spec.drafters.base import AcceptanceTracker, Draft, Drafter, Extend

__all__ = ["AcceptanceTracker", "Draft", "Drafter", "Extend"]
