"""A real box for agent tests: one agent file of the test's own, the real runner and
models from the shared cache, through `Daemon.build` as `aibox run` does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from agents.runner import AgentRunner
from aibox.config import parse_config
from aibox.daemon import Daemon
from aibox.store import Store

RealBox = Callable[..., AbstractAsyncContextManager[AgentRunner]]


@pytest.fixture
def real_box(tmp_path: Path, models_dir: Path) -> RealBox:
    @asynccontextmanager
    async def box(name: str, agent_toml: str, **config: object) -> AsyncIterator[AgentRunner]:
        state = tmp_path / "box"
        (state / "agents").mkdir(parents=True)
        (state / "agents" / f"{name}.toml").write_text(agent_toml)
        daemon = Daemon(parse_config({"state_dir": str(state), "models_dir": str(models_dir),
                                      "agents": {"default_agent": name}, **config}))
        store = Store.open(daemon.config.store_url)
        try:
            yield daemon.build(store).runner
        finally:
            await daemon.pool.close()
            store.close()

    return box
