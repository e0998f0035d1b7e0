"""HTTP surfaces of the daemon: the OpenAI-compatible API (TCP) and the admin API (UNIX socket)."""
