"""defence_articles_view: the defence stories with their tag score and evidence

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 11:30:00
"""
from typing import Sequence, Union

from alembic import op

revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # For consumers (docs/schema.md): every article tagged `defence`, with its story and the
    # tag's score, evidence (JSON list of phrases) and tagger version.
    op.execute("""
        CREATE VIEW defence_articles_view AS
        SELECT a.id AS article_id, a.story_id, a.title, a.url, a.canonical_url, a.published_at, a.language,
               a.feed_id, t.score, t.evidence, t.iptc_code, t.tagger_version, t.created_at AS tagged_at
        FROM articles a
        JOIN tags t ON t.article_id = a.id AND t.name = 'defence'
    """)


def downgrade() -> None:
    op.execute("DROP VIEW defence_articles_view")
