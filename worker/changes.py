"""The consumer change feed: "every article stored, re-extracted or re-tagged since my
last read", with a cursor that never skips a row (docs/changes.md).

Rows come from database triggers (migration 0008).  Why the cursor never misses a row:

- PostgreSQL: ids come from a sequence, so a transaction can take id 5, commit after
  the one that took id 6, and a reader that already passed 6 would never see 5.  Each
  row therefore carries its transaction's id (txid); a reader returns only rows whose
  txid is below a horizon under which every transaction of this database has finished
  (so no row can still appear there), ordered by (txid, id), and the cursor is the last
  (txid, id) read.  An open transaction holds the feed back (late, never lossy).
- SQLite: one writer at a time holds the write lock until it commits, so ids are
  handed out in commit order and the cursor is simply the last id.

Notifications: PostgreSQL ``NOTIFY newsworker_changes`` from the same triggers, and a
Redis pub/sub message on ``newsworker:articles`` after a worker stores a new article
(:func:`publish_stored`, only when the broker is Redis).  Both are wake-up calls;
the feed is the record.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Optional, Sequence

import sqlalchemy as sa
from sqlmodel import Session

from .errors import InvalidCursor
from .models import ArticleChange

log = logging.getLogger(__name__)

PG_CHANNEL = "newsworker_changes"          # LISTEN/NOTIFY, from the triggers
REDIS_CHANNEL = "newsworker:articles"      # pub/sub, from the worker after a commit
KINDS = ("stored", "updated", "tagged")


@dataclass(frozen=True)
class Change:
    seq: int                     # article_changes.id
    article_id: int
    kind: str                    # stored | updated | tagged
    changed_at: datetime
    cursor: str                  # resume after this row

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "article_id": self.article_id, "kind": self.kind,
                "changed_at": self.changed_at.isoformat(), "cursor": self.cursor}


# ---------------------------------------------------------------- cursors

_PG_CURSOR = re.compile(r"pg:(\d{1,19}):(\d{1,19})")
_SQLITE_CURSOR = re.compile(r"sqlite:(\d{1,19})")


def encode_cursor(dialect: str, seq: int, txid: Optional[int]) -> str:
    """An opaque position in the feed (consumers store it, never parse it)."""
    return f"pg:{txid}:{seq}" if dialect == "postgresql" else f"sqlite:{seq}"


def decode_cursor(dialect: str, cursor: Optional[str]) -> tuple[int, int]:
    """(txid, seq) to resume after; (0, 0) from the beginning.  SQLite's txid is always 0."""
    if cursor is None or cursor == "":
        return 0, 0
    pattern = _PG_CURSOR if dialect == "postgresql" else _SQLITE_CURSOR
    m = pattern.fullmatch(cursor.strip())
    if m is None:
        other = _SQLITE_CURSOR if dialect == "postgresql" else _PG_CURSOR
        if other.fullmatch(cursor.strip()):
            raise InvalidCursor(f"cursor {cursor!r} belongs to a {'SQLite' if dialect == 'postgresql' else 'PostgreSQL'}"
                                f" database, but this database is {'PostgreSQL' if dialect == 'postgresql' else 'SQLite'}")
        raise InvalidCursor(f"cursor {cursor!r} is not a change-feed cursor")
    numbers = [int(g) for g in m.groups()]
    if max(numbers) >= 2**63:
        raise InvalidCursor(f"cursor {cursor!r} is not a change-feed cursor (number out of range)")
    return (numbers[0], numbers[1]) if dialect == "postgresql" else (0, numbers[0])


# ---------------------------------------------------------------- reading

# The horizon: the oldest transaction still running in the statement's own snapshot
# (pg_snapshot_xmin), except transactions known to belong to other databases of the
# cluster -- they cannot write our rows, and a long one elsewhere (another application,
# a bulk load) would otherwise stall this feed.  An xid that cannot be placed (not
# visible in pg_stat_activity) counts as ours: later, never lost.  One statement, so the
# snapshot that gives the horizon is the one the rows are read with.
PG_HORIZON = """(
    WITH snap AS MATERIALIZED (SELECT pg_current_snapshot() AS s),
    elsewhere AS (
        SELECT backend_xid::text::bigint AS xid FROM pg_stat_activity
        WHERE backend_xid IS NOT NULL AND datname <> current_database()
        UNION ALL
        SELECT transaction::text::bigint FROM pg_prepared_xacts WHERE database <> current_database())
    SELECT coalesce(
        (SELECT min(x::text::bigint) FROM snap, pg_snapshot_xip(snap.s) AS x
         WHERE x::text::bigint % 4294967296 NOT IN (SELECT xid FROM elsewhere)),
        (SELECT pg_snapshot_xmax(s)::text::bigint FROM snap)))"""


def read_changes(session: Session, cursor: Optional[str] = None, limit: int = 100) -> tuple[list[Change], Optional[str]]:
    """Up to *limit* changes after *cursor* (None: from the beginning), oldest first,
    and the cursor to pass next time (the given one when there is nothing new)."""
    dialect = session.get_bind().dialect.name
    after_tx, after_seq = decode_cursor(dialect, cursor)
    c = ArticleChange.__table__.c
    q = sa.select(c.id, c.article_id, c.kind, c.changed_at, c.txid)
    if dialect == "postgresql":
        q = (q.where(c.txid < sa.literal_column(PG_HORIZON), sa.tuple_(c.txid, c.id) > sa.tuple_(after_tx, after_seq))
             .order_by(c.txid, c.id))
    else:
        q = q.where(c.id > after_seq).order_by(c.id)
    rows = session.execute(q.limit(limit)).all()
    changes = [Change(seq, aid, kind, when, encode_cursor(dialect, seq, txid)) for seq, aid, kind, when, txid in rows]
    return changes, (changes[-1].cursor if changes else cursor)


def with_articles(session: Session, changes: Sequence[Change]) -> list[tuple[Change, Optional[dict[str, Any]]]]:
    """Each change with its article as it is now (``articles list --json`` dicts; None if gone)."""
    from .store import list_articles

    ids = sorted({ch.article_id for ch in changes})
    found = {a["id"]: a for a in list_articles(session, ids=ids, limit=len(ids))} if ids else {}
    return [(ch, found.get(ch.article_id)) for ch in changes]


def start_cursor(session: Session) -> Optional[str]:
    """A cursor after everything already in the feed (a new consumer that wants only what comes next)."""
    if session.get_bind().dialect.name == "postgresql":
        # Every row below the horizon is final; everything at or above it is still to come.
        horizon = session.execute(sa.text(f"SELECT {PG_HORIZON}")).scalar_one()
        return encode_cursor("postgresql", 2**63 - 1, horizon - 1)
    last = session.execute(sa.select(sa.func.max(ArticleChange.id))).scalar()
    return encode_cursor("sqlite", last, None) if last else None


# ---------------------------------------------------------------- following

class _Waker:
    """Sleeps until the feed may have grown: on PostgreSQL a LISTEN connection (woken by
    the triggers' NOTIFY at commit), elsewhere a short poll.  Either way a timeout: a
    notification is a hint, the next read decides."""

    def __init__(self, engine: sa.Engine, poll: float):
        self.poll = poll
        self.conn: Any = None
        if engine.dialect.name == "postgresql":
            import psycopg

            url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.conn = psycopg.connect(url, autocommit=True)
            self.conn.execute(f"LISTEN {PG_CHANNEL}")

    def wait(self) -> None:
        if self.conn is None:
            time.sleep(self.poll)
            return
        for _ in self.conn.notifies(timeout=self.poll, stop_after=1):
            pass
        # Drain what else arrived meanwhile: one read covers them all.
        for _ in self.conn.notifies(timeout=0):
            pass

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def follow(session_factory: Callable[[], Any], engine: sa.Engine, cursor: Optional[str], limit: int = 100,
           poll: float = 5.0) -> Iterator[tuple[list[Change], Optional[str]]]:
    """Read batches forever: yields (changes, next cursor) for each non-empty batch,
    sleeping between reads until a notification (PostgreSQL) or *poll* seconds."""
    waker = _Waker(engine, poll)       # listening before the first read: no wake-up is lost
    try:
        while True:
            with session_factory() as session:
                batch, cursor = read_changes(session, cursor, limit)
            if batch:
                yield batch, cursor
            if len(batch) < limit:
                waker.wait()
    finally:
        waker.close()


def stream(cursor: Optional[str], limit: int, follow_: bool, articles: bool, write: Callable[[str], None],
           poll: float = 5.0) -> Optional[str]:
    """``newsworker changes``: JSON Lines, one change per line (with ``article`` when
    *articles*), then ``{"cursor": …}``; with *follow_*, a cursor line after each batch."""
    from .db import get_engine, session_scope

    def emit(session: Session, batch: list[Change], next_cursor: Optional[str]) -> None:
        if articles:
            for ch, article in with_articles(session, batch):
                write(json.dumps({**ch.to_dict(), "article": article}, ensure_ascii=False))
        else:
            for ch in batch:
                write(json.dumps(ch.to_dict()))
        write(json.dumps({"cursor": next_cursor}))

    with session_scope() as s:
        decode_cursor(s.get_bind().dialect.name, cursor)       # a bad cursor fails before anything is printed
        if not follow_:
            batch, cursor = read_changes(s, cursor, limit)
            emit(s, batch, cursor)
            return cursor
    for batch, cursor in follow(session_scope, get_engine(), cursor, limit, poll):
        with session_scope() as s:
            emit(s, batch, cursor)
    return cursor


# ---------------------------------------------------------------- Redis pub/sub

_redis: Optional[tuple[int, str, Any]] = None
_redis_lock = threading.Lock()


def _redis_client(url: str) -> Any:
    """One client per worker process (never inherited across a fork); short timeouts:
    a slow Redis must not hold a task."""
    global _redis
    import redis

    with _redis_lock:
        if _redis is None or _redis[0] != os.getpid() or _redis[1] != url:
            _redis = (os.getpid(), url, redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2))
        return _redis[2]


def publish_stored(article_id: int, canonical_url: Optional[str], tags: Sequence[str]) -> bool:
    """After the commit that stored a new article (its canonical URL and sorted tag names as the
    task stored them: no second read): publish ``{"article_id", "kind": "stored", "url",
    "tags": [names]}`` on ``newsworker:articles`` when the broker is Redis (nothing on the
    embedded default).  A failure is logged, never raised: the article is stored and the
    change feed has it.  True if sent."""
    from .settings import get_settings

    url = get_settings().broker_url
    if not url.startswith(("redis://", "rediss://")):
        return False
    try:
        message = {"article_id": article_id, "kind": "stored", "url": canonical_url, "tags": list(tags)}
        _redis_client(url).publish(REDIS_CHANNEL, json.dumps(message, ensure_ascii=False))
        return True
    except Exception as exc:      # noqa: BLE001 - a notification must never fail the stored article's task
        log.warning("article %s is stored, but announcing it on Redis channel %s failed (%s: %s); subscribers "
                    "missed this message, readers of the change feed (`newsworker changes`) still get it",
                    article_id, REDIS_CHANNEL, type(exc).__name__, exc)
        return False
