"""The remote backend against a real OpenAI-compatible server on loopback:
llama-cpp-python's own `python -m llama_cpp.server` serving the real SmolLM2 file.
Covers streaming, the API key, refusals, and the server dying mid-answer (SIGKILL),
where the fallback chain must finish the answer on a local model without hanging."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from sqlalchemy import select

from aibox.router.fallback import AllModelsFailed, Backends, FallbackStream
from aibox.store import Store
from aibox.store.schema import Generation
from aibox.usage import UsageLog, UsageTags
from models.catalog import Catalog, ModelCard
from models.pool import ModelPool, PoolSettings
from models.remote import RemoteError, RemoteModel, RemoteModels
from models.sampling import SamplingParams

KEY = "test-key-5b1f0c"
ASK = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model_path, port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
         "--port", str(port), "--api_key", KEY, "--n_ctx", "2048", "--n_threads", "1", "--model_alias", "smol"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("llama_cpp.server did not start in 180 s")


@pytest.fixture
def server(smollm2_path, tmp_path):
    port = _free_port()
    with open(tmp_path / "server.log", "wb") as log:
        proc = _start_server(smollm2_path, port, log)
    yield proc, f"http://127.0.0.1:{port}/v1"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _card(base_url: str, key: str | None = KEY, name: str = "cluster-smol") -> ModelCard:
    remote = {"base_url": base_url, "model": "smol"} | ({"api_key": key} if key else {})
    return ModelCard.model_validate({"name": name, "roles": ["long"], "remote": remote})


def _catalog_with(tmp_path, card: ModelCard) -> Catalog:
    cards = tmp_path / "cards"
    cards.mkdir(exist_ok=True)
    r = card.remote
    key = f'api_key = "{r.api_key.ref}"\n' if r.api_key else ""
    (cards / f"{card.name}.toml").write_text(
        f'name = "{card.name}"\nroles = ["long"]\n[remote]\nbase_url = "{r.base_url}"\nmodel = "{r.model}"\n{key}'
    )
    return Catalog.load(cards)


async def test_streams_an_answer_with_stats_and_measured_speed(server):
    _, url = server
    model = RemoteModel(_card(url))
    try:
        stream = await model.stream(ASK, SamplingParams(max_tokens=24, temperature=0))
        assert model.in_flight == 1
        text = await stream.text()
        assert text.strip()
        assert stream.stats is not None and 0 < stream.stats.completion_tokens <= 24
        assert stream.stats.ttft_s is not None and stream.stats.ttft_s > 0
        assert model.in_flight == 0
        assert model.measured() is not None and model.measured().runs == 1
    finally:
        await model.close()


async def test_wrong_key_and_no_server_are_clear_errors_without_the_key(server):
    _, url = server
    model = RemoteModel(_card(url, key="wrong-secret-value"))
    try:
        with pytest.raises(RemoteError) as err:
            await model.stream(ASK, SamplingParams(max_tokens=4))
        assert "HTTP 401" in str(err.value) and "wrong-secret-value" not in str(err.value)
    finally:
        await model.close()
    gone = RemoteModel(_card(f"http://127.0.0.1:{_free_port()}/v1"))
    try:
        with pytest.raises(RemoteError, match="cannot reach"):
            await gone.stream(ASK, SamplingParams(max_tokens=4))
        assert gone.in_flight == 0
    finally:
        await gone.close()


async def test_server_killed_mid_answer_falls_back_to_a_local_model(server, tmp_path, models_dir):
    proc, url = server
    catalog = _catalog_with(tmp_path, _card(url))
    pool = ModelPool(catalog, PoolSettings(models_dir=models_dir, threads=1, n_ctx=2048))
    remotes = RemoteModels(catalog, read_timeout_s=120)  # a loaded shared CPU can take long to prefill
    store = Store.open(f"sqlite:///{tmp_path / 'aibox.db'}")
    usage = UsageLog(store)
    stream = FallbackStream(Backends(catalog, pool, remotes, usage), ["cluster-smol", "smollm2-135m-instruct"], ASK,
                            SamplingParams(max_tokens=200, temperature=0), UsageTags("api"))
    pieces: list[str] = []

    async def consume() -> None:
        async for piece in stream:
            pieces.append(piece)
            if len(pieces) == 3:
                os.killpg(proc.pid, signal.SIGKILL)

    try:
        await asyncio.wait_for(consume(), timeout=240)
        text = "".join(pieces)
        assert "(cluster-smol stopped mid-answer; smollm2-135m-instruct answers in full below.)" in text
        assert text.split("answers in full below.)", 1)[1].strip()
        assert stream.model == "smollm2-135m-instruct"
        await usage.drain()
        with store.session() as s:
            served = list(s.scalars(select(Generation.model)))
        assert served == ["smollm2-135m-instruct"], "only the generation that finished is recorded"
        assert [m for m, _ in stream.failures] == ["cluster-smol"]
        assert remotes.in_flight("cluster-smol") == 0
    finally:
        await remotes.close()
        await pool.close()
        store.close()


async def test_unreachable_remote_falls_back_with_one_line_note(tmp_path, models_dir):
    catalog = _catalog_with(tmp_path, _card(f"http://127.0.0.1:{_free_port()}/v1"))
    pool = ModelPool(catalog, PoolSettings(models_dir=models_dir, threads=1, n_ctx=2048))
    remotes = RemoteModels(catalog)
    try:
        stream = FallbackStream(Backends(catalog, pool, remotes), ["cluster-smol", "smollm2-135m-instruct"],
                                [{"role": "user", "content": "hi"}], SamplingParams(max_tokens=8, temperature=0), UsageTags("api"))
        text = await stream.text()
        first, _, rest = text.partition("\n\n")
        assert first == "(cluster-smol is unreachable; answered by smollm2-135m-instruct.)"
        assert rest.strip()
        only_remote = FallbackStream(Backends(catalog, pool, remotes), ["cluster-smol"], ASK, SamplingParams(max_tokens=4), UsageTags("api"))
        with pytest.raises(AllModelsFailed, match="cluster-smol is unreachable"):
            await only_remote.text()
    finally:
        await remotes.close()
        await pool.close()
