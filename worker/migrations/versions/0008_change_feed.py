"""article_changes: the consumer change feed, written by triggers; LISTEN/NOTIFY on PostgreSQL

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 13:30:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

# Triggers, not application code, write the feed: no code path (pipeline, retag,
# reextract, a hand-written UPDATE) can forget to record a change.  See docs/changes.md.
#
# NOTE for later migrations: on SQLite, rebuilding `articles`, `tags` or `entities`
# (batch_alter_table with a table copy) drops their triggers; recreate them after
# (tests/test_change_feed.py fails at head if they are missing).

# Re-extraction rewrites these; other updates (feed removed, raw bytes purged) are no change.
_CONTENT = ("title", "text", "summary", "author", "site_name", "published_at", "language", "text_source",
            "fetch_error", "content_hash", "extracted_at")

_PG_FUNCTIONS = """
CREATE FUNCTION newsworker_record_change(p_article_id integer, p_kind text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    -- The writing transaction's id: readers return a row only once every transaction
    -- below their snapshot's xmin has finished, so a late commit is never skipped.
    tx bigint := pg_current_xact_id()::text::bigint;
    seq bigint;
BEGIN
    -- One row per article and kind per transaction (a retag writes many tag rows).
    IF EXISTS (SELECT 1 FROM article_changes
               WHERE article_id = p_article_id AND txid = tx AND kind = p_kind) THEN
        RETURN;
    END IF;
    INSERT INTO article_changes (article_id, kind, txid, changed_at)
    VALUES (p_article_id, p_kind, tx, now()) RETURNING id INTO seq;
    -- Delivered at commit, never for rolled-back work.
    PERFORM pg_notify('newsworker_changes',
                      json_build_object('seq', seq, 'article_id', p_article_id, 'kind', p_kind)::text);
END $$;

CREATE FUNCTION newsworker_article_stored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM newsworker_record_change(NEW.id, 'stored');
    RETURN NULL;
END $$;

CREATE FUNCTION newsworker_article_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM newsworker_record_change(NEW.id, 'updated');
    RETURN NULL;
END $$;

CREATE FUNCTION newsworker_article_tagged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM newsworker_record_change(OLD.article_id, 'tagged');
    ELSE
        PERFORM newsworker_record_change(NEW.article_id, 'tagged');
    END IF;
    RETURN NULL;
END $$;
"""

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"     # the naive-UTC text UTCDateTime reads


def _sqlite_record(article: str, kind: str, collapse: bool) -> str:
    # SQLite has no transaction id: collapse by moving the newest row when it is the same
    # article and kind (deleted, inserted again with a new, higher id).  A consumer that
    # already read the old row still sees the new one, so nothing is ever missed.
    delete = (f"DELETE FROM article_changes WHERE id = (SELECT max(id) FROM article_changes) "
              f"AND article_id = {article} AND kind = '{kind}';") if collapse else ""
    return (f"BEGIN {delete} INSERT INTO article_changes (article_id, kind, changed_at) "
            f"VALUES ({article}, '{kind}', {_SQLITE_NOW}); END")


def _sqlite_triggers() -> list[str]:
    columns = ", ".join(_CONTENT)
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _CONTENT)
    out = [
        f"CREATE TRIGGER article_changes_stored AFTER INSERT ON articles FOR EACH ROW "
        f"{_sqlite_record('NEW.id', 'stored', False)}",
        f"CREATE TRIGGER article_changes_updated AFTER UPDATE OF {columns} ON articles FOR EACH ROW "
        f"WHEN {changed} {_sqlite_record('NEW.id', 'updated', True)}",
    ]
    for table in ("tags", "entities"):
        out.append(f"CREATE TRIGGER article_changes_{table}_insert AFTER INSERT ON {table} FOR EACH ROW "
                   f"{_sqlite_record('NEW.article_id', 'tagged', True)}")
        out.append(f"CREATE TRIGGER article_changes_{table}_delete AFTER DELETE ON {table} FOR EACH ROW "
                   f"{_sqlite_record('OLD.article_id', 'tagged', True)}")
    return out


def _pg_triggers() -> list[str]:
    columns = ", ".join(_CONTENT)
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in _CONTENT)
    out = [
        "CREATE TRIGGER article_changes_stored AFTER INSERT ON articles FOR EACH ROW "
        "EXECUTE FUNCTION newsworker_article_stored()",
        f"CREATE TRIGGER article_changes_updated AFTER UPDATE OF {columns} ON articles FOR EACH ROW "
        f"WHEN ({changed}) EXECUTE FUNCTION newsworker_article_updated()",
    ]
    for table in ("tags", "entities"):     # retag and reextract replace both
        out.append(f"CREATE TRIGGER article_changes_{table} AFTER INSERT OR DELETE ON {table} FOR EACH ROW "
                   "EXECUTE FUNCTION newsworker_article_tagged()")
    return out


def upgrade() -> None:
    op.create_table(
        'article_changes',
        # INTEGER PRIMARY KEY AUTOINCREMENT on SQLite: ids are never reused, even after the newest row is deleted.
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('article_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.Text(), nullable=False),
        sa.Column('txid', sa.BigInteger(), nullable=True),
        sa.Column('changed_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_article_changes')),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f('ix_article_changes_article_id'), 'article_changes', ['article_id'], unique=False)
    op.create_index('ix_article_changes_txid_id', 'article_changes', ['txid', 'id'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTIONS)
        triggers = _pg_triggers()
    else:
        triggers = _sqlite_triggers()
    for ddl in triggers:
        op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, table in (("stored", "articles"), ("updated", "articles"), ("tags", "tags"),
                            ("entities", "entities")):
            op.execute(f"DROP TRIGGER IF EXISTS article_changes_{name} ON {table}")
        for fn in ("newsworker_article_stored()", "newsworker_article_updated()", "newsworker_article_tagged()",
                   "newsworker_record_change(integer, text)"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}")
    else:
        for name in ("stored", "updated", "tags_insert", "tags_delete", "entities_insert", "entities_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS article_changes_{name}")
    op.drop_index('ix_article_changes_txid_id', table_name='article_changes')
    op.drop_index(op.f('ix_article_changes_article_id'), table_name='article_changes')
    op.drop_table('article_changes')
