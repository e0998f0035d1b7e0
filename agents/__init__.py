"""Agents: personas with memory, tools and scheduled jobs."""
