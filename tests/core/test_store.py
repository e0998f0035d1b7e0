"""The store: Alembic migrations on start, on SQLite (WAL) and on a real PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect, select, text

from aibox.store import Store
from aibox.store.schema import Generation


def _roundtrip(store: Store) -> None:
    with store.session() as s:
        s.add(Generation(model="m", source="test", prompt_tokens=3, cached_tokens=1, completion_tokens=5, total_ms=12.5, finish_reason="stop"))
    with store.session() as s:
        row = s.scalars(select(Generation).where(Generation.source == "test")).one()
        assert (row.model, row.completion_tokens, row.total_ms) == ("m", 5, 12.5)
        assert row.created_at is not None


def test_sqlite_store_migrates_and_uses_wal(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'state' / 'aibox.db'}")
    try:
        tables = set(inspect(store.engine).get_table_names())
        assert {"generations", "alembic_version"} <= tables
        with store.engine.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        _roundtrip(store)
    finally:
        store.close()
    again = Store.open(f"sqlite:///{tmp_path / 'state' / 'aibox.db'}")  # migrations are idempotent
    again.close()


def test_postgresql_store_migrates_and_works(postgres_url):
    store = Store.open(postgres_url)
    try:
        assert "generations" in inspect(store.engine).get_table_names()
        _roundtrip(store)
        with store.engine.connect() as c:
            heads = c.execute(text("SELECT count(*) FROM alembic_version")).scalar()
        assert heads >= 1
    finally:
        store.close()
