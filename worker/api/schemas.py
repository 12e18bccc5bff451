"""Response bodies of the HTTP API.  Declared, not inferred, so the OpenAPI document says
exactly what a client gets; the field names are those of `newsworker articles list --json`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from pydantic import BaseModel, Field


class TagOut(BaseModel):
    name: str = Field(description="`defence`, `defence.diplomacy`, `defence.industry`, …")
    score: float = Field(description="0–1")
    evidence: list[str] = Field(description="Matched phrases, strongest first")
    iptc_code: Optional[str] = None
    tagger_version: str
    details: Optional[dict[str, Any]] = Field(None, description="Where each phrase matched, weights, threshold")


class CountryOut(BaseModel):
    name: str
    code: Optional[str] = Field(None, description="ISO 3166-1 alpha-2")
    evidence: list[str]
    mentions: int


class PersonOrOrgOut(CountryOut):
    role: Optional[str] = None
    rank: Optional[str] = None


class ArticleOut(BaseModel):
    id: int
    url: str
    canonical_url: str
    feed_id: Optional[int] = Field(None, description="The first feed that listed it")
    feed_url: Optional[str] = None
    guid: Optional[str] = None
    title: Optional[str] = None
    text: str
    author: Optional[str] = None
    site_name: Optional[str] = None
    published_at: Optional[datetime] = None
    language: Optional[str] = None
    story_id: Optional[int] = None
    content_hash: Optional[str] = None
    text_source: str = Field(description="page | feed_content | feed_summary | title")
    fetch_error: Optional[str] = Field(None, description="Why the page was not used")
    fetched_at: Optional[datetime] = None
    tags: list[TagOut]
    countries: list[CountryOut]
    officials: list[PersonOrOrgOut]
    organisations: list[PersonOrOrgOut]
    score: Optional[float] = Field(None, description="Full-text match score (with `q` only), higher is better")


class ArticlePage(BaseModel):
    items: list[ArticleOut]
    next_cursor: Optional[str] = Field(None, description="Pass as `cursor` for the next page; null on the last")


class StoryCopyOut(BaseModel):
    article_id: int
    url: str
    outlet: Optional[str] = Field(None, description="Site name, else the URL's host")
    feed_url: Optional[str] = None
    published_at: Optional[datetime] = None


class StoryOut(BaseModel):
    story_id: int
    title: Optional[str] = None
    url: str = Field(description="The representative (earliest published) copy's URL")
    representative_article_id: int
    published_at: Optional[datetime] = None
    tags: list[TagOut] = Field(description="The representative copy's tags, with their evidence")
    countries: list[CountryOut]
    outlets: list[str] = Field(description="The outlets (site names, else hosts) of the story's copies")
    feeds: list[str] = Field(description="Every feed that carried a copy (title, else name or URL), exact "
                                         "re-publications included")
    articles: list[StoryCopyOut] = Field(description="Every copy, earliest first")


class StoryList(BaseModel):
    items: list[StoryOut]
    next_cursor: Optional[str] = Field(None, description="Pass as `cursor` for the next page; null on the last")


class TagCount(BaseModel):
    name: str
    articles: int = Field(description="Articles with this tag")


class LastPoll(BaseModel):
    started_at: datetime
    finished_at: Optional[datetime] = None
    outcome: str = Field(description="ok | not_modified | temporary | permanent")
    http_status: Optional[int] = None
    items_seen: int
    items_new: int
    error: Optional[str] = None
    duration_ms: Optional[int] = None


class FeedOut(BaseModel):
    id: int
    url: str
    name: Optional[str] = None
    title: Optional[str] = None
    site_url: Optional[str] = None
    group: Optional[str] = None
    interval_seconds: Optional[int] = Field(None, description="The operator's override")
    enabled: bool
    disabled_reason: Optional[str] = None
    fetch_interval: Optional[int] = Field(None, description="Learned from the feed (seconds)")
    hint_interval: Optional[int] = Field(None, description="The feed's own ttl / sy:update* / Cache-Control (seconds)")
    last_status: Optional[str] = Field(None, description="ok | not_modified | temporary | permanent; null: never polled")
    last_http_status: Optional[int] = None
    error_count: int = Field(description="Consecutive failed polls")
    permanent_failures: int
    moved_to: Optional[str] = None
    last_error: Optional[str] = None
    last_fetch_at: Optional[datetime] = None
    last_success_at: Optional[datetime] = None
    next_fetch_at: Optional[datetime] = None
    queued: bool = Field(description="A poll is queued or running now (a manual fetch would get 409)")
    last_poll: Optional[LastPoll] = None
    articles_24h: int = Field(description="Articles this feed listed for the first time in the last 24 hours")


class FeedPage(BaseModel):
    items: list[FeedOut]
    next_cursor: Optional[str] = None


class FetchQueued(BaseModel):
    feed_id: int
    task_id: str = Field(description="The Celery task id of the queued poll")


class Problem(BaseModel):
    detail: str = Field(description="What happened and what to do")


class Health(BaseModel):
    status: str
    database: str
