"""The box's database: SQLAlchemy 2.x over SQLite (WAL) by default, any SQLAlchemy URL accepted.
Each room keeps its own tables (agents/tables.py, connectors/tables.py) on the one `Base`.
May import: nothing of the box (the tables import it, never the other way)."""

from aibox.store.db import Store
from aibox.store.schema import Base

__all__ = ["Base", "Store"]
