"""Benchmarks behind `aibox bench …`: figures measured side by side in one run.
May import: aibox.config, aibox.process, aibox.router, aibox.secrets, aibox.store, connectors, models."""
