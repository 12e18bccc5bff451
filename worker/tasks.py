"""Celery tasks: thin wrappers that take ids, open one transaction, call the core,
and send follow-up tasks only after the commit."""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import timedelta
from typing import Any, Optional

import httpx
import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown
from celery.utils.log import get_task_logger
from kombu.exceptions import OperationalError as BrokerUnavailable
from sqlalchemy.exc import OperationalError

from . import changes, pipeline, store
from .celery_app import app
from .db import get_engine, session_scope
from .errors import FeedNotFound, TemporaryFetchError
from .feeds import ParsedEntry
from .http import make_client
from .late_polls import Finished, LatePolls
from .politeness import HostBusy, Politeness, group_by_wait, interleave_hosts, make_politeness
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
            req.starts = starts                 # process_entries splits a batch delivered again
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
_pool: Optional[tuple[int, ThreadPoolExecutor]] = None
_late: Optional[tuple[int, LatePolls]] = None
_lock = threading.Lock()


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()      # a forked child must not inherit a lock held at the fork


os.register_at_fork(after_in_child=_new_lock)
PAGE_TRIES = 3          # temporary page errors are retried this often before the feed's text is used
MAX_DEFERS = 50         # a task put off this often for a busy host gives up (the feed's next poll finds it)
MAX_DEFER_SECONDS = 600


def http_client() -> httpx.Client:
    """One pooled client per worker process (never shared across a fork; shared by the
    threads of a poll batch)."""
    global _client
    with _lock:
        if _client is None or _client[0] != os.getpid():
            _client = (os.getpid(), make_client())
        return _client[1]


def poll_pool() -> ThreadPoolExecutor:
    """The threads that fetch the feeds of a poll batch, one pool per worker process."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=get_settings().poll_threads,
                                                     thread_name_prefix="poll"))
        return _pool[1]


def politeness() -> Politeness:
    """The per-host limiter (on Redis when the broker is Redis: shared by every worker)
    and robots.txt cache of this worker process."""
    global _polite
    client = http_client()
    with _lock:
        if _polite is None or _polite[0] != os.getpid():
            settings = get_settings()
            redis_url = settings.broker_url if settings.broker_url.startswith(("redis://", "rediss://")) else None
            _polite = (os.getpid(), make_politeness(settings, client, redis_url))
        return _polite[1]


@worker_process_init.connect
def _open_process_resources(**_: Any) -> None:
    """A pool process opens its HTTP client, host limiter and a database connection when
    it starts, not in its first task: a poll or fetch sent to an idle worker does not
    wait for them (tens of milliseconds each: the TLS context, robots.txt and limiter
    set-up, the first connection and its type lookups)."""
    politeness()
    threading.Thread(target=_connect_database, name="connect-database", daemon=True).start()


def _connect_database() -> None:
    # On a thread: a database that does not answer must not hold up the process start
    # (Celery restarts a pool process that is not ready within a few seconds).
    try:
        get_engine().connect().close()      # a pooled connection, kept for the first task
    except OperationalError as exc:
        log.warning("could not connect to the database at worker start (%s); tasks retry until it is back", exc)


def defer(task: Any, exc: HostBusy, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Send the task again later, when its host is free: a new message (retries and
    delivery counts untouched), so a worker never sleeps on a busy host."""
    defers = kwargs.get("defers", 0) + 1
    if defers > MAX_DEFERS:
        raise exc
    # At most 10 minutes (well inside the visibility timeout and the claim timeout): a host
    # that asks for longer is simply asked again then.
    countdown = min(exc.retry_after or 1.0, MAX_DEFER_SECONDS) + random.uniform(0, 1.0)
    again = task.apply_async(args=args, kwargs={**kwargs, "defers": defers}, countdown=countdown)
    return {"status": "deferred", "error": str(exc), "deferred_task": again.id, "entry_tasks": []}


def backoff(retries: int, retry_after: Optional[float] = None) -> float:
    """Exponential backoff with full jitter, at least the server's Retry-After."""
    delay = random.uniform(0, min(600, 5 * 2**retries))
    return max(delay, retry_after or 0)


@app.task(base=GuardedTask, soft_time_limit=50, time_limit=60)
def dispatch_due_feeds(batch: int = 1000) -> int:
    """Claim the feeds that are due, *batch* at a time in one short transaction each (up
    to ``dispatch_max``; the rest wait for the next run), and enqueue their polls,
    ``poll_batch`` feeds a message (beat runs this every minute).  The claimed feeds are
    queued host by host in turn, so a batch, and batches that run side by side, hold
    different hosts and seldom wait for a host's politeness delay.  Returns how many
    feeds were queued."""
    settings = get_settings()
    claimed: list[tuple[int, str]] = []
    while len(claimed) < settings.dispatch_max:
        now = utcnow()
        with session_scope() as session:
            due = store.claim_due_feeds(session, now, now - timedelta(seconds=settings.claim_timeout),
                                        min(batch, settings.dispatch_max - len(claimed)))
        claimed.extend(due)
        if len(due) < batch:
            break
    ids = interleave_hosts(claimed)
    for i in range(0, len(ids), settings.poll_batch):
        poll_feeds.apply_async((ids[i:i + settings.poll_batch],), ignore_result=True)     # nobody waits for these
    return len(ids)     # a count, not the ids: beat's results stay small in Redis


@app.task(base=GuardedTask, bind=True, soft_time_limit=90, time_limit=120, max_retries=5)
def poll_feed(self: Any, feed_id: int, defers: int = 0) -> dict[str, Any]:
    """Poll one feed; enqueue one ``process_entry`` per new entry."""
    try:
        return _poll(feed_id)
    except HostBusy as exc:      # the feed stays claimed; polled when its host is free
        _keep_claims([feed_id])
        return {"feed_id": feed_id, **defer(poll_feed, exc, (feed_id,), {"defers": defers})}
    except FeedNotFound as exc:
        return {"feed_id": feed_id, "status": "missing", "error": str(exc), "entry_tasks": []}
    except SoftTimeLimitExceeded:
        error = f"feed {feed_id}: the poll did not finish within the task's {self.soft_time_limit} s limit"
        with session_scope() as session:
            pipeline.record_interrupted_poll(session, feed_id, error, get_settings())
        log.warning("%s (will be retried with backoff)", error)
        return {"feed_id": feed_id, "status": "temporary", "error": error, "entry_tasks": []}
    except OperationalError as exc:      # database unreachable: try again later
        raise self.retry(exc=exc, countdown=backoff(self.request.retries))


@app.task(base=GuardedTask, bind=True, soft_time_limit=240, time_limit=300, max_retries=5)
def poll_feeds(self: Any, feed_ids: list[int], defers: int = 0) -> dict[str, int]:
    """Poll a batch of feeds the dispatcher claimed: fetched ``poll_threads`` at a time
    (a poll mostly waits on the network), recorded in one transaction, then their new
    entries queued.  One message and one commit per batch instead of per feed keeps the
    broker's, Celery's and the database's share of an unchanged feed's poll small.  The
    feeds whose host was busy are deferred until it is free, those that may go at about
    the same time together (:func:`politeness.group_by_wait`).  Fetches an earlier batch
    of this process left late, finished since, are recorded in this one's transaction."""
    carried = late_polls().take()
    try:
        return _poll_batch(feed_ids, defers, carried)
    except SoftTimeLimitExceeded:
        released = [*feed_ids, *(feed_id for feed_id, _ in carried.values())]
        with session_scope() as session:       # nothing of the batch was committed: all due again
            for feed_id in released:
                store.release_feed(session, feed_id)
        log.warning("a poll batch of %d feeds did not finish within its %s s limit; nothing of it was recorded and "
                    "its feeds are released for the next dispatch: %s", len(released), self.soft_time_limit, released)
        return {"released": len(released)}
    except OperationalError as exc:      # database unreachable: the whole batch again later
        if carried:
            log.warning("feeds %s: late polls not recorded (database unreachable); polled again after "
                        "NEWSWORKER_CLAIM_TIMEOUT", sorted(feed_id for feed_id, _ in carried.values()))
        raise self.retry(exc=exc, countdown=backoff(self.request.retries))


def _poll_batch(feed_ids: list[int], defers: int, carried: Finished) -> dict[str, int]:
    """A batch's polls and the late ones *carried* into it, in one transaction; after the
    commit: its own late fetches kept for the next batch, busy feeds deferred, new entries queued."""
    with session_scope() as session:
        batch = pipeline.poll_feeds(session, http_client(), feed_ids, get_settings(), politeness(), poll_pool(),
                                    finished={future: feed_id for future, (feed_id, _) in carried.items()})
    for future, feed_id in batch.late.items():      # finish on the pool's threads, after this commit
        late_polls().add(future, feed_id, defers)
    own = dict(carried.values())        # a carried feed keeps its own count of defers
    by_count: dict[int, list[tuple[int, HostBusy]]] = {}
    for busy in batch.busy:
        by_count.setdefault(own.get(busy[0], defers), []).append(busy)
    for count, busy_feeds in by_count.items():
        _defer_polls(busy_feeds, count)
    statuses = Counter(summary["status"] for summary in _queue_entries(batch.results, track=False))
    statuses["deferred"] += len(batch.busy)
    statuses["late"] += len(batch.late)
    return dict(statuses)


def _record_carried(finished: Finished) -> None:
    """Late fetches no batch took in time (the queue is empty): recorded by themselves."""
    _poll_batch([], 0, finished)


def late_polls() -> LatePolls:
    """This worker process's finished late fetches, waiting for its next poll batch."""
    global _late
    with _lock:
        if _late is None or _late[0] != os.getpid():
            _late = (os.getpid(), LatePolls(_record_carried))
        return _late[1]


@worker_process_shutdown.connect
def _record_late_polls_at_exit(**_: Any) -> None:
    if _late is not None and _late[0] == os.getpid():
        _late[1].flush()


def _defer_polls(busy: list[tuple[int, HostBusy]], defers: int) -> None:
    """Feeds whose host was busy: their claims renewed, then polled again once their
    hosts are free, those that may go at about the same time in one message."""
    if busy:
        _keep_claims([feed_id for feed_id, _ in busy])
    for waiting in group_by_wait(busy):
        defer(poll_feeds, waiting[-1][1], ([feed_id for feed_id, _ in waiting],), {"defers": defers})


def _keep_claims(feed_ids: list[int]) -> None:
    """A deferred poll renews its feeds' claims, so the dispatcher does not queue them
    again while the deferred message waits."""
    with session_scope() as session:
        store.renew_claims(session, feed_ids, utcnow())


def _poll(feed_id: int) -> dict[str, Any]:
    with session_scope() as session:
        result = pipeline.poll_feed(session, http_client(), feed_id, get_settings(), politeness())
    return _queue_entries([result])[0]


def _queue_entries(results: list[pipeline.PollResult], *, track: bool = True) -> list[dict[str, Any]]:
    """After the polls' commit: queue one ``process_entry`` per new entry, all in one
    round trip to the broker (with *track*, their results are kept for ``fetch
    --wait``), and log each failed poll in one line an operator can act on."""
    summaries = []
    size = get_settings().entry_batch
    try:
        with app.producer_or_acquire() as producer, producer.batch():
            for result in results:
                entries = result.new_entries
                task_ids = [_send_entries(result.feed_id, entries[i:i + size], result.raw_feed_id, producer=producer,
                                          ignore_result=not track) for i in range(0, len(entries), size)]
                summaries.append(_summary(result, task_ids))
    except (BrokerUnavailable, redis.RedisError, OSError) as exc:
        # The polls are committed but their new entries are not all queued: make those
        # feeds due again, without validators, so they are polled in full once the broker
        # is back.  Nothing is lost, so the task itself has not failed.
        unqueued = [r for r in results if r.new_entries]
        with session_scope() as session:
            for result in unqueued:
                store.reopen_feed(session, result.feed_id, utcnow())
        log.error("the broker went away while queuing the new entries of feeds %s (%s); they are due again and "
                  "will be polled in full when the broker is back", [r.feed_id for r in unqueued], exc)
        summaries += [_summary(r, []) for r in results[len(summaries):]]
        for summary, result in zip(summaries, results):
            if result.new_entries:      # sent in one batch at the end: none of them went out
                summary.update(entry_tasks=[], error="new entries not queued (broker unavailable); the feed is due again")
    return summaries


def _send_entries(feed_id: int, entries: list[ParsedEntry], raw_feed_id: Optional[int], **options: Any) -> str:
    """Queue entries of one feed for ``process_entries``; returns the task id."""
    links = ", ".join(repr(e.link) for e in entries[:2]) + (f", … {len(entries)} in all" if len(entries) > 2 else "")
    return process_entries.apply_async((feed_id, [e.to_dict() for e in entries], raw_feed_id),
                                       argsrepr=f"({feed_id}, [{links}])", kwargsrepr="{}", **options).id


def _send_entry(feed_id: int, entry: ParsedEntry, raw_feed_id: Optional[int], **options: Any) -> str:
    """Queue one entry for ``process_entry`` (its own retries and time limits); returns the task id."""
    return process_entry.apply_async((feed_id, entry.to_dict(), raw_feed_id), argsrepr=f"({feed_id}, {entry.link!r})",
                                     kwargsrepr="{}", **options).id


def _summary(result: pipeline.PollResult, task_ids: list[str]) -> dict[str, Any]:
    o = result.outcome
    if o.error:
        log.warning("feed %s %s: %s", result.feed_id, o.status, o.error,
                    extra={"feed_id": result.feed_id, "url": result.feed_url})   # a batch's context holds feed_ids only
    return {"feed_id": result.feed_id, "feed_url": result.feed_url, "status": o.status, "http_status": o.http_status,
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
    return _entry_done(feed_id, parsed, result)


@app.task(base=GuardedTask, bind=True, soft_time_limit=600, time_limit=660, max_retries=8)
def process_entries(self: Any, feed_id: int, entries: list[dict[str, Any]], raw_feed_id: Optional[int] = None,
                    defers: int = 0) -> dict[str, Any]:
    """Fetch, extract, deduplicate, tag and store new entries of one feed poll, one
    transaction each, their pages fetched a few ahead in threads: a worker process
    extracts one article while the next pages download, instead of idling on the
    network.  What cannot finish here goes on as its own task: an entry whose page had a
    temporary error (``process_entry``, with its retries), the entries of a host that
    stayed busy (deferred together), the rest of a batch cut off by the time limit.  A
    batch delivered again (its worker died or was stopped) is split into one
    ``process_entry`` per entry, so an entry that kills its worker is set aside alone."""
    settings = get_settings()
    todo = [ParsedEntry.from_dict(e) for e in entries]
    ignore_result = bool(getattr(self.request, "ignore_result", False))
    if getattr(self.request, "starts", 1) > 1:
        split = [_send_entry(feed_id, e, raw_feed_id, ignore_result=ignore_result) for e in todo]
        log.warning("a batch of %d entries of feed %s was delivered again; split into one task per entry", len(todo),
                    feed_id, extra={"feed_id": feed_id})
        return {"feed_id": feed_id, "articles": [], "entry_tasks": split}
    articles: list[dict[str, Any]] = []
    follow: list[str] = []
    done = 0        # entries of *todo* finished here
    try:
        # One session (one pooled connection) for the batch, one transaction per entry.
        with session_scope() as session:
            todo, linked = pipeline.link_known_entries(session, feed_id, todo)
            session.commit()
            for entry, result in linked:
                articles.append(_entry_done(feed_id, entry, result))
            client, polite, tagger = http_client(), politeness(), load_tagger()
            for entry, page in zip(todo, pipeline.prefetch_pages(client, todo, settings, polite)):
                try:
                    result = pipeline.process_entry(session, client, feed_id, entry, tagger, settings, page=page,
                                                    fallback_on_temporary=False, raw_feed_id=raw_feed_id)
                    session.commit()
                except TemporaryFetchError as exc:     # tried again alone, as its first retry
                    session.rollback()
                    follow.append(_send_entry(feed_id, entry, raw_feed_id, ignore_result=ignore_result, retries=1,
                                              countdown=backoff(0, exc.retry_after)))
                except (OperationalError, SoftTimeLimitExceeded):
                    raise
                except Exception:       # noqa: BLE001 - this entry's own failure: it goes on alone
                    session.rollback()
                    log.exception("%s: storing this entry failed; it goes on as a task of its own (set aside in "
                                  "the dead letters if it fails again)", entry.link,
                                  extra={"feed_id": feed_id, "url": entry.link})
                    follow.append(_send_entry(feed_id, entry, raw_feed_id, ignore_result=ignore_result))
                else:
                    articles.append(_entry_done(feed_id, entry, result))
                done += 1
    except HostBusy as exc:
        rest = (feed_id, [e.to_dict() for e in todo[done:]], raw_feed_id)
        follow.append(defer(process_entries, exc, rest, {"defers": defers})["deferred_task"])
    except SoftTimeLimitExceeded:
        if done == len(todo):
            return {"feed_id": feed_id, "articles": articles, "entry_tasks": follow}
        log.warning("feed %s: a batch of %d entries did not finish within %s s; the entry in hand (%s) and the %d "
                    "after it go on as new tasks", feed_id, len(entries), self.soft_time_limit, todo[done].link,
                    len(todo) - done - 1, extra={"feed_id": feed_id})
        follow.append(_send_entry(feed_id, todo[done], raw_feed_id, ignore_result=ignore_result))
        if todo[done + 1:]:
            follow.append(_send_entries(feed_id, todo[done + 1:], raw_feed_id, ignore_result=ignore_result))
    except OperationalError as exc:     # database unreachable: the entries not stored yet, later
        raise self.retry(args=(feed_id, [e.to_dict() for e in todo[done:]], raw_feed_id), kwargs={"defers": defers},
                         exc=exc, countdown=backoff(self.request.retries))
    return {"feed_id": feed_id, "articles": articles, "entry_tasks": follow}


def _entry_done(feed_id: int, entry: ParsedEntry, result: pipeline.EntryResult) -> dict[str, Any]:
    """After an entry's commit: announce a new article, log one line an operator can
    follow (feed, URL, article), and return the entry's result."""
    if result.created:      # after the commit: never announced for rolled-back work
        changes.publish_stored(result.article_id, result.canonical_url, result.tags)
    log.info("%s %s article %s%s", entry.link, "stored as" if result.created else "already stored as",
             result.article_id, f" (text from {result.text_source})" if result.text_source else "",
             extra={"feed_id": feed_id, "article_id": result.article_id, "url": entry.link})
    return {"url": entry.link, **asdict(result)}


@app.task(base=GuardedTask, soft_time_limit=300, time_limit=360)
def purge_expired() -> int:
    """Drop raw bodies and change-feed rows past their retention periods (beat runs this hourly)."""
    now, settings = utcnow(), get_settings()
    with session_scope() as session:
        removed = store.purge_expired(session, now - timedelta(days=settings.raw_retention_days), now - timedelta(days=1),
                                      changes_before=now - timedelta(days=settings.change_retention_days))
    if removed:
        log.info("purged %d raw bodies older than %d days", removed, settings.raw_retention_days)
    return removed
