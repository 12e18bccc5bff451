"""adaptive polling: learned and hinted intervals, body hash, permanent redirects

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 08:10:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_COLUMNS = (
    ("permanent_failures", sa.Integer(), False, "0"),
    ("fetch_interval", sa.Integer(), True, None),
    ("hint_interval", sa.Integer(), True, None),
    ("body_sha256", sa.Text(), True, None),
    ("moved_to", sa.Text(), True, None),
    ("moved_seen", sa.Integer(), False, "0"),
)


def upgrade() -> None:
    # Plain ADD COLUMN on both dialects: no constraint, so SQLite needs no table rebuild.
    for name, type_, nullable, default in _COLUMNS:
        op.add_column("feeds", sa.Column(name, type_, nullable=nullable, server_default=default))


def downgrade() -> None:
    with op.batch_alter_table("feeds", schema=None) as batch_op:
        for name, *_ in reversed(_COLUMNS):
            batch_op.drop_column(name)
