"""The `aibox` command line."""
