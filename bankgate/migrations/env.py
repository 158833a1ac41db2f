from alembic import context

from bankgate.migrations import VERSION_TABLE
from bankgate.store.model import metadata

conn = context.config.attributes.get("connection")
if conn is None:
    raise RuntimeError("bankgate migrations run through bankgate.migrations.upgrade()")
context.configure(connection=conn, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
