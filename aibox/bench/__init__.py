"""Benchmarks behind `aibox bench …`: figures measured side by side in one run."""
