"""An example consumer of newsworker's change feed (docs/changes.md), standalone: plain
SQLAlchemy (and psycopg for LISTEN on PostgreSQL), no newsworker import.

It reads every change after the position kept in a cursor file, handles each one
(here: prints the change and the article's title as a JSON line), saves the new
position after each batch, and then waits for more (``--once``: stops when caught up).

    python examples/consume_changes.py --database postgresql+psycopg://user@host/newsworker \\
        --cursor-file var/consumer.cursor
    python examples/consume_changes.py --database sqlite:///var/newsworker.db --once

Delivery is at least once: a crash after handling a batch but before saving the cursor
hands that batch over again, so make ``handle`` idempotent (key on ``seq``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import sqlalchemy as sa

# PostgreSQL: only rows of transactions below the horizon -- the oldest transaction still
# running in this statement's snapshot, leaving out those of other databases -- so every
# transaction that could still add a row there has finished; in (txid, id) order, after
# the last (txid, id) read.  (Simplest correct form: c.txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint,
# which a long transaction in any database of the cluster holds back.)
PG_QUERY = sa.text("""
    WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s),
    elsewhere AS (
        SELECT backend_xid::text::bigint AS xid FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND datname <> current_database()
        UNION ALL
        SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE database <> current_database()),
    horizon AS (
        SELECT coalesce(
            (SELECT min(x::text::bigint) FROM snap, pg_snapshot_xip(snap.s) AS x
             WHERE x::text::bigint % 4294967296 NOT IN (SELECT xid FROM elsewhere)),
            (SELECT pg_snapshot_xmax(s)::text::bigint FROM snap)) AS txid)
    SELECT c.id, c.txid, c.article_id, c.kind, c.changed_at, a.title, a.canonical_url
    FROM article_changes c LEFT JOIN articles a ON a.id = c.article_id
    WHERE c.txid < (SELECT txid FROM horizon)
      AND (c.txid, c.id) > (:txid, :seq)
    ORDER BY c.txid, c.id
    LIMIT :limit
""")
# SQLite: one writer at a time, so ids are handed out in commit order.
SQLITE_QUERY = sa.text("""
    SELECT c.id, c.txid, c.article_id, c.kind, c.changed_at, a.title, a.canonical_url
    FROM article_changes c LEFT JOIN articles a ON a.id = c.article_id
    WHERE c.id > :seq
    ORDER BY c.id
    LIMIT :limit
""")


def load_cursor(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {"txid": 0, "seq": 0}        # from the beginning


def save_cursor(path: Path, cursor: dict[str, int]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(cursor))
    os.replace(tmp, path)                   # atomic: a crash leaves the old cursor or the new one


def handle(row: sa.Row) -> None:
    """Your work goes here (index the article, alert an analyst, ...)."""
    print(json.dumps({"seq": row.id, "article_id": row.article_id, "kind": row.kind,
                      "changed_at": str(row.changed_at), "title": row.title, "url": row.canonical_url},
                     ensure_ascii=False), flush=True)


def listener(engine: sa.Engine):
    """A LISTEN connection on PostgreSQL (woken at each commit that changed articles), else None."""
    if engine.dialect.name != "postgresql":
        return None
    import psycopg

    conn = psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(hide_password=False),
                           autocommit=True)
    conn.execute("LISTEN newsworker_changes")
    return conn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database", default=os.environ.get("NEWSWORKER_DATABASE_URL", "sqlite:///var/newsworker.db"))
    ap.add_argument("--cursor-file", type=Path, default=Path("consumer.cursor"))
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--once", action="store_true", help="stop when caught up")
    ap.add_argument("--poll", type=float, default=5.0, help="seconds between reads when idle")
    args = ap.parse_args()

    url = args.database.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(url)
    query = PG_QUERY if engine.dialect.name == "postgresql" else SQLITE_QUERY
    cursor = load_cursor(args.cursor_file)
    wake = None if args.once else listener(engine)     # LISTEN before reading: no wake-up lost
    while True:
        with engine.connect() as conn:
            rows = conn.execute(query, {**cursor, "limit": args.limit}).all()
        for row in rows:
            handle(row)
        if rows:
            cursor = {"txid": rows[-1].txid or 0, "seq": rows[-1].id}
            save_cursor(args.cursor_file, cursor)
        if len(rows) == args.limit:
            continue                        # more waiting: no pause
        if args.once:
            return 0
        if wake is not None:                # a notification is a hint; the next read decides
            for _ in wake.notifies(timeout=args.poll, stop_after=1):
                pass
        else:
            time.sleep(args.poll)


if __name__ == "__main__":
    sys.exit(main())
