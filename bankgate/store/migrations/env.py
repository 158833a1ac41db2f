from alembic import context

from bankgate.store.migrations import VERSION_TABLE
from bankgate.store.model import metadata

conn = context.config.attributes.get("connection")
if conn is not None:
    context.configure(connection=conn, target_metadata=metadata, version_table=VERSION_TABLE)
else:  # offline: the SQL for a dialect, for a DBA (bankgate.store.migrations.offline_sql)
    context.configure(
        dialect_name=context.config.attributes["dialect_name"],
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        as_sql=True,
        output_buffer=context.config.attributes["buffer"],
    )
with context.begin_transaction():
    context.run_migrations()
