"""Celery tasks: thin wrappers that take ids, open one transaction, call the core,
and send follow-up tasks only after the commit."""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Optional

import httpx
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from . import pipeline, store
from .celery_app import app
from .db import session_scope
from .errors import FeedNotFound, TemporaryFetchError
from .feeds import ParsedEntry
from .http import make_client
from .models import utcnow
from .settings import get_settings
from .tagging import load_tagger

log = get_task_logger(__name__)
_client: Optional[tuple[int, httpx.Client]] = None
PAGE_TRIES = 3          # temporary page errors are retried this often before the feed's text is used


def http_client() -> httpx.Client:
    """One pooled client per worker process (never shared across a fork)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), make_client())
    return _client[1]


def backoff(retries: int, retry_after: Optional[float] = None) -> float:
    """Exponential backoff with full jitter, at least the server's Retry-After."""
    delay = random.uniform(0, min(600, 5 * 2**retries))
    return max(delay, retry_after or 0)


@app.task(soft_time_limit=30, time_limit=60)
def dispatch_due_feeds(limit: int = 1000) -> list[int]:
    """Claim the feeds that are due and enqueue one poll for each (beat runs this every minute)."""
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        ids = store.claim_due_feeds(session, now, now - timedelta(seconds=settings.claim_timeout), limit)
    for feed_id in ids:
        poll_feed.delay(feed_id)
    return ids


@app.task(bind=True, soft_time_limit=90, time_limit=120, max_retries=5)
def poll_feed(self: Any, feed_id: int) -> dict[str, Any]:
    """Poll one feed; enqueue one ``process_entry`` per new entry."""
    settings = get_settings()
    try:
        with session_scope() as session:
            result = pipeline.poll_feed(session, http_client(), feed_id, settings)
    except FeedNotFound as exc:
        return {"feed_id": feed_id, "status": "missing", "error": str(exc), "entry_tasks": []}
    except OperationalError as exc:      # database unreachable: try again later
        raise self.retry(exc=exc, countdown=backoff(self.request.retries))
    task_ids = [process_entry.delay(feed_id, e.to_dict()).id for e in result.new_entries]
    o = result.outcome
    if o.error:
        # One line an operator can act on: which feed, what happened, what newsworker will do.
        log.warning("feed %s %s: %s", feed_id, o.status, o.error)
    return {"feed_id": feed_id, "feed_url": result.feed_url, "status": o.status, "http_status": o.http_status,
            "items_seen": o.items_seen, "items_new": o.items_new, "error": o.error, "entry_tasks": task_ids}


@app.task(bind=True, soft_time_limit=90, time_limit=120, max_retries=8)
def process_entry(self: Any, feed_id: int, entry: dict[str, Any]) -> dict[str, Any]:
    """Fetch, extract, deduplicate, tag and store one feed entry."""
    settings = get_settings()
    parsed = ParsedEntry.from_dict(entry)
    last_try = self.request.retries >= PAGE_TRIES - 1
    try:
        with session_scope() as session:
            result = pipeline.process_entry(session, http_client(), feed_id, parsed, load_tagger(), settings,
                                            fallback_on_temporary=last_try)
    except TemporaryFetchError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries, exc.retry_after))
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries))
    return {"url": parsed.link, **asdict(result)}
