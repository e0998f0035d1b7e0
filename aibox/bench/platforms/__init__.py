"""Local servers speaking each chat platform's documented wire protocol, used by the connector tests and `aibox bench pipeline`.
May import: nothing of the box (the standard library and third-party packages only)."""
