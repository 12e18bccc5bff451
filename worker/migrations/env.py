"""Alembic environment: the database URL comes from newsworker's settings
(or the ``sqlalchemy.url`` passed in by ``newsworker db upgrade``)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from worker import models  # noqa: F401  (registers the tables)
from worker.db import get_engine

config = context.config
target_metadata = SQLModel.metadata


def render_item(type_: str, obj, autogen_context):  # noqa: ANN001
    # Migrations name plain SQL types, not our Python-side wrappers.
    if type_ == "type" and isinstance(obj, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and type(obj).__name__ == "AutoString":
        return "sa.Text()"
    return False


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, render_item=render_item)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = get_engine(config.get_main_option("sqlalchemy.url") or None)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, render_item=render_item, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
