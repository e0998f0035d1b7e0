"""Alembic environment: the daemon passes its open connection in `config.attributes`.
Every room's tables are imported here so that `Base.metadata` knows them all.
May import: aibox.store, agents.tables, connectors.tables."""

from alembic import context

import agents.tables  # noqa: F401  (registers the agents' tables on Base)
import connectors.tables  # noqa: F401  (registers the connectors' tables on Base)
from aibox.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
