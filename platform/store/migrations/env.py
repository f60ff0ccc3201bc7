"""Alembic environment: the engine comes from Store (config.attributes['engine']), so the
same code migrates SQLite and PostgreSQL; `awm db upgrade` is the user-facing command."""

from alembic import context

from awm_platform.store.models import Base
from awm_platform.store.store import _make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        engine = _make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():  # pragma: no cover - we never generate offline SQL
    raise RuntimeError("offline migrations are not supported; use `awm db upgrade`")
run_migrations_online()
