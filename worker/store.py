"""The few queries the pipeline needs.  Unique constraints are the last line of
deduplication: every insert is ``INSERT … ON CONFLICT DO NOTHING``, so a task that
runs twice (redelivery, two workers) stores nothing twice."""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from .errors import FeedNotFound, InvalidQuery
from .dedupe import Fingerprint, same_story, similarity
from .models import (Article, ArticleChange, ArticleEntity, ArticleFeed, ArticleURL, DeadLetter, Feed, FetchEvent, RawDocument, Story,
                     StoryBand, Tag, TaskDelivery, utcnow)
from .raw import RawBody

if TYPE_CHECKING:
    from .entities import Entity
    from .tagging import TagResult


def _dialect_insert(dialect: str, table: Any) -> Any:
    """The dialect's INSERT, which knows ``ON CONFLICT``."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


@functools.lru_cache(maxsize=64)
def _insert_stmt(dialect: str, table: sa.Table, returning: tuple[Any, ...] = ()) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` for *table*, built once: rows come as
    parameters, so SQLAlchemy's compiled-statement cache is hit on every call."""
    stmt = _dialect_insert(dialect, table).on_conflict_do_nothing()
    return stmt.returning(*returning) if returning else stmt


def insert_ignore(session: Session, model: type, values: dict[str, Any] | list[dict[str, Any]], *returning: Any) -> Any:
    """Insert, doing nothing on any unique conflict.  With *returning* columns (one row
    only), returns the inserted row (None if it conflicted); otherwise the row count
    (which drivers may report as -1 for several rows)."""
    conn = session.connection()
    stmt = _insert_stmt(conn.dialect.name, model.__table__, returning)  # type: ignore[attr-defined]
    result = conn.execute(stmt, values)     # a list: executemany, one statement for all rows
    return result.first() if returning else result.rowcount


# ---------------------------------------------------------------- feeds

def get_feed(session: Session, id_or_url: int | str) -> Feed:
    key = str(id_or_url).strip()
    feed = session.get(Feed, int(key)) if key.isdigit() else session.exec(select(Feed).where(Feed.url == key)).first()
    if feed is None:
        raise FeedNotFound(f"no feed {key!r}")
    return feed


def get_feeds(session: Session, ids: list[int]) -> list[Feed]:
    """The feeds with these ids, in one query (ids with no feed are left out)."""
    return list(session.exec(select(Feed).where(Feed.id.in_(ids)).order_by(Feed.id)).all())


def add_feed(
    session: Session, url: str, *, name: Optional[str] = None, interval: Optional[int] = None,
    group: Optional[str] = None, title: Optional[str] = None, site_url: Optional[str] = None,
) -> tuple[Feed, bool]:
    """Add a feed; returns (feed, created).  Adding a known URL changes nothing."""
    inserted = insert_ignore(
        session, Feed,
        {"url": url, "name": name, "interval_seconds": interval, "group_name": group, "title": title,
         "site_url": site_url, "enabled": True, "error_count": 0, "next_fetch_at": utcnow(), "created_at": utcnow()},
        Feed.id,
    )
    feed = session.exec(select(Feed).where(Feed.url == url)).one()
    return feed, inserted is not None


def feed_url_taken(session: Session, url: str, other_than: int) -> bool:
    return session.execute(sa.select(Feed.id).where(Feed.url == url, Feed.id != other_than)).first() is not None


def enable_feed(session: Session, id_or_url: int | str) -> Feed:
    """Enable a feed again (after it was disabled by failures or by hand); due now."""
    feed = get_feed(session, id_or_url)
    feed.enabled, feed.disabled_reason = True, None
    feed.error_count = feed.permanent_failures = 0
    feed.next_fetch_at = utcnow()
    session.add(feed)
    return feed


def due_feeds(now: datetime, stale_before: datetime, limit: int, dialect: str) -> sa.Select:
    """The dispatcher's due-feed query: up to *limit* enabled feeds due by *now* and not
    claimed since *stale_before*, the most overdue first (on PostgreSQL skipping rows
    another dispatcher has locked)."""
    due = (
        sa.select(Feed.id)
        .where(Feed.enabled.is_(True), Feed.next_fetch_at <= now)
        .where(sa.or_(Feed.queued_at.is_(None), Feed.queued_at < stale_before))
        .order_by(Feed.next_fetch_at)
        .limit(limit)
    )
    return due.with_for_update(skip_locked=True) if dialect == "postgresql" else due


def claim_due_feeds(session: Session, now: datetime, stale_before: datetime, limit: int) -> list[tuple[int, str]]:
    """Mark up to *limit* due feeds as queued and return their ids and URLs.  A feed queued
    after *stale_before* is never claimed again, so no feed is queued twice; one
    statement, so SQLite's single writer is enough, and PostgreSQL skips rows
    another dispatcher holds."""
    due = due_feeds(now, stale_before, limit, session.get_bind().dialect.name)
    stmt = (sa.update(Feed).where(Feed.id.in_(due.scalar_subquery())).values(queued_at=now)
            .returning(Feed.id, Feed.url))
    return sorted((feed_id, url) for feed_id, url in session.execute(stmt).all())


def claim_feed(session: Session, feed_id: int, now: datetime, stale_before: datetime) -> bool:
    """Claim one feed for a manual poll; False if a poll of it is already queued or running."""
    stmt = (
        sa.update(Feed)
        .where(Feed.id == feed_id, sa.or_(Feed.queued_at.is_(None), Feed.queued_at < stale_before))
        .values(queued_at=now)
        .returning(Feed.id)
    )
    return session.execute(stmt).first() is not None


def reopen_feed(session: Session, feed_id: int, now: datetime) -> None:
    """Make a feed due now and forget its validators, so its next poll is a full GET
    (its new entries could not be queued after the last one)."""
    session.execute(sa.update(Feed).where(Feed.id == feed_id)
                    .values(next_fetch_at=now, etag=None, last_modified=None, body_sha256=None, queued_at=None))


def renew_claims(session: Session, feed_ids: list[int], now: datetime) -> None:
    """Claims still held (a poll deferred for a busy host) count from *now* again."""
    session.execute(sa.update(Feed).where(Feed.id.in_(feed_ids), Feed.queued_at.is_not(None)).values(queued_at=now))


def release_feed(session: Session, feed_id: int) -> None:
    session.execute(sa.update(Feed).where(Feed.id == feed_id).values(queued_at=None))


def add_fetch_event(session: Session, **values: Any) -> None:
    session.add(FetchEvent(**values))


def write_polls(session: Session, feeds: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Many polls at once: the feeds' new columns (dicts with the same keys, the feed id
    as ``_id``) in one UPDATE run for every feed, their fetch events in one INSERT."""
    conn = session.connection()
    if feeds:
        table = Feed.__table__
        stmt = table.update().where(table.c.id == sa.bindparam("_id")).values(
            {name: sa.bindparam(name) for name in feeds[0] if name != "_id"})
        conn.execute(stmt, feeds)
    if events:
        conn.execute(FetchEvent.__table__.insert(), events)


# ---------------------------------------------------------------- raw bodies, dead letters

def save_raw(session: Session, raw: RawBody) -> int:
    """Keep a fetched body (once per distinct content); returns its id."""
    row = insert_ignore(session, RawDocument,
                        {"kind": raw.kind, "url": raw.url, "sha256": raw.sha256, "content_type": raw.content_type,
                         "size": raw.size, "body": raw.body, "fetched_at": utcnow()}, RawDocument.id)
    if row is not None:
        return row[0]
    return session.execute(sa.select(RawDocument.id).where(RawDocument.sha256 == raw.sha256)).scalar_one()


def purge_expired(session: Session, raw_before: datetime, deliveries_before: datetime, batch: int = 1000,
                  changes_before: Optional[datetime] = None) -> int:
    """Drop raw bodies fetched before *raw_before* (articles keep their text; the
    foreign keys set their raw_*_id to NULL), old delivery counters and change-feed rows
    older than *changes_before*.  Returns raw bodies removed."""
    if changes_before is not None:
        session.execute(sa.delete(ArticleChange).where(ArticleChange.changed_at < changes_before))
    removed = 0
    while True:
        ids = session.execute(sa.select(RawDocument.id).where(RawDocument.fetched_at < raw_before).limit(batch)).scalars().all()
        if not ids:
            break
        session.execute(sa.delete(RawDocument).where(RawDocument.id.in_(ids)))
        removed += len(ids)
    session.execute(sa.delete(TaskDelivery).where(TaskDelivery.updated_at < deliveries_before))
    return removed


def count_delivery(session: Session, attempt: str) -> int:
    """Count one more start of a task attempt; returns how many there have been."""
    conn = session.connection()
    stmt = _dialect_insert(conn.dialect.name, TaskDelivery).values(
        attempt=attempt, deliveries=1, updated_at=utcnow()).on_conflict_do_update(
        index_elements=[TaskDelivery.attempt],
        set_={"deliveries": TaskDelivery.deliveries + 1, "updated_at": utcnow()},
    ).returning(TaskDelivery.deliveries)
    return conn.execute(stmt).scalar_one()


def add_dead_letter(session: Session, **values: Any) -> None:
    session.add(DeadLetter(**values))


# ---------------------------------------------------------------- articles

@dataclass
class ArticleDraft:
    """An article ready to store (the value the pipeline hands to storage)."""

    url: str
    canonical_url: str
    text: str
    text_source: str
    guid: Optional[str] = None
    title: Optional[str] = None
    summary: Optional[str] = None
    author: Optional[str] = None
    site_name: Optional[str] = None
    published_at: Optional[datetime] = None
    language: Optional[str] = None
    content_hash: Optional[str] = None
    fingerprint: Optional[Fingerprint] = None
    fetch_error: Optional[str] = None
    alias_urls: tuple[str, ...] = ()       # other canonical URLs that led here (entry link vs page canonical)
    raw_page: Optional[RawBody] = None     # the page body, kept for re-extraction
    raw_feed_id: Optional[int] = None      # the kept feed body the entry came from


def known_article(session: Session, canonical_urls: Iterable[str]) -> Optional[int]:
    """The id of the article already stored under any of these canonical URLs."""
    found = known_url_map(session, [u for u in canonical_urls if u])
    return next(iter(found.values()), None)


def known_url_map(session: Session, canonical_urls: Sequence[str]) -> dict[str, int]:
    """{canonical URL: article id} for the URLs already stored."""
    found: dict[str, int] = {}
    for i in range(0, len(canonical_urls), 500):
        chunk = list(canonical_urls[i : i + 500])
        found.update(session.exec(
            select(ArticleURL.canonical_url, ArticleURL.article_id).where(ArticleURL.canonical_url.in_(chunk))
        ).all())
    return found


def link_feed_many(session: Session, feed_id: int, links: dict[int, tuple[Optional[str], str]]) -> None:
    """Link several articles to a feed at once: {article_id: (guid, entry_url)}."""
    if not links:
        return
    linked = set(session.exec(
        select(ArticleFeed.article_id).where(ArticleFeed.feed_id == feed_id, ArticleFeed.article_id.in_(list(links)))
    ).all())
    rows = [{"article_id": aid, "feed_id": feed_id, "guid": guid, "entry_url": url, "first_seen_at": utcnow()}
            for aid, (guid, url) in links.items() if aid not in linked]
    if rows:
        insert_ignore(session, ArticleFeed, rows)


def add_urls(session: Session, article_id: int, canonical_urls: Iterable[str], url: str) -> None:
    """Record canonical URLs that lead to the article (ignored when already known)."""
    rows = [{"canonical_url": u, "article_id": article_id, "url": url, "first_seen_at": utcnow()}
            for u in sorted(set(canonical_urls))]
    if rows:
        insert_ignore(session, ArticleURL, rows)


def link_feed(session: Session, article_id: int, feed_id: int, guid: Optional[str], entry_url: Optional[str]) -> bool:
    """Record that *feed_id* listed the article; True when this is new."""
    return bool(
        insert_ignore(session, ArticleFeed,
                      {"article_id": article_id, "feed_id": feed_id, "guid": guid, "entry_url": entry_url,
                       "first_seen_at": utcnow()})
    )


MAX_CANDIDATES = 50     # articles sharing a band that are compared in full


# Built once (as the statements below): building a statement and its cache key costs
# more than SQLite takes to run it.
_STORY_CANDIDATES = (
    sa.select(Article.story_id, Article.fingerprint).join(StoryBand, StoryBand.article_id == Article.id)
    .where(StoryBand.band_hash.in_(sa.bindparam("bands", expanding=True)), Article.fingerprint.is_not(None))
    .distinct().limit(MAX_CANDIDATES)
)


def find_story(session: Session, fp: Fingerprint) -> Optional[int]:
    """The story of the most similar stored near copy of *fp*, if any.  Candidates come
    from equal LSH band hashes (an indexed lookup); each is confirmed on its signature."""
    rows = session.connection().execute(_STORY_CANDIDATES, {"bands": list(fp.bands())}).all()
    best: tuple[float, Optional[int]] = (0.0, None)
    for story_id, blob in rows:
        other = Fingerprint.from_bytes(blob)
        if same_story(fp, other):
            best = max(best, (similarity(fp, other)[0], story_id), key=lambda x: x[0])
    return best[1]


def _lock_bands(session: Session, fp: Fingerprint) -> None:
    """PostgreSQL: two workers storing copies of one story at once must not both create
    a story.  Transaction-level advisory locks on the band hashes (sorted: no deadlock)
    serialise exactly the articles that could be near copies.  SQLite has one writer."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("SELECT pg_advisory_xact_lock(h) FROM unnest(CAST(:hs AS bigint[])) AS h ORDER BY h"),
                        {"hs": _band_hashes(fp)})


_NEW_STORY = sa.insert(Story).returning(Story.id)


def save_article(
    session: Session, draft: ArticleDraft, feed_id: int, tags: Sequence[TagResult], entities: Sequence[Entity],
    tagger_version: str,
) -> tuple[int, bool]:
    """Store *draft* (or find the article it duplicates), put it in its story — a near
    copy's, or a new one — and link it to the feed.  Returns (article_id, created)."""
    now = utcnow()
    story, new_story = None, False
    if draft.fingerprint is not None:
        _lock_bands(session, draft.fingerprint)
        story = find_story(session, draft.fingerprint)
    if story is None:
        story = session.connection().execute(_NEW_STORY, {"created_at": now}).scalar_one()
        new_story = True
    raw_page_id = save_raw(session, draft.raw_page) if draft.raw_page is not None else None
    row = insert_ignore(
        session, Article,
        {"url": draft.url, "canonical_url": draft.canonical_url, "guid": draft.guid, "feed_id": feed_id,
         "title": draft.title, "text": draft.text, "summary": draft.summary, "author": draft.author,
         "site_name": draft.site_name, "published_at": draft.published_at, "language": draft.language,
         "content_hash": draft.content_hash, "text_source": draft.text_source, "fetch_error": draft.fetch_error,
         "fingerprint": draft.fingerprint.to_bytes() if draft.fingerprint else None,
         "fetched_at": now, "created_at": now, "extracted_at": now, "story_id": story,
         "raw_page_id": raw_page_id, "raw_feed_id": draft.raw_feed_id},
        Article.id,
    )
    created = row is not None
    if created and session.get_bind().dialect.name == "postgresql":
        article_id = row[0]
        session.connection().execute(_PG_INDEX_NEW_ARTICLE, _index_params(
            article_id, story, draft, feed_id, tags, entities, tagger_version, now))
        return article_id, True
    if created:
        article_id = row[0]
        _insert_bands(session, article_id, draft.fingerprint)
        _set_representative(session, story)         # a new story's only copy, or the earliest
        _insert_analysis(session, article_id, tags, entities, tagger_version, now)
    else:
        # Same canonical URL stored meanwhile, or an exact copy of stored text.
        if new_story:
            session.execute(sa.delete(Story).where(Story.id == story))
        cond = Article.canonical_url == draft.canonical_url
        if draft.content_hash:
            cond = sa.or_(cond, Article.content_hash == draft.content_hash)
        article_id = session.exec(select(Article.id).where(cond).order_by(Article.id).limit(1)).one()
    add_urls(session, article_id, [draft.canonical_url, *draft.alias_urls], draft.url)
    link_feed(session, article_id, feed_id, draft.guid, draft.url)
    return article_id, created


# PostgreSQL: all of an article's bands in one statement.  An executemany would run the
# INSERT once per band on the server (~40 an article), a third of its write time.
_PG_BANDS_SQL = ("INSERT INTO story_bands (band_hash, article_id) "
                 "SELECT h, :article_id FROM unnest(CAST(:bands AS bigint[])) AS h ON CONFLICT DO NOTHING")
_PG_INSERT_BANDS = sa.text(_PG_BANDS_SQL)


# PostgreSQL: what a new article brings besides its row, in one statement instead of
# seven (bands, the story's representative, tags, entities, URLs, the feed link): each
# statement costs the worker ~0.5 ms of CPU in SQLAlchemy and psycopg, the server one
# more round trip.  The same rows, and the same JSON text, as the SQLite path below.
# The representative is _EARLIEST_COPY's (the earliest published copy, ties: first stored).
_PG_INDEX_NEW_ARTICLE = sa.text(f"""
WITH bands AS ({_PG_BANDS_SQL}),
representative AS (
    UPDATE stories SET representative_article_id = (
        SELECT a.id FROM articles AS a WHERE a.story_id = :story
        ORDER BY coalesce(a.published_at, a.created_at), a.id LIMIT 1)
    WHERE id = :story),
new_tags AS (
    INSERT INTO tags (article_id, name, score, evidence, details, iptc_code, tagger_version, created_at)
    SELECT :article_id, t.name, t.score, t.evidence, coalesce(t.details, 'null'), t.iptc_code, :version, :now
    FROM json_to_recordset(CAST(:tags AS json))
         AS t(name text, score float8, evidence json, details json, iptc_code text)
    ON CONFLICT DO NOTHING),
new_entities AS (
    INSERT INTO entities (article_id, kind, name, code, role, rank, evidence, mentions, tagger_version, created_at)
    SELECT :article_id, e.kind, e.name, e.code, e.role, e.rank, e.evidence, e.mentions, :version, :now
    FROM json_to_recordset(CAST(:entities AS json))
         AS e(kind text, name text, code text, role text, rank text, evidence json, mentions int)
    ON CONFLICT DO NOTHING),
urls AS (
    INSERT INTO article_urls (canonical_url, article_id, url, first_seen_at)
    SELECT u, :article_id, :url, :now FROM unnest(CAST(:urls AS text[])) AS u ON CONFLICT DO NOTHING)
INSERT INTO article_feeds (article_id, feed_id, guid, entry_url, first_seen_at)
VALUES (:article_id, :feed_id, :guid, :url, :now) ON CONFLICT DO NOTHING
""")


def _index_params(article_id: int, story: int, draft: ArticleDraft, feed_id: int, tags: Sequence[TagResult],
                  entities: Sequence[Entity], version: str, now: datetime) -> dict[str, Any]:
    def rows(items: list[dict[str, Any]]) -> str:
        return json.dumps([{k: v for k, v in r.items() if k not in ("article_id", "tagger_version", "created_at")}
                           for r in items])

    return {"article_id": article_id, "story": story, "feed_id": feed_id, "guid": draft.guid, "url": draft.url,
            "now": now, "version": version,
            "bands": _band_hashes(draft.fingerprint),
            "urls": sorted({draft.canonical_url, *draft.alias_urls}),
            "tags": rows([_tag_row(article_id, t, version, now) for t in tags]),
            "entities": rows([_entity_row(article_id, e, version, now) for e in entities])}


def _band_hashes(fp: Optional[Fingerprint]) -> list[int]:
    """The article's LSH band hashes as stored in story_bands (distinct, sorted)."""
    return sorted(set(fp.bands())) if fp is not None else []


def _insert_bands(session: Session, article_id: int, fp: Optional[Fingerprint]) -> None:
    """Index the article's LSH bands (the near-duplicate lookup in :func:`find_story`)."""
    hashes = _band_hashes(fp)
    if not hashes:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_PG_INSERT_BANDS, {"article_id": article_id, "bands": hashes})
    else:
        insert_ignore(session, StoryBand, [{"band_hash": h, "article_id": article_id} for h in hashes])


def update_article(session: Session, article: Article, draft: ArticleDraft, tags: Sequence[TagResult],
                   entities: Sequence[Entity], tagger_version: str) -> None:
    """Replace a stored article's text, metadata, fingerprint, tags and entities with
    *draft*'s (``newsworker reextract``).  Its URL and story stay as they are; a new
    text that exactly copies another article keeps its old content hash."""
    taken = draft.content_hash and session.execute(
        sa.select(Article.id).where(Article.content_hash == draft.content_hash, Article.id != article.id)
    ).first()
    for key in ("title", "text", "summary", "author", "site_name", "published_at", "language", "text_source",
                "fetch_error"):
        setattr(article, key, getattr(draft, key))
    if not taken:
        article.content_hash = draft.content_hash
    article.fingerprint = draft.fingerprint.to_bytes() if draft.fingerprint else None
    article.extracted_at = utcnow()
    session.add(article)
    session.execute(sa.delete(StoryBand).where(StoryBand.article_id == article.id))
    _insert_bands(session, article.id, draft.fingerprint)
    replace_analysis(session, article.id, tags, entities, tagger_version)


_EARLIEST_COPY = (sa.select(Article.id).where(Article.story_id == sa.bindparam("story"))
                  .order_by(sa.func.coalesce(Article.published_at, Article.created_at), Article.id).limit(1))
_SET_REPRESENTATIVE = (sa.update(Story).where(Story.id == sa.bindparam("story"))
                       .values(representative_article_id=_EARLIEST_COPY.scalar_subquery()))


def _set_representative(session: Session, story_id: int) -> None:
    """The story's representative is its earliest published copy (ties: first stored)."""
    session.connection().execute(_SET_REPRESENTATIVE, {"story": story_id})


def _tag_row(article_id: int, tag: TagResult, version: str, now: datetime) -> dict[str, Any]:
    return {"article_id": article_id, "name": tag.name, "score": float(tag.score), "evidence": list(tag.evidence),
            "details": tag.details, "iptc_code": tag.iptc_code, "tagger_version": version, "created_at": now}


def _entity_row(article_id: int, e: Entity, version: str, now: datetime) -> dict[str, Any]:
    return {"article_id": article_id, "kind": e.kind, "name": e.name, "code": e.code, "role": e.role, "rank": e.rank,
            "evidence": list(e.evidence), "mentions": e.mentions, "tagger_version": version, "created_at": now}


def _insert_analysis(session: Session, article_id: int, tags: Sequence[TagResult], entities: Sequence[Entity],
                     version: str, now: datetime) -> None:
    if tags:
        insert_ignore(session, Tag, [_tag_row(article_id, t, version, now) for t in tags])
    if entities:
        insert_ignore(session, ArticleEntity, [_entity_row(article_id, e, version, now) for e in entities])


def replace_analysis(session: Session, article_id: int, tags: Sequence[TagResult], entities: Sequence[Entity],
                     version: str) -> None:
    """Swap an article's tags and entities for new ones (``newsworker retag``)."""
    session.execute(sa.delete(Tag).where(Tag.article_id == article_id))
    session.execute(sa.delete(ArticleEntity).where(ArticleEntity.article_id == article_id))
    _insert_analysis(session, article_id, tags, entities, version, utcnow())


def _article_filters(*, tag: Optional[str] = None, since: Optional[datetime] = None, until: Optional[datetime] = None,
                     country: Optional[str] = None, feed: Optional[int] = None, language: Optional[str] = None,
                     ) -> list[Any]:
    """WHERE clauses on articles shared by the article and story listings.  Time filters
    use the publication time, or the storage time when the page gave none."""
    conds: list[Any] = []
    if tag:
        conds.append(Article.id.in_(select(Tag.article_id).where(Tag.name == tag)))
    if country:
        conds.append(Article.id.in_(select(ArticleEntity.article_id).where(
            ArticleEntity.kind == "country", ArticleEntity.code == country.upper())))
    if feed is not None:  # every feed that carried the article, not only the first
        conds.append(Article.id.in_(select(ArticleFeed.article_id).where(ArticleFeed.feed_id == feed)))
    if language:
        conds.append(Article.language == language.lower())
    when = sa.func.coalesce(Article.published_at, Article.created_at)
    if since:
        conds.append(when >= since)
    if until:
        conds.append(when < until)
    return conds


# What article_dict reads: plain rows, not ORM objects (a page of 50 in a third of the
# time; the fingerprint and raw ids are never loaded).
_ARTICLE_COLUMNS = (Article.id, Article.url, Article.canonical_url, Article.feed_id, Article.guid, Article.title,
                    Article.text, Article.author, Article.site_name, Article.published_at, Article.language,
                    Article.story_id, Article.content_hash, Article.text_source, Article.fetch_error, Article.fetched_at)


def _articles_query(**filters: Any) -> Any:
    """Matching articles (rows of :data:`_ARTICLE_COLUMNS` and ``feed_url``), unordered:
    the listing, the pages and the export share it."""
    q = sa.select(*_ARTICLE_COLUMNS, Feed.url.label("feed_url")).join(Feed, Feed.id == Article.feed_id, isouter=True)
    return q.where(*_article_filters(**filters))


def list_articles(
    session: Session, *, tag: Optional[str] = None, since: Optional[datetime] = None, limit: int = 50,
    country: Optional[str] = None, ids: Optional[Sequence[int]] = None,
) -> list[dict[str, Any]]:
    """Articles newest first, each with its feed URL, tags and entities, as plain dicts."""
    q = _articles_query(tag=tag, since=since, country=country)
    if ids is not None:
        q = q.where(Article.id.in_(ids))
    rows = session.execute(q.order_by(Article.created_at.desc(), Article.id.desc()).limit(limit)).all()
    return _article_dicts(session, rows)


def iter_articles(
    session: Session, *, tag: Optional[str] = None, since: Optional[datetime] = None,
    country: Optional[str] = None, batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every matching article, ascending id, as :func:`list_articles` dicts.  Keyset
    pagination (``id > last``): each page is a range scan on the primary key, however
    deep, and only one page is held in memory."""
    q = _articles_query(tag=tag, since=since, country=country).order_by(Article.id).limit(batch)
    last_id = 0
    while True:
        rows = session.execute(q.where(Article.id > last_id)).all()
        yield from _article_dicts(session, rows)
        if len(rows) < batch:
            return
        last_id = rows[-1].id


def query_articles(
    session: Session, *, q: Optional[str] = None, cursor: Optional[str] = None, limit: int = 50, **filters: Any,
) -> tuple[list[dict[str, Any]], Optional[str]]:
    """One page of articles and the cursor of the next (None on the last page).

    Without *q*: newest stored first (id descending).  With *q*: best full-text match first
    (see :mod:`worker.search`), ties newest first.  Filters as in :func:`_article_filters`.
    Keyset pagination: the cursor holds the last row's sort key, so a page costs the same
    however deep, and rows stored meanwhile never shift a later page."""
    from . import search as fts

    # Ids and sort keys first (narrow rows: the sort never carries texts), whole rows after.
    conds = _article_filters(**filters)
    if q is None:
        query = sa.select(Article.id).where(*conds)
        key = decode_cursor(cursor, "id")
        if key:
            query = query.where(Article.id < key["id"])
        keys = session.execute(query.order_by(Article.id.desc()).limit(limit + 1)).all()
        nxt = encode_cursor("id", id=keys[limit - 1][0]) if len(keys) > limit else None
    else:
        found = fts.search(session, q)
        keys, start = fts.ranked_keys(session, found, conds, decode_cursor(cursor, "rank"), limit)
        nxt = (encode_cursor("rank", score=keys[limit - 1][1], id=keys[limit - 1][0], **{"from": start})
               if len(keys) > limit else None)
    keys = keys[:limit]
    conn = session.connection()     # Core, not the ORM's execution path: these are plain rows
    by_id = {r.id: r for r in
             conn.execute(_articles_query().where(Article.id.in_([k[0] for k in keys]))).all()} if keys else {}
    out = _article_dicts(session, [by_id[k[0]] for k in keys])
    if q is not None:
        for d, k in zip(out, keys):
            d["score"] = round(k[1], 6)
    return out, nxt


def encode_cursor(kind: str, **key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps({"k": kind, **key}, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: Optional[str], kind: str) -> Optional[dict[str, Any]]:
    """The key a cursor holds; InvalidQuery when it was not made by :func:`encode_cursor`
    for the same kind of listing (a search cursor cannot page a plain listing)."""
    if not cursor:
        return None
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ok = key.get("k") == kind and isinstance(key.get("id"), int) and (
            kind != "rank" or (isinstance(key.get("score"), (int, float)) and isinstance(key.get("from", 0), int)))
    except (ValueError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise InvalidQuery(f"cursor {cursor[:40]!r} is not a cursor of this listing")
    return key


_TAG_COLUMNS = (Tag.article_id, Tag.name, Tag.score, Tag.evidence, Tag.iptc_code, Tag.tagger_version, Tag.details)
_ENTITY_COLUMNS = (ArticleEntity.article_id, ArticleEntity.kind, ArticleEntity.name, ArticleEntity.code,
                   ArticleEntity.role, ArticleEntity.rank, ArticleEntity.evidence, ArticleEntity.mentions)


def _article_dicts(session: Session, rows: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`article_dict` for :func:`_articles_query` rows; tags and entities in one query each."""
    ids = [r.id for r in rows]
    tags: dict[int, list[Any]] = {}
    entities: dict[int, list[Any]] = {}
    if ids:
        conn = session.connection()     # Core rows: the ORM's execution path costs more than the query
        for t in conn.execute(sa.select(*_TAG_COLUMNS).where(Tag.article_id.in_(ids))
                                 .order_by(Tag.article_id, Tag.score.desc())).all():
            tags.setdefault(t.article_id, []).append(t)
        for e in conn.execute(sa.select(*_ENTITY_COLUMNS).where(ArticleEntity.article_id.in_(ids))
                                 .order_by(ArticleEntity.article_id, ArticleEntity.mentions.desc(), ArticleEntity.id)).all():
            entities.setdefault(e.article_id, []).append(e)
    return [article_dict(r, r.feed_url, tags.get(r.id, []), entities.get(r.id, [])) for r in rows]


def entity_dict(e: Any) -> dict[str, Any]:
    d = {"name": e.name, "code": e.code, "evidence": list(e.evidence), "mentions": e.mentions}
    if e.kind != "country":
        d.update(role=e.role, rank=e.rank)
    return d


def entities_by_kind(entities: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"countries": [], "officials": [], "organisations": []}
    plural = {"country": "countries", "official": "officials", "organisation": "organisations"}
    for e in entities:
        out[plural[e.kind]].append(entity_dict(e))
    return out


def article_columns() -> list[str]:
    """The keys of :func:`article_dict`, in order, without a stored row (an empty CSV
    export still gets its header)."""
    return list(article_dict(Article(), None, []))


def _iso(d: Optional[datetime]) -> Optional[str]:
    return d.isoformat() if d else None


def feed_dict(f: Feed) -> dict[str, Any]:
    """A feed and its health, as `feeds list --json` and the API's /feeds give it."""
    return {"id": f.id, "url": f.url, "name": f.name, "title": f.title, "site_url": f.site_url, "group": f.group_name,
            "interval_seconds": f.interval_seconds, "enabled": f.enabled, "disabled_reason": f.disabled_reason,
            "fetch_interval": f.fetch_interval, "hint_interval": f.hint_interval,
            "last_status": f.last_status, "last_http_status": f.last_http_status, "error_count": f.error_count,
            "permanent_failures": f.permanent_failures, "moved_to": f.moved_to,
            "last_error": f.last_error, "last_fetch_at": _iso(f.last_fetch_at), "last_success_at": _iso(f.last_success_at),
            "next_fetch_at": _iso(f.next_fetch_at)}


def article_dict(a: Any, feed_url: Optional[str], tags: Sequence[Any], entities: Sequence[Any] = ()) -> dict[str, Any]:
    """An article (an ORM object or a row of its columns) with its tags and entities."""
    iso = _iso
    return {
        "id": a.id, "url": a.url, "canonical_url": a.canonical_url, "feed_id": a.feed_id, "feed_url": feed_url,
        "guid": a.guid, "title": a.title, "text": a.text, "author": a.author, "site_name": a.site_name,
        "published_at": iso(a.published_at), "language": a.language, "story_id": a.story_id,
        "content_hash": a.content_hash, "text_source": a.text_source, "fetch_error": a.fetch_error,
        "fetched_at": iso(a.fetched_at),
        "tags": [{"name": t.name, "score": t.score, "evidence": t.evidence, "iptc_code": t.iptc_code,
                  "tagger_version": t.tagger_version, "details": t.details} for t in tags],
        **entities_by_kind(entities),
    }


def list_stories(session: Session, *, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """:func:`query_stories`' first page."""
    return query_stories(session, limit=limit, **filters)[0]


def query_stories(
    session: Session, *, cursor: Optional[str] = None, limit: int = 50, **filters: Any,
) -> tuple[list[dict[str, Any]], Optional[str]]:
    """One page of stories, the one with the newest stored copy first (filters as in
    :func:`_article_filters`, on the copies), and the next page's cursor: one dict per
    story with its representative article and every copy (outlet, URL, feed) that carried it."""
    newest = sa.func.max(Article.id)        # a story's newest copy: distinct per story, so a total order
    query = (sa.select(Article.story_id, newest).where(Article.story_id.is_not(None), *_article_filters(**filters))
             .group_by(Article.story_id))
    key = decode_cursor(cursor, "story")
    if key:
        query = query.having(newest < key["id"])
    keys = session.execute(query.order_by(newest.desc()).limit(limit + 1)).all()
    nxt = encode_cursor("story", id=keys[limit - 1][1]) if len(keys) > limit else None
    story_ids = [sid for sid, _ in keys[:limit]]
    if not story_ids:
        return [], None
    rows = session.execute(
        sa.select(Article.story_id, Article.id, Article.url, Article.site_name, Article.published_at,
                  Article.created_at, Feed.url, Story.representative_article_id)
        .join(Story, Story.id == Article.story_id)
        .join(Feed, Feed.id == Article.feed_id, isouter=True)
        .where(Article.story_id.in_(story_ids))
        .order_by(Article.story_id, sa.func.coalesce(Article.published_at, Article.created_at), Article.id)
    ).all()
    copies: dict[int, list[dict[str, Any]]] = {}
    representative: dict[int, Optional[int]] = {}
    for sid, aid, url, site, published, created, feed_url, rep in rows:
        representative[sid] = rep
        copies.setdefault(sid, []).append({"article_id": aid, "url": url, "outlet": site or urlsplit(url).hostname,
                                           "feed_url": feed_url,
                                           "published_at": (published or created).isoformat()})
    # Every feed that carried a copy: an exact copy at another URL is one article listed by
    # several feeds, so the copies' outlets alone would miss the feeds that re-published it.
    feeds: dict[int, set[str]] = {}
    for sid, name in session.execute(
            sa.select(Article.story_id, sa.func.coalesce(Feed.title, Feed.name, Feed.url))
            .join(ArticleFeed, ArticleFeed.article_id == Article.id).join(Feed, Feed.id == ArticleFeed.feed_id)
            .where(Article.story_id.in_(story_ids))).all():
        feeds.setdefault(sid, set()).add(name)
    rep_ids = {sid: representative.get(sid) or copies[sid][0]["article_id"] for sid in story_ids}
    by_id = {a["id"]: a for a in list_articles(session, ids=list(rep_ids.values()), limit=len(rep_ids))}
    out = []
    for sid in story_ids:
        rep = by_id[rep_ids[sid]]
        out.append({"story_id": sid, "title": rep["title"], "url": rep["url"], "representative_article_id": rep["id"],
                    "published_at": rep["published_at"], "tags": rep["tags"], "countries": rep["countries"],
                    "outlets": sorted({c["outlet"] for c in copies.get(sid, []) if c["outlet"]}),
                    "feeds": sorted(feeds.get(sid, ())), "articles": copies.get(sid, [])})
    return out, nxt
