"""entities

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 04:36:31.162244
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('entities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('code', sa.Text(), nullable=True),
    sa.Column('role', sa.Text(), nullable=True),
    sa.Column('rank', sa.Text(), nullable=True),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('mentions', sa.Integer(), nullable=False),
    sa.Column('tagger_version', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['articles.id'], name=op.f('fk_entities_article_id_articles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_entities')),
    sa.UniqueConstraint('article_id', 'kind', 'name', name='uq_entities_article_kind_name')
    )
    with op.batch_alter_table('entities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_entities_article_id'), ['article_id'], unique=False)
        batch_op.create_index('ix_entities_kind_code', ['kind', 'code'], unique=False)
        batch_op.create_index(batch_op.f('ix_entities_name'), ['name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('entities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_entities_name'))
        batch_op.drop_index('ix_entities_kind_code')
        batch_op.drop_index(batch_op.f('ix_entities_article_id'))

    op.drop_table('entities')
