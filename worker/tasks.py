"""Celery tasks: thin wrappers that take ids, open one transaction, call the core,
and send follow-up tasks only after the commit."""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Optional

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy.exc import OperationalError

from . import pipeline, store
from .celery_app import app
from .db import session_scope
from .errors import FeedNotFound, TemporaryFetchError
from .feeds import ParsedEntry
from .http import make_client
from .politeness import HostBusy, Politeness, make_politeness
from .models import utcnow
from .settings import get_settings
from .tagging import load_tagger

log = get_task_logger(__name__)


class GuardedTask(app.Task):
    """At-least-once delivery, bounded: each start of a delivered message is counted
    (per task id and retry), and a message started more than ``max_deliveries`` times
    without finishing (it keeps killing its worker or hitting the hard time limit) is
    set aside in the dead letters.  So is a task that fails for good."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        if req.id and not req.is_eager:         # a delivered message, not a direct call
            try:
                with session_scope() as session:
                    starts = store.count_delivery(session, f"{req.id}:{req.retries or 0}")
            except OperationalError:
                starts = 1                      # database down: the task itself will retry
            if starts > get_settings().max_deliveries:
                error = (f"started {starts} times without finishing (worker killed or hard time limit each time); "
                         "set aside, not retried")
                self._dead_letter(req.id, args, kwargs, error, starts)
                return {"status": "dead_letter", "error": error}
        return super().__call__(*args, **kwargs)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self._dead_letter(task_id, args, kwargs, f"{type(exc).__name__}: {exc}", None)

    def _dead_letter(self, task_id: str, args: Any, kwargs: Any, error: str, starts: Optional[int]) -> None:
        retries = self.request.retries or 0
        log.error("task %s[%s] set aside in dead_letters after %s retries: %s. Inspect the row, fix the cause, "
                  "then re-run it (newsworker fetch --feed ID).", self.name, task_id, retries, error)
        try:
            with session_scope() as session:
                store.add_dead_letter(session, task_id=task_id, task_name=self.name,
                                      args={"args": list(args or ()), "kwargs": dict(kwargs or {})}, error=error,
                                      deliveries=starts or 1, retries=retries)
        except OperationalError as exc:
            log.error("could not record dead letter for task %s[%s]: database unreachable (%s)", self.name, task_id, exc)


_client: Optional[tuple[int, httpx.Client]] = None
_polite: Optional[tuple[int, Politeness]] = None
PAGE_TRIES = 3          # temporary page errors are retried this often before the feed's text is used
MAX_DEFERS = 50         # a task put off this often for a busy host gives up (the feed's next poll finds it)


def http_client() -> httpx.Client:
    """One pooled client per worker process (never shared across a fork)."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), make_client())
    return _client[1]


def politeness() -> Politeness:
    """The per-host limiter (on Redis when the broker is Redis: shared by every worker)
    and robots.txt cache of this worker process."""
    global _polite
    if _polite is None or _polite[0] != os.getpid():
        settings = get_settings()
        redis_url = settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else None
        _polite = (os.getpid(), make_politeness(settings, http_client(), redis_url))
    return _polite[1]


def defer(task: Any, exc: HostBusy, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Send the task again later, when its host is free: a new message (retries and
    delivery counts untouched), so a worker never sleeps on a busy host."""
    defers = kwargs.get("defers", 0) + 1
    if defers > MAX_DEFERS:
        raise exc
    countdown = (exc.retry_after or 1.0) + random.uniform(0, 1.0)
    again = task.apply_async(args=args, kwargs={**kwargs, "defers": defers}, countdown=countdown)
    return {"status": "deferred", "error": str(exc), "deferred_task": again.id, "entry_tasks": []}


def backoff(retries: int, retry_after: Optional[float] = None) -> float:
    """Exponential backoff with full jitter, at least the server's Retry-After."""
    delay = random.uniform(0, min(600, 5 * 2**retries))
    return max(delay, retry_after or 0)


@app.task(base=GuardedTask, soft_time_limit=30, time_limit=60)
def dispatch_due_feeds(limit: int = 1000) -> list[int]:
    """Claim the feeds that are due and enqueue one poll for each (beat runs this every minute)."""
    settings = get_settings()
    now = utcnow()
    with session_scope() as session:
        ids = store.claim_due_feeds(session, now, now - timedelta(seconds=settings.claim_timeout), limit)
    for feed_id in ids:
        poll_feed.delay(feed_id)
    return ids


@app.task(base=GuardedTask, bind=True, soft_time_limit=90, time_limit=120, max_retries=5)
def poll_feed(self: Any, feed_id: int, defers: int = 0) -> dict[str, Any]:
    """Poll one feed; enqueue one ``process_entry`` per new entry."""
    settings = get_settings()
    try:
        with session_scope() as session:
            result = pipeline.poll_feed(session, http_client(), feed_id, settings, politeness())
    except HostBusy as exc:      # the feed stays claimed; polled when its host is free
        return {"feed_id": feed_id, **defer(poll_feed, exc, (feed_id,), {"defers": defers})}
    except FeedNotFound as exc:
        return {"feed_id": feed_id, "status": "missing", "error": str(exc), "entry_tasks": []}
    except SoftTimeLimitExceeded:
        error = f"feed {feed_id}: the poll did not finish within the task's {self.soft_time_limit} s limit"
        with session_scope() as session:
            pipeline.record_interrupted_poll(session, feed_id, error, settings)
        log.warning("%s (will be retried with backoff)", error)
        return {"feed_id": feed_id, "status": "temporary", "error": error, "entry_tasks": []}
    except OperationalError as exc:      # database unreachable: try again later
        raise self.retry(exc=exc, countdown=backoff(self.request.retries))
    try:
        task_ids = [process_entry.delay(feed_id, e.to_dict(), result.raw_feed_id).id for e in result.new_entries]
    except BrokerUnavailable:
        # The poll is committed but its new entries are not all queued: make the feed due
        # again, without validators, so it is polled in full once the broker is back.
        with session_scope() as session:
            store.reopen_feed(session, feed_id, utcnow())
        log.error("feed %s: the broker went away while queuing %d new entries; the feed is due again and will "
                  "be polled in full when the broker is back", feed_id, len(result.new_entries))
        raise
    o = result.outcome
    if o.error:
        # One line an operator can act on: which feed, what happened, what newsworker will do.
        log.warning("feed %s %s: %s", feed_id, o.status, o.error)
    return {"feed_id": feed_id, "feed_url": result.feed_url, "status": o.status, "http_status": o.http_status,
            "items_seen": o.items_seen, "items_new": o.items_new, "error": o.error, "entry_tasks": task_ids}


@app.task(base=GuardedTask, bind=True, soft_time_limit=90, time_limit=120, max_retries=8)
def process_entry(self: Any, feed_id: int, entry: dict[str, Any], raw_feed_id: Optional[int] = None,
                  defers: int = 0) -> dict[str, Any]:
    """Fetch, extract, deduplicate, tag and store one feed entry."""
    settings = get_settings()
    parsed = ParsedEntry.from_dict(entry)
    last_try = self.request.retries >= PAGE_TRIES - 1
    try:
        with session_scope() as session:
            result = pipeline.process_entry(session, http_client(), feed_id, parsed, load_tagger(), settings,
                                            fallback_on_temporary=last_try, raw_feed_id=raw_feed_id,
                                            polite=politeness())
    except HostBusy as exc:
        return {"url": parsed.link, **defer(process_entry, exc, (feed_id, entry, raw_feed_id), {"defers": defers})}
    except TemporaryFetchError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries, exc.retry_after))
    except OperationalError as exc:
        raise self.retry(exc=exc, countdown=backoff(self.request.retries))
    return {"url": parsed.link, **asdict(result)}


@app.task(base=GuardedTask, soft_time_limit=300, time_limit=360)
def purge_expired() -> int:
    """Drop raw bodies past the retention period (beat runs this hourly)."""
    now = utcnow()
    with session_scope() as session:
        removed = store.purge_expired(session, now - timedelta(days=get_settings().raw_retention_days),
                                      now - timedelta(days=1))
    if removed:
        log.info("purged %d raw bodies older than %d days", removed, get_settings().raw_retention_days)
    return removed
