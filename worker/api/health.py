"""Feed health and daily counts: the queries behind `GET /feeds` and the operator page."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any, Optional, Sequence

import sqlalchemy as sa
from sqlmodel import Session

from .. import store
from ..models import Article, ArticleFeed, Feed, FetchEvent, Story, Tag, utcnow
from ..settings import get_settings


def feed_rows(session: Session, feeds: Sequence[Feed], now: Optional[datetime] = None) -> list[dict[str, Any]]:
    """`feeds list --json` rows plus what an operator asks next: is a poll queued, how did
    the last one go, how many new articles in the last day.  Three queries for any number of feeds."""
    now = now or utcnow()
    ids = [f.id for f in feeds]
    if not ids:
        return []
    last_ids = sa.select(sa.func.max(FetchEvent.id)).where(FetchEvent.feed_id.in_(ids)).group_by(FetchEvent.feed_id)
    polls = {e.feed_id: e for e in session.execute(sa.select(FetchEvent).where(FetchEvent.id.in_(last_ids))).scalars()}
    recent = dict(session.execute(
        sa.select(ArticleFeed.feed_id, sa.func.count())
        .where(ArticleFeed.feed_id.in_(ids), ArticleFeed.first_seen_at >= now - timedelta(hours=24))
        .group_by(ArticleFeed.feed_id)).all())
    stale = now - timedelta(seconds=get_settings().claim_timeout)
    rows = []
    for f in feeds:
        row = store.feed_dict(f)
        row["queued"] = f.queued_at is not None and f.queued_at >= stale
        e = polls.get(f.id)
        row["last_poll"] = None if e is None else {
            "started_at": e.started_at, "finished_at": e.finished_at, "outcome": e.outcome,
            "http_status": e.http_status, "items_seen": e.items_seen, "items_new": e.items_new,
            "error": e.error, "duration_ms": e.duration_ms}
        row["articles_24h"] = recent.get(f.id, 0)
        rows.append(row)
    return rows


def _day(session: Session, column: Any) -> Any:
    """The UTC calendar day of a timestamp column (PostgreSQL would use the session's zone)."""
    if session.get_bind().dialect.name == "postgresql":
        return sa.func.date(sa.func.timezone("UTC", column))
    return sa.func.date(column)          # SQLite keeps naive UTC text


def stories_per_day(session: Session, days: int = 14, today: Optional[date] = None) -> list[dict[str, Any]]:
    """For each of the last *days* UTC days, oldest first: stories first seen that day and
    how many of them are defence stories (any copy tagged `defence`)."""
    today = today or datetime.now(timezone.utc).date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time(), tzinfo=timezone.utc)
    day = _day(session, Story.created_at)
    defence = sa.exists().where(Article.story_id == Story.id, Tag.article_id == Article.id, Tag.name == "defence")
    counts = session.execute(
        sa.select(day, sa.func.count(), sa.func.count().filter(defence))
        .where(Story.created_at >= start).group_by(day)).all()
    found = {str(d)[:10]: (n, dn) for d, n, dn in counts}
    out = []
    for i in range(days):
        d = (first + timedelta(days=i)).isoformat()
        n, dn = found.get(d, (0, 0))
        out.append({"day": d, "stories": n, "defence": dn})
    return out
