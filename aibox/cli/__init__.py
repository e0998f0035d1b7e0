"""The `aibox` command line: one module per command group; `aibox run` starts the daemon.
May import: anything."""
