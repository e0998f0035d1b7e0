"""Secrets: API keys and bot tokens, resolved late and never shown in clear.

A secret in the config is written as one of:
  "env:NAME"          read from the environment variable NAME
  "file:/path"        read from a file (first line, stripped)
  "credential:NAME"   read from systemd's $CREDENTIALS_DIRECTORY/NAME (LoadCredential=)
  anything else       the literal value (discouraged: `aibox security audit` flags it)

Every resolved value is registered with `redact`, which the log formatter applies, so a
token that reaches a log line by any path comes out as "***".
May import: nothing of the box.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

_known: set[str] = set()
_lock = threading.Lock()
MASK = "***"


class SecretError(Exception):
    """A secret reference cannot be resolved; the message names the reference, not the value."""


class Secret:
    """A reference to a secret; `str()` and `repr()` never show the value."""

    def __init__(self, ref: str) -> None:
        self.ref = ref

    @property
    def kind(self) -> str:
        head, sep, _ = self.ref.partition(":")
        return head if sep and head in ("env", "file", "credential") else "literal"

    def get(self) -> str:
        kind = self.kind
        rest = self.ref.partition(":")[2]
        if kind == "env":
            value = os.environ.get(rest)
            if value is None:
                raise SecretError(f"environment variable {rest} is not set")
        elif kind in ("file", "credential"):
            if kind == "credential":
                base = os.environ.get("CREDENTIALS_DIRECTORY")
                if not base:
                    raise SecretError(f"credential {rest}: CREDENTIALS_DIRECTORY is not set")
                path = Path(base) / rest
            else:
                path = Path(rest).expanduser()
            try:
                value = path.read_text(encoding="utf-8").splitlines()[0].strip() if path.stat().st_size else ""
            except OSError as e:
                raise SecretError(f"secret file {path}: {e.strerror}") from None
        else:
            value = self.ref
        if not value:
            raise SecretError(f"secret {self.describe()} is empty")
        register(value)
        return value

    def describe(self) -> str:
        """A safe description for messages: the reference, or 'literal value'."""
        return "literal value" if self.kind == "literal" else self.ref

    def __repr__(self) -> str:
        return f"Secret({self.describe()!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            lambda v: v if isinstance(v, Secret) else Secret(v),
            core_schema.union_schema([core_schema.is_instance_schema(cls), core_schema.str_schema(min_length=1)]),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda s: s.describe()),
        )


def register(value: str) -> None:
    """Marks a value as secret so that `redact` hides it everywhere from now on, also in
    the escaped forms it takes inside JSON text and a repr()."""
    if len(value) >= 4:
        forms = {value, json.dumps(value)[1:-1], repr(value)[1:-1]}
        with _lock:
            _known.update(forms)


def redact(text: str) -> str:
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    return text


_SECRET_KEYS = ("token", "secret", "password", "api_key", "apikey", "key")


def config_secrets(api_key: Secret | None, connectors: dict[str, Any]) -> list[tuple[str, Secret]]:
    """Every secret a config refers to, by dotted key: the API key, and in the free-form
    connector sections any value written as a reference or held under a secret-like key."""
    found: list[tuple[str, Secret]] = [("api.api_key", api_key)] if api_key is not None else []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(value, str) and value:
            secret = Secret(value)
            leaf = prefix.rsplit(".", 1)[-1].lower()
            if secret.kind != "literal" or leaf.endswith(_SECRET_KEYS):
                found.append((prefix, secret))

    walk("connectors", connectors)
    return found
