"""AIBox: the daemon that builds the parts (daemon.py), its config, secrets, store, usage log, HTTP and admin APIs, router, operations, benchmarks and CLI.
May import: anything (only aibox.cli imports aibox.daemon)."""

__version__ = "0.1.0"
