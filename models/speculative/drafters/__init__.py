"""Drafters: cheap guessers of the next tokens, checked losslessly by the target. May import: models (not aibox, agents, connectors)."""
