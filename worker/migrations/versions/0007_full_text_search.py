"""Full-text search over article titles and texts

PostgreSQL: a stored tsvector column (title weighted above text, stemmed in the article's
language where PostgreSQL has a dictionary for it) with a GIN index.  SQLite: an FTS5 table
over the same two columns, kept in step with ``articles`` by triggers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 13:10:00
"""
from typing import Sequence, Union

from alembic import op

revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Languages py3langid reports that PostgreSQL ships a snowball stemmer for; the rest are
# indexed word for word ('simple').  Must match worker/search.py's PG_CONFIGS.
_PG_CONFIGS = {"en": "english", "ru": "russian", "tr": "turkish", "fr": "french", "de": "german",
               "es": "spanish", "it": "italian", "pt": "portuguese", "nl": "dutch", "ar": "arabic"}
# A tsvector holds at most 1 MB: index the first 100,000 characters of a text.
_TEXT_PREFIX = 100_000


def _pg_vector() -> str:
    cases = " ".join(f"WHEN '{code}' THEN '{cfg}'::regconfig" for code, cfg in _PG_CONFIGS.items())
    cfg = f"(CASE language {cases} ELSE 'simple'::regconfig END)"
    return (f"setweight(to_tsvector({cfg}, coalesce(title, '')), 'A') || "
            f"setweight(to_tsvector({cfg}, left(coalesce(text, ''), {_TEXT_PREFIX})), 'B')")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE articles ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({_pg_vector()}) STORED")
        op.execute("CREATE INDEX ix_articles_search_vector ON articles USING gin (search_vector)")
        return
    # External-content FTS5 table: the text is stored once (in articles), the index here.
    op.execute("""
        CREATE VIRTUAL TABLE articles_fts USING fts5(
            title, text, content='articles', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2')
    """)
    op.execute("""
        CREATE TRIGGER articles_fts_insert AFTER INSERT ON articles BEGIN
            INSERT INTO articles_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
        END""")
    op.execute("""
        CREATE TRIGGER articles_fts_delete AFTER DELETE ON articles BEGIN
            INSERT INTO articles_fts(articles_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
        END""")
    op.execute("""
        CREATE TRIGGER articles_fts_update AFTER UPDATE OF title, text ON articles BEGIN
            INSERT INTO articles_fts(articles_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
            INSERT INTO articles_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
        END""")
    op.execute("INSERT INTO articles_fts(articles_fts) VALUES ('rebuild')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_articles_search_vector")
        op.execute("ALTER TABLE articles DROP COLUMN search_vector")
        return
    for trigger in ("articles_fts_insert", "articles_fts_delete", "articles_fts_update"):
        op.execute(f"DROP TRIGGER {trigger}")
    op.execute("DROP TABLE articles_fts")
