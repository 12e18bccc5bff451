"""near-duplicate index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 05:03:53.108937
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('story_bands',
    sa.Column('band_hash', sa.BigInteger(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['articles.id'], name=op.f('fk_story_bands_article_id_articles'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('band_hash', 'article_id', name=op.f('pk_story_bands'))
    )
    with op.batch_alter_table('story_bands', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_story_bands_article_id'), ['article_id'], unique=False)

    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fingerprint', sa.LargeBinary(), nullable=True))

    # One row per story, for consumers: its representative (earliest published copy),
    # how many articles and feeds carried it, and their URLs.
    urls = ("string_agg(a.url, ' ' ORDER BY a.id)" if op.get_bind().dialect.name == "postgresql"
            else "group_concat(a.url, ' ')")
    op.execute(f"""
        CREATE VIEW stories_view AS
        SELECT s.id AS story_id, s.representative_article_id, r.title, r.url AS representative_url,
               MIN(COALESCE(a.published_at, a.created_at)) AS first_published_at,
               COUNT(a.id) AS articles, COUNT(DISTINCT a.feed_id) AS feeds, {urls} AS urls
        FROM stories s
        JOIN articles a ON a.story_id = s.id
        LEFT JOIN articles r ON r.id = s.representative_article_id
        GROUP BY s.id, s.representative_article_id, r.title, r.url
    """)


def downgrade() -> None:
    op.execute("DROP VIEW stories_view")
    with op.batch_alter_table('articles', schema=None) as batch_op:
        batch_op.drop_column('fingerprint')

    with op.batch_alter_table('story_bands', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_story_bands_article_id'))

    op.drop_table('story_bands')
