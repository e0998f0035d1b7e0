"""The box's database: SQLAlchemy 2.x over SQLite (WAL) by default, any SQLAlchemy URL accepted."""

from aibox.store.db import Store
from aibox.store.schema import Base

__all__ = ["Base", "Store"]
import connectors.tables  # noqa: E402,F401  (registers the connectors tables on Base)
import agents.tables  # noqa: E402,F401  (registers the agents tables on Base)
