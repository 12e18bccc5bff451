"""The JSON endpoints.  Plain `def` handlers: FastAPI runs them in its thread pool, each
with its own short read transaction (the store's queries are synchronous)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlmodel import Session, select

from .. import runner, store
from ..db import session_scope
from ..models import Feed, Tag
from ..settings import Settings
from .auth import bearer, require_token
from .health import feed_rows
from .schemas import (ArticleOut, ArticlePage, FeedOut, FeedPage, FetchQueued, Health, Problem, StoryList, TagCount)

router = APIRouter()

NOT_FOUND = {404: {"model": Problem, "description": "No such feed or article"}}
BAD_QUERY = {400: {"model": Problem, "description": "A malformed cursor or search"}}


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


def session(request: Request):  # noqa: ANN201 - a generator dependency
    with session_scope(request.app.state.settings.database_url) as s:
        yield s


def _utc(when: Optional[datetime]) -> Optional[datetime]:
    """A time without zone means UTC, as everywhere in newsworker."""
    return when.replace(tzinfo=timezone.utc) if when is not None and when.tzinfo is None else when


TAG = Query(None, max_length=100, description="Only articles with this tag, e.g. `defence`", examples=["defence"])
COUNTRY = Query(None, pattern="^[A-Za-z]{2}$", description="Only stories about this country (ISO 3166-1 alpha-2)",
                examples=["AZ"])
SINCE = Query(None, description="Published (or, without a date, stored) at or after; ISO-8601, UTC if no zone")


# ---------------------------------------------------------------- articles

@router.get("/articles", response_model=ArticlePage, tags=["articles"], responses={**BAD_QUERY, **NOT_FOUND})
def list_articles(
    s: Session = Depends(session),
    tag: Optional[str] = TAG,
    country: Optional[str] = COUNTRY,
    feed: Optional[int] = Query(None, ge=1, description="Only articles this feed listed (feed id)"),
    language: Optional[str] = Query(None, max_length=16, description="ISO 639-1 code, e.g. `en`"),
    since: Optional[datetime] = SINCE,
    until: Optional[datetime] = Query(None, description="Published (or stored) before; ISO-8601, UTC if no zone"),
    q: Optional[str] = Query(None, max_length=500, description='Full-text search: words, "a phrase", `or`, `-word`; '
                                                               "best match first"),
    cursor: Optional[str] = Query(None, max_length=1000, description="`next_cursor` of the previous page"),
    limit: int = Query(50, ge=1, le=200),
) -> Any:
    """Articles, newest first (with `q`: best match first), with tags, evidence and entities."""
    if feed is not None:
        store.get_feed(s, feed)                      # an unknown feed is a 404, not an empty page
    items, next_cursor = store.query_articles(
        s, tag=tag, country=country, feed=feed, language=language, since=_utc(since), until=_utc(until),
        q=q, cursor=cursor, limit=limit)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/articles/{article_id}", response_model=ArticleOut, tags=["articles"], responses=NOT_FOUND)
def get_article(article_id: int = Path(ge=1), s: Session = Depends(session)) -> Any:
    found = store.list_articles(s, ids=[article_id], limit=1)
    if not found:
        raise HTTPException(404, f"no article {article_id} (see GET /articles)")
    return found[0]


# ---------------------------------------------------------------- stories, tags

@router.get("/stories", response_model=StoryList, tags=["stories"], responses=BAD_QUERY)
def list_stories(
    s: Session = Depends(session),
    tag: Optional[str] = TAG,
    country: Optional[str] = COUNTRY,
    since: Optional[datetime] = SINCE,
    cursor: Optional[str] = Query(None, max_length=1000, description="`next_cursor` of the previous page"),
    limit: int = Query(50, ge=1, le=200),
) -> Any:
    """Stories, the one with the newest stored copy first: each once, however many outlets
    ran it, with every copy and every feed that carried one."""
    items, next_cursor = store.query_stories(s, tag=tag, country=country, since=_utc(since), cursor=cursor, limit=limit)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/tags", response_model=list[TagCount], tags=["stories"])
def list_tags(s: Session = Depends(session)) -> Any:
    """Every tag name in use, with how many articles carry it."""
    rows = s.execute(sa.select(Tag.name, sa.func.count()).group_by(Tag.name).order_by(Tag.name)).all()
    return [{"name": name, "articles": n} for name, n in rows]


# ---------------------------------------------------------------- feeds

@router.get("/feeds", response_model=FeedPage, tags=["feeds"], responses=BAD_QUERY)
def list_feeds(
    s: Session = Depends(session),
    cursor: Optional[str] = Query(None, max_length=1000, description="`next_cursor` of the previous page"),
    limit: int = Query(500, ge=1, le=1000),
) -> Any:
    """Feeds by id, each with its health: last status and error, failures, next poll, last poll."""
    query = select(Feed).order_by(Feed.id).limit(limit + 1)
    key = store.decode_cursor(cursor, "feed")
    if key:
        query = query.where(Feed.id > key["id"])
    feeds = list(s.exec(query).all())
    page = feeds[:limit]
    nxt = store.encode_cursor("feed", id=page[-1].id) if len(feeds) > limit else None
    return {"items": feed_rows(s, page), "next_cursor": nxt}


@router.get("/feeds/{feed_id}", response_model=FeedOut, tags=["feeds"], responses=NOT_FOUND)
def get_feed(feed_id: int = Path(ge=1), s: Session = Depends(session)) -> Any:
    return feed_rows(s, [store.get_feed(s, feed_id)])[0]


@router.post(
    "/feeds/{feed_id}/fetch", status_code=202, response_model=FetchQueued, tags=["feeds"],
    responses={401: {"model": Problem, "description": "Missing or wrong token"}, **NOT_FOUND,
               409: {"model": Problem, "description": "A poll of this feed is already queued or running"},
               503: {"model": Problem, "description": "No token configured, or the broker is unreachable"}},
)
def fetch_feed(
    feed_id: int = Path(ge=1),
    credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer),
    settings: Settings = Depends(app_settings),
) -> Any:
    """Poll this feed now, through the broker, as `newsworker fetch --feed ID` does."""
    require_token(settings, credentials)
    claimed, busy = runner.claim([str(feed_id)], False)
    if busy:
        _, since = busy[0]
        raise HTTPException(409, f"feed {feed_id} is already queued or being polled (since "
                                 f"{since:%Y-%m-%d %H:%M:%S} UTC); not queued again")
    try:
        (_, task_id), = runner.enqueue(claimed)
    except Exception as exc:  # broker down: give the claim back, or the feed would wait out claim_timeout
        with session_scope(settings.database_url) as s:
            store.release_feed(s, feed_id)
        raise HTTPException(503, f"could not queue the poll of feed {feed_id}: the broker refused it ({exc}); "
                                 "check NEWSWORKER_BROKER_URL and that the broker is up, then try again") from None
    return {"feed_id": feed_id, "task_id": task_id}


# ---------------------------------------------------------------- operations

@router.get("/metrics", tags=["operations"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(s: Session = Depends(session), settings: Settings = Depends(app_settings)) -> Response:
    """Prometheus metrics: database counts, queue depths, task latencies."""
    from .. import metrics as m            # prometheus_client is imported only when scraped

    body, content_type = m.render(s, settings)
    return Response(content=body, media_type=content_type)


@router.get("/healthz", response_model=Health, tags=["operations"],
            responses={503: {"model": Problem, "description": "The database does not answer"}})
def healthz(s: Session = Depends(session)) -> Any:
    """Liveness for load balancers and compose: answers once the database does."""
    s.execute(sa.text("SELECT 1"))
    return {"status": "ok", "database": "ok"}
