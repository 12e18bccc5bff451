"""Schema migrations (Alembic), driven from Python so they work from an installed package."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from .db import normalise_url
from .settings import get_settings


def alembic_config(database_url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "worker:migrations")
    cfg.set_main_option("sqlalchemy.url", normalise_url(database_url or get_settings().database_url))
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
