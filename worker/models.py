"""Database tables.  The schema is a public interface for downstream consumers:
change it only through an Alembic migration (worker/migrations)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


# Named constraints, so migrations can alter them on PostgreSQL and SQLite alike.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.types.TypeDecorator):
    """Timestamps are stored in UTC and always come back timezone-aware (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime], dialect: Any) -> Optional[datetime]:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def _ts(*, nullable: bool = True, index: bool = False, default: Any = None) -> Any:
    kwargs: dict[str, Any] = {"sa_type": UTCDateTime, "nullable": nullable, "index": index}
    if default is not None:
        kwargs["default_factory"] = default
    else:
        kwargs["default"] = None
    return Field(**kwargs)


class Feed(SQLModel, table=True):
    __tablename__ = "feeds"

    id: Optional[int] = Field(default=None, primary_key=True)
    url: str = Field(sa_column=sa.Column(sa.Text, nullable=False, unique=True))
    name: Optional[str] = Field(default=None, sa_type=sa.Text)
    title: Optional[str] = Field(default=None, sa_type=sa.Text)
    site_url: Optional[str] = Field(default=None, sa_type=sa.Text)
    group_name: Optional[str] = Field(default=None, sa_type=sa.Text)
    interval_seconds: Optional[int] = None         # per-feed override of the default interval
    enabled: bool = Field(default=True, nullable=False)
    disabled_reason: Optional[str] = Field(default=None, sa_type=sa.Text)
    etag: Optional[str] = Field(default=None, sa_type=sa.Text)
    last_modified: Optional[str] = Field(default=None, sa_type=sa.Text)
    next_fetch_at: Optional[datetime] = _ts(index=True, default=utcnow)
    queued_at: Optional[datetime] = _ts()           # set when a poll is enqueued; cleared when it ends
    last_fetch_at: Optional[datetime] = _ts()
    last_success_at: Optional[datetime] = _ts()
    last_status: Optional[str] = Field(default=None, sa_type=sa.Text)   # ok | not_modified | temporary | permanent
    last_http_status: Optional[int] = None
    last_error: Optional[str] = Field(default=None, sa_type=sa.Text)
    error_count: int = Field(default=0, nullable=False)                  # consecutive failed polls
    permanent_failures: int = Field(default=0, nullable=False)           # consecutive permanent ones
    fetch_interval: Optional[int] = None            # learned from how often the feed publishes (seconds)
    hint_interval: Optional[int] = None             # the feed's own ttl / sy:update* / Cache-Control (seconds)
    body_sha256: Optional[str] = Field(default=None, sa_type=sa.Text)   # last body: unchanged ones are not parsed
    moved_to: Optional[str] = Field(default=None, sa_type=sa.Text)       # permanent redirect target seen …
    moved_seen: int = Field(default=0, nullable=False)                   # … on this many consecutive polls
    created_at: datetime = _ts(nullable=False, default=utcnow)


class FetchEvent(SQLModel, table=True):
    __tablename__ = "fetch_events"

    id: Optional[int] = Field(default=None, primary_key=True)
    feed_id: int = Field(foreign_key="feeds.id", index=True, ondelete="CASCADE")
    started_at: datetime = _ts(nullable=False, default=utcnow)
    finished_at: Optional[datetime] = _ts()
    outcome: str = Field(sa_type=sa.Text)                  # ok | not_modified | temporary | permanent
    http_status: Optional[int] = None
    items_seen: int = 0
    items_new: int = 0
    items_rejected: int = 0                                # entries dropped: link not http(s), over the cap
    error: Optional[str] = Field(default=None, sa_type=sa.Text)
    duration_ms: Optional[int] = None
    raw_id: Optional[int] = Field(default=None, foreign_key="raw_documents.id", ondelete="SET NULL")


class RawDocument(SQLModel, table=True):
    """A fetched page or feed body, zstd-compressed, kept for ``raw_retention_days`` so
    text and metadata can be rebuilt without fetching again.  One row per distinct body."""

    __tablename__ = "raw_documents"

    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = Field(sa_type=sa.Text)                     # page | feed
    url: str = Field(sa_type=sa.Text)                      # final URL, after redirects
    sha256: str = Field(sa_column=sa.Column(sa.Text, nullable=False, unique=True))   # of the body
    content_type: Optional[str] = Field(default=None, sa_type=sa.Text)
    size: int = 0                                          # bytes before compression
    body: bytes = Field(sa_type=sa.LargeBinary)            # zstd frame
    fetched_at: datetime = _ts(nullable=False, default=utcnow, index=True)


class DeadLetter(SQLModel, table=True):
    """A task set aside after failing for good (or being delivered too often): kept with
    its arguments and error for an operator, instead of being retried forever."""

    __tablename__ = "dead_letters"

    id: Optional[int] = Field(default=None, primary_key=True)
    task_id: str = Field(sa_type=sa.Text, index=True)
    task_name: str = Field(sa_type=sa.Text)
    args: Optional[Any] = Field(default=None, sa_type=sa.JSON, nullable=True)
    error: str = Field(sa_type=sa.Text)
    deliveries: int = 1
    retries: int = 0
    created_at: datetime = _ts(nullable=False, default=utcnow, index=True)


class TaskDelivery(SQLModel, table=True):
    """How often one attempt of a task was started.  A message that keeps killing its
    worker is redelivered with the same id and retry count; past a limit it is dead."""

    __tablename__ = "task_deliveries"

    attempt: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))   # "<task id>:<retries>"
    deliveries: int = 1
    updated_at: datetime = _ts(nullable=False, default=utcnow, index=True)


class Story(SQLModel, table=True):
    """One story, however many outlets and URLs carried it."""

    __tablename__ = "stories"

    id: Optional[int] = Field(default=None, primary_key=True)
    representative_article_id: Optional[int] = None
    created_at: datetime = _ts(nullable=False, default=utcnow)


class Article(SQLModel, table=True):
    __tablename__ = "articles"

    id: Optional[int] = Field(default=None, primary_key=True)
    url: str = Field(sa_type=sa.Text)                         # as first seen in a feed
    canonical_url: str = Field(sa_column=sa.Column(sa.Text, nullable=False, unique=True))
    guid: Optional[str] = Field(default=None, sa_type=sa.Text)
    feed_id: Optional[int] = Field(default=None, foreign_key="feeds.id", index=True, ondelete="SET NULL")
    title: Optional[str] = Field(default=None, sa_type=sa.Text)
    text: str = Field(default="", sa_type=sa.Text)
    summary: Optional[str] = Field(default=None, sa_type=sa.Text)
    author: Optional[str] = Field(default=None, sa_type=sa.Text)
    site_name: Optional[str] = Field(default=None, sa_type=sa.Text)
    published_at: Optional[datetime] = _ts(index=True)
    language: Optional[str] = Field(default=None, sa_type=sa.Text)
    # sha256 of the normalised text; NULL when there is no text.  Unique: an exact copy is one article.
    content_hash: Optional[str] = Field(default=None, sa_column=sa.Column(sa.Text, unique=True))
    story_id: Optional[int] = Field(default=None, foreign_key="stories.id", index=True)
    # MinHash signature of the text (worker.dedupe.Fingerprint), for near-copy checks.
    fingerprint: Optional[bytes] = Field(default=None, sa_type=sa.LargeBinary)
    text_source: str = Field(sa_type=sa.Text)              # page | feed_content | feed_summary | title
    fetch_error: Optional[str] = Field(default=None, sa_type=sa.Text)   # why the page was not used
    # The bytes the article was made from (kept for `newsworker reextract`, for a retention period).
    raw_page_id: Optional[int] = Field(default=None, foreign_key="raw_documents.id", ondelete="SET NULL")
    raw_feed_id: Optional[int] = Field(default=None, foreign_key="raw_documents.id", ondelete="SET NULL")
    extracted_at: Optional[datetime] = _ts()               # last (re)extraction
    fetched_at: datetime = _ts(nullable=False, default=utcnow)
    created_at: datetime = _ts(nullable=False, default=utcnow, index=True)


class ArticleURL(SQLModel, table=True):
    """Every canonical URL that leads to an article (exact copies at other URLs land here too)."""

    __tablename__ = "article_urls"

    canonical_url: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    article_id: int = Field(foreign_key="articles.id", index=True, ondelete="CASCADE")
    url: str = Field(sa_type=sa.Text)
    first_seen_at: datetime = _ts(nullable=False, default=utcnow)


class ArticleFeed(SQLModel, table=True):
    """Which feeds listed an article (an article can be reached from several feeds)."""

    __tablename__ = "article_feeds"

    article_id: int = Field(foreign_key="articles.id", primary_key=True, ondelete="CASCADE")
    feed_id: int = Field(foreign_key="feeds.id", primary_key=True, ondelete="CASCADE")
    guid: Optional[str] = Field(default=None, sa_type=sa.Text)
    entry_url: Optional[str] = Field(default=None, sa_type=sa.Text)
    first_seen_at: datetime = _ts(nullable=False, default=utcnow)


class Tag(SQLModel, table=True):
    __tablename__ = "tags"
    __table_args__ = (sa.UniqueConstraint("article_id", "name", name="uq_tags_article_name"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    article_id: int = Field(foreign_key="articles.id", index=True, ondelete="CASCADE")
    name: str = Field(sa_type=sa.Text, index=True)
    score: float
    evidence: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    details: Optional[dict[str, Any]] = Field(default=None, sa_type=sa.JSON)   # where each phrase matched, weights
    iptc_code: Optional[str] = Field(default=None, sa_type=sa.Text)
    tagger_version: str = Field(sa_type=sa.Text)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class ArticleEntity(SQLModel, table=True):
    """Countries, defence officials and organisations a story is about."""

    __tablename__ = "entities"
    __table_args__ = (
        sa.UniqueConstraint("article_id", "kind", "name", name="uq_entities_article_kind_name"),
        sa.Index("ix_entities_kind_code", "kind", "code"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    article_id: int = Field(foreign_key="articles.id", index=True, ondelete="CASCADE")
    kind: str = Field(sa_type=sa.Text)                    # country | official | organisation
    name: str = Field(sa_type=sa.Text, index=True)
    code: Optional[str] = Field(default=None, sa_type=sa.Text)    # ISO 3166-1 alpha-2 (the official's or organisation's country)
    role: Optional[str] = Field(default=None, sa_type=sa.Text)
    rank: Optional[str] = Field(default=None, sa_type=sa.Text)
    evidence: list[str] = Field(default_factory=list, sa_type=sa.JSON)
    mentions: int = 1
    tagger_version: str = Field(sa_type=sa.Text)
    created_at: datetime = _ts(nullable=False, default=utcnow)


class StoryBand(SQLModel, table=True):
    """The near-duplicate index: one row per LSH band of each article's fingerprint.
    Equal band hashes make two articles candidates for the same story."""

    __tablename__ = "story_bands"

    band_hash: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True))
    article_id: int = Field(sa_column=sa.Column(sa.Integer, sa.ForeignKey("articles.id", ondelete="CASCADE"),
                                                 primary_key=True, index=True))


class ArticleChange(SQLModel, table=True):
    """The consumer change feed (worker/changes.py, docs/changes.md): one row per article
    stored, re-extracted (`updated`) or re-tagged (`tagged`).  Written only by the
    database triggers of migration 0008, never by application code."""

    __tablename__ = "article_changes"
    __table_args__ = (sa.Index("ix_article_changes_txid_id", "txid", "id"), {"sqlite_autoincrement": True})

    id: Optional[int] = Field(default=None, sa_column=sa.Column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True))
    article_id: int = Field(index=True)                    # no foreign key: the log outlives what it logs
    kind: str = Field(sa_type=sa.Text)                     # stored | updated | tagged
    txid: Optional[int] = Field(default=None, sa_type=sa.BigInteger)   # writing transaction (PostgreSQL only)
    changed_at: datetime = _ts(nullable=False, default=utcnow)
