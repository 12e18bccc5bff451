"""raw documents, dead letters, task deliveries, rejected entries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 07:30:00
"""
from contextlib import contextmanager
from typing import Iterator, Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('raw_documents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('sha256', sa.Text(), nullable=False),
    sa.Column('content_type', sa.Text(), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_raw_documents')),
    sa.UniqueConstraint('sha256', name=op.f('uq_raw_documents_sha256'))
    )
    op.create_index(op.f('ix_raw_documents_fetched_at'), 'raw_documents', ['fetched_at'], unique=False)
    op.create_table('dead_letters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Text(), nullable=False),
    sa.Column('task_name', sa.Text(), nullable=False),
    sa.Column('args', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters'))
    )
    op.create_index(op.f('ix_dead_letters_task_id'), 'dead_letters', ['task_id'], unique=False)
    op.create_index(op.f('ix_dead_letters_created_at'), 'dead_letters', ['created_at'], unique=False)
    op.create_table('task_deliveries',
    sa.Column('attempt', sa.Text(), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('attempt', name=op.f('pk_task_deliveries'))
    )
    op.create_index(op.f('ix_task_deliveries_updated_at'), 'task_deliveries', ['updated_at'], unique=False)
    with _views_set_aside():
        for table, column in (("articles", "raw_page_id"), ("articles", "raw_feed_id"), ("fetch_events", "raw_id")):
            with op.batch_alter_table(table, schema=None) as batch_op:
                batch_op.add_column(sa.Column(column, sa.Integer(), nullable=True))
                batch_op.create_foreign_key(batch_op.f(f"fk_{table}_{column}_raw_documents"), "raw_documents",
                                            [column], ["id"], ondelete="SET NULL")
        with op.batch_alter_table("articles", schema=None) as batch_op:
            batch_op.add_column(sa.Column("extracted_at", sa.DateTime(timezone=True), nullable=True))
        with op.batch_alter_table("fetch_events", schema=None) as batch_op:
            batch_op.add_column(sa.Column("items_rejected", sa.Integer(), nullable=False, server_default="0"))


@contextmanager
def _views_set_aside() -> Iterator[None]:
    """SQLite rebuilds a table to add a constraint, which a view reading it forbids:
    drop the views for the duration and recreate them from their own SQL."""
    bind = op.get_bind()
    views = (bind.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view'")).all()
             if bind.dialect.name == "sqlite" else [])
    for name, _ in views:
        op.execute(f"DROP VIEW {name}")
    yield
    for _, sql in views:
        op.execute(sql)

def downgrade() -> None:
    with _views_set_aside():
        with op.batch_alter_table("fetch_events", schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f("fk_fetch_events_raw_id_raw_documents"), type_="foreignkey")
            batch_op.drop_column("raw_id")
            batch_op.drop_column("items_rejected")
        with op.batch_alter_table("articles", schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f("fk_articles_raw_feed_id_raw_documents"), type_="foreignkey")
            batch_op.drop_constraint(batch_op.f("fk_articles_raw_page_id_raw_documents"), type_="foreignkey")
            batch_op.drop_column("extracted_at")
            batch_op.drop_column("raw_feed_id")
            batch_op.drop_column("raw_page_id")
    op.drop_index(op.f('ix_task_deliveries_updated_at'), table_name='task_deliveries')
    op.drop_table('task_deliveries')
    op.drop_index(op.f('ix_dead_letters_created_at'), table_name='dead_letters')
    op.drop_index(op.f('ix_dead_letters_task_id'), table_name='dead_letters')
    op.drop_table('dead_letters')
    op.drop_index(op.f('ix_raw_documents_fetched_at'), table_name='raw_documents')
    op.drop_table('raw_documents')
