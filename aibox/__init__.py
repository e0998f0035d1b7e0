"""AIBox: the daemon, its config, store, HTTP API and admin CLI."""

__version__ = "0.1.0"
