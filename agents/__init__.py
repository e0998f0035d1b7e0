"""Agents: their definitions, sessions and memory, tools, scheduled jobs, long answers, and the runner that answers each message through the router.
May import: aibox.router, aibox.usage, aibox.config, aibox.secrets, aibox.store, models, connectors.base, connectors.policy, connectors.inbox."""
