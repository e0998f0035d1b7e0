"""Every HTTP route of the daemon: the OpenAI-compatible API (TCP, openai.py) and the admin API (UNIX socket: admin.py with pairing.py, agents.py, router.py), the box's own page under /ui/ (ui.py).
May import: aibox.config, aibox.secrets, aibox.metrics, aibox.router, aibox.usage, aibox.store, aibox.ui, agents, connectors, models (never aibox.daemon)."""
