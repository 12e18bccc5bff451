"""The ingestion core, one function per step:

    poll_feed:     fetch → parse → find new entries → record the outcome (one transaction)
    process_entry: canonicalise → fetch page → extract → dedupe → tag → store (one transaction)
    prefetch_pages: the pages of several entries, fetched a few ahead in threads

Each takes its HTTP client and database session as arguments; Celery tasks and the
``--inline`` CLI call the same functions."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import logging
import statistics
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator, Optional

import httpx
from sqlmodel import Session

from . import hints, http, raw, sitemaps, store
from .dedupe import content_hash, fingerprint
from .entities import extract_entities
from .errors import BlockedURL, FeedParseError, FetchError, PermanentFetchError, TemporaryFetchError
from .extract import Extracted, clean_text, detect_language, extract_page, html_to_text, parse_html
from .feeds import ParsedEntry, parse_feed
from .models import Article, Feed, RawDocument, utcnow
from .politeness import HostBusy, HostLimiter, Lease, Politeness, PolitenessUnavailable, Wait
from .schedule import NOT_MODIFIED, OK, PERMANENT, TEMPORARY, PollOutcome, next_state
from .settings import Settings
from .tagging import Tagger, load_tagger
from .urls import canonicalise

FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.5"
PAGE_ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
_HTML_TYPES = ("html", "xml", "text/plain")
log = logging.getLogger(__name__)


@dataclass
class PollResult:
    feed_id: int
    feed_url: str
    outcome: PollOutcome
    new_entries: list[ParsedEntry] = field(default_factory=list)
    raw_feed_id: Optional[int] = None      # the kept feed body the new entries came from


@dataclass
class EntryResult:
    article_id: Optional[int]
    created: bool
    text_source: Optional[str] = None
    fetch_error: Optional[str] = None
    canonical_url: Optional[str] = None
    tags: tuple[str, ...] = ()              # tag names given, for the after-commit announcement


def warm_up() -> None:
    """Load the rules and models and compile the per-language matchers now, once per
    process (a worker does this before its first task), instead of on first use."""
    tagger = load_tagger()
    detect_language("warming up the language identification model")
    for language in (None, "en", "tr", "az", "ru", "fr"):     # "fr": the English-only set
        tagger.tag("Defence minister", "The army held exercises.", language)
        extract_entities("Defence minister", "The army held exercises.", language)
    fingerprint(" ".join(f"word{i}" for i in range(40)))      # imports datasketch
    parse_feed(b'<rss version="2.0"><channel><title>t</title></channel></rss>', "http://example.org/")   # its XML reader


# ---------------------------------------------------------------- feeds

@dataclass
class FeedFetch:
    """The network half of a poll: the feed's response, or the fetch error that ended it."""

    started: datetime
    duration_ms: int                        # from the call: the wait for the host's slot included
    response: Optional[http.FetchResult] = None
    error: Optional[FetchError] = None
    answer_seconds: Optional[float] = None  # from the request leaving to its answer (None: never sent)


def poll_feed(session: Session, client: httpx.Client, feed_id: int, settings: Settings,
              polite: Optional[Politeness] = None) -> PollResult:
    """Poll one feed and record the outcome (fetch event, feed state, claim released).
    Entries not stored yet are returned for :func:`process_entry`.  Never raises a
    ``FetchError``: failures are outcomes, except ``HostBusy`` (*polite* says the host
    must wait), which is raised so the caller can poll later."""
    feed = store.get_feed(session, feed_id)
    return record_fetch(session, client, feed, fetch_feed(client, feed, settings, polite), settings)


@dataclass
class BatchPoll:
    """What :func:`poll_feeds` did: the polls recorded, the feeds whose host was busy (not
    polled, still claimed), and the fetches still running when the batch stopped waiting."""

    results: list[PollResult] = field(default_factory=list)
    busy: list[tuple[int, HostBusy]] = field(default_factory=list)
    late: dict[Future, int] = field(default_factory=dict)


SHORT_WAIT = 2.0        # seconds a batch's fetch may wait on its thread for its host's delay
MIN_PATIENCE = 0.1      # seconds any answer is waited for before a batch may leave it (see poll_feeds)
RECHECK = 0.05          # seconds between looks at fetches that have not started yet


def poll_feeds(session: Session, client: httpx.Client, feed_ids: list[int], settings: Settings,
               polite: Optional[Politeness], pool: Executor, *, patience: float = 3.0,
               finished: Optional[dict[Future, int]] = None) -> BatchPoll:
    """Poll a batch of feeds: fetched on *pool*'s threads, each result recorded in
    *session* as soon as it arrives (one transaction for the batch; a feed whose body
    must be parsed gets a savepoint, so a failure there loses only that feed's poll).
    *finished* (future -> feed id): fetches an earlier batch left late that have
    finished since, recorded in this transaction too.

    A slow host must not hold the batch (nor the worker process, which polls its next
    batch only after this one): once half the feeds have answered, a request still
    unanswered *patience* times the batch's median answer time after it left (and at
    least MIN_PATIENCE) is not waited for; nor is one not sent SHORT_WAIT after that
    (waiting for a thread that a slow answer holds); nor, once every other fetch is
    done, one waiting for its host's politeness delay.  Those fetches are returned in
    ``late`` (their feeds stay claimed) for the caller to record when they finish, as
    *finished* of a later batch (see ``worker.late_polls``)."""
    finished = finished or {}
    loaded = {feed.id: feed for feed in store.get_feeds(session, [*feed_ids, *finished.values()])}
    feeds = [loaded[i] for i in sorted(set(feed_ids)) if i in loaded]
    batch = BatchPoll()
    writes = PollWrites()
    sent: dict[int, float] = {}     # feed id -> when its request left (time.monotonic())
    # One round trip for every host's slot.  A host asked a moment ago is waited for on
    # the fetch's thread (briefly); one with all its slots taken, or that asked us to back
    # off, is not waited for (that would hold the whole batch): its feed is deferred.
    grants, limiter = polite.acquire_many([f.url for f in feeds]) if polite else ([None] * len(feeds), None)
    granted = time.monotonic()
    futures: dict[Future, Feed] = {}
    delayed: set[Future] = set()    # waiting on their threads for their host's delay
    for feed, grant in zip(feeds, grants):
        on_send = functools.partial(sent.__setitem__, feed.id)
        if not isinstance(grant, Wait):
            futures[pool.submit(fetch_feed, client, feed, settings, None, grant, limiter, granted=granted,
                                on_send=on_send)] = feed
        elif grant.reason == "delay" and grant.seconds <= SHORT_WAIT:
            # Its host was asked a moment ago: wait on the fetch's thread, not in a new message.
            future = pool.submit(fetch_feed, client, feed, settings, polite, max_wait=SHORT_WAIT, on_send=on_send)
            futures[future] = feed
            delayed.add(future)
        else:
            batch.busy.append((feed.id, HostBusy(feed.url, grant, 0.0)))
    for future, feed_id in finished.items():     # while the batch's requests are out
        if feed_id in loaded:
            _record_in_batch(session, client, loaded[feed_id], future, settings, batch, writes)
    pending = set(futures)
    answers: list[float] = []
    allowance: Optional[float] = None
    give_up = 0.0
    try:
        while pending:
            # Once half have answered, delayed fetches alone are not waited for: the
            # process's next batch records them, instead of this process idling until
            # their hosts are free.  Not sooner: a process would race ahead through
            # batches whose hosts were all just asked, every thread asleep on a delay.
            prompt = pending - delayed
            if allowance is not None and not prompt:
                break
            timeout = _patience_left([sent.get(futures[f].id) for f in prompt], allowance, give_up)
            if timeout is not None and timeout <= 0:
                break
            done, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                answer = _record_in_batch(session, client, futures[future], future, settings, batch, writes)
                if answer is not None:
                    answers.append(answer)
            if allowance is None and len(pending) <= len(futures) // 2:
                allowance = max(MIN_PATIENCE, patience * statistics.median(answers)) if answers else MIN_PATIENCE
                give_up = time.monotonic() + SHORT_WAIT + allowance
    except BaseException:           # the task's time limit, or the database went away
        for future in futures:
            future.cancel()
        raise
    store.write_polls(session, writes.feeds, writes.events)
    batch.late = {future: futures[future].id for future in pending}
    return batch


def _patience_left(sent: list[Optional[float]], allowance: Optional[float], give_up: float) -> Optional[float]:
    """How long a batch still waits for its pending fetches (their requests' send times,
    None for one not sent yet): without limit before the allowance is known; while one
    is not sent yet, a moment at a time until *give_up*; else until the last one sent
    has had its allowance (<= 0: stop waiting now)."""
    if allowance is None:
        return None
    now = time.monotonic()
    if None in sent:
        return min(RECHECK, give_up - now)
    return max(sent) + allowance - now      # type: ignore[type-var]


def _record_in_batch(session: Session, client: httpx.Client, feed: Feed, future: Future, settings: Settings,
                     batch: BatchPoll, writes: PollWrites) -> Optional[float]:
    """Record one finished fetch of a batch; returns how long its host took to answer."""
    try:
        fetched = future.result()       # fetch_feed raises nothing but HostBusy
    except HostBusy as exc:
        batch.busy.append((feed.id, exc))
        return None
    # Only a body to parse needs a savepoint; pysqlite's are unreliable, so none on SQLite.
    if (fetched.response is None or fetched.response.not_modified
            or session.get_bind().dialect.name == "sqlite"):
        batch.results.append(record_fetch(session, client, feed, fetched, settings, writes))
    else:
        try:
            with session.begin_nested():
                batch.results.append(record_fetch(session, client, feed, fetched, settings, writes))
        except Exception:       # a bug, not the feed's fault: its claim expires, it is polled again
            log.exception("feed %s (%s): recording the poll failed; the feed stays claimed until "
                          "NEWSWORKER_CLAIM_TIMEOUT passes, then is polled again", feed.id, feed.url,
                          extra={"feed_id": feed.id, "url": feed.url})
    return fetched.answer_seconds


LATE_START = 0.005      # seconds after its grant a request may start on the slot it was granted


def fetch_feed(client: httpx.Client, feed: Feed, settings: Settings, polite: Optional[Politeness] = None,
               lease: Optional[Lease] = None, limiter: Optional[HostLimiter] = None, *,
               max_wait: Optional[float] = None, granted: Optional[float] = None,
               on_send: Optional[Callable[[float], None]] = None) -> FeedFetch:
    """GET the feed conditionally, within its host's politeness limit (a slot from
    *polite*, waited for at most *max_wait*, or *lease* from *limiter*, granted at
    *granted* (``time.monotonic()``) and released here); touches no database (safe on
    any thread).  *on_send* is told ``time.monotonic()`` when the request leaves (the
    slot held).  Raises only ``HostBusy``."""
    started = utcnow()
    t0 = time.perf_counter()
    sent: Optional[float] = None
    if lease is not None and limiter is not None:
        gate: Any = _granted_slot(feed.url, lease, limiter, granted, max_wait)
    else:
        gate = polite.gate(feed.url, max_wait=max_wait) if polite else nullcontext()

    def fetched(**outcome: Any) -> FeedFetch:
        return FeedFetch(started, int((time.perf_counter() - t0) * 1000), **outcome,
                         answer_seconds=None if sent is None else time.monotonic() - sent)

    try:
        with gate:
            sent = time.monotonic()
            if on_send is not None:
                on_send(sent)
            response = http.get(
                client, feed.url, etag=feed.etag, last_modified=feed.last_modified, max_bytes=settings.max_feed_bytes,
                allowed_private_hosts=settings.allowed_private_hosts, accept=FEED_ACCEPT,
                deadline=settings.request_deadline,
            )
        return fetched(response=response)
    except HostBusy:
        raise
    except FetchError as exc:
        return fetched(error=exc)


def _granted_slot(url: str, lease: Lease, limiter: HostLimiter, granted: Optional[float],
                  max_wait: Optional[float]) -> Any:
    """The slot *lease* for a request starting now.  One that waited for a thread since
    its grant counts its host's delay from now; if another request of the host was
    granted or ended meanwhile, the lease goes back (no request was made: no delay) and
    a new slot is waited for, at most *max_wait* (default SHORT_WAIT), as the batch's own
    delayed feeds are."""
    if granted is None or time.monotonic() - granted <= LATE_START:
        return limiter.held(lease, url)
    try:
        conflict = limiter.restamp(lease)
    except PolitenessUnavailable:
        conflict = None     # Redis is gone: the lease's own stamp is all there is
    if conflict is None:
        return limiter.held(lease, url)
    limiter.release(dataclasses.replace(lease, delay=0.0))
    return limiter.slot(url, max_wait=SHORT_WAIT if max_wait is None else max_wait)


def record_fetch(session: Session, client: httpx.Client, feed: Feed, fetched: FeedFetch, settings: Settings,
                 writes: Optional[PollWrites] = None) -> PollResult:
    """The storing half of a poll: skip an unchanged body, else parse it and find the
    new entries (keeping the bytes they come from), then record the outcome (now, or in
    *writes* with the rest of a batch)."""
    new: list[ParsedEntry] = []
    raw_feed_id: Optional[int] = None
    try:
        if fetched.error is not None:
            raise fetched.error
        result = fetched.response
        assert result is not None
        body_sha = hashlib.sha256(result.content).hexdigest() if not result.not_modified else None
        if result.not_modified or body_sha == feed.body_sha256:
            # 304, or a server that ignores conditional GETs sent the same bytes: nothing to parse.
            # The fetch event tells them apart by http_status (304 vs 200).
            outcome = PollOutcome(NOT_MODIFIED, http_status=result.status, etag=result.etag or feed.etag,
                                  last_modified=result.last_modified or feed.last_modified,
                                  hint_seconds=hints.poll_hint(b"", result.headers) or feed.hint_interval)
        else:
            parsed = parse_feed(result.content, result.final_url, content_type=result.content_type,
                                max_entries=settings.max_entries_per_feed)
            if parsed.sitemaps:     # a sitemap index: the entries are in its newest child sitemaps
                parsed = sitemaps.expand_index(client, parsed, settings)
            new = _new_entries(session, feed.id, parsed.entries)
            if new:     # keep the bytes the new articles come from (for `newsworker reextract`)
                raw_feed_id = store.save_raw(session, raw.pack("feed", result.final_url, result.content,
                                                               result.content_type, sha256=body_sha))
            outcome = PollOutcome(OK, http_status=result.status, etag=result.etag, last_modified=result.last_modified,
                                  items_seen=len(parsed.entries), items_new=len(new),
                                  items_rejected=parsed.rejected_links + parsed.entries_over_cap,
                                  error=_poll_notes(parsed, settings),
                                  published=[e.published_at for e in parsed.entries if e.published_at],
                                  hint_seconds=hints.poll_hint(result.content, result.headers))
            feed.title = parsed.title or feed.title
            feed.site_url = parsed.site_url or feed.site_url
            feed.body_sha256 = body_sha
        _note_move(session, feed, result.moved_permanently_to, settings)
    except TemporaryFetchError as exc:
        outcome = PollOutcome(TEMPORARY, http_status=exc.status, error=str(exc), retry_after=exc.retry_after)
    except (PermanentFetchError, BlockedURL, FeedParseError) as exc:
        outcome = PollOutcome(PERMANENT, http_status=exc.status, error=str(exc))
    record_poll(session, feed, outcome, fetched.started, fetched.duration_ms, settings, raw_feed_id, writes)
    return PollResult(feed.id, feed.url, outcome, new, raw_feed_id)


def _note_move(session: Session, feed: Feed, target: Optional[str], settings: Settings) -> None:
    """Follow a feed that moved: its stored URL changes only after the same permanent
    redirect (301/308, never https to http) was seen on several consecutive polls, and
    only if no other feed has that URL already."""
    if not target or target == feed.url:
        if feed.moved_to is not None or feed.moved_seen:    # assigned only if changed: no flush work
            feed.moved_to, feed.moved_seen = None, 0
        return
    feed.moved_seen = feed.moved_seen + 1 if feed.moved_to == target else 1
    feed.moved_to = target
    if feed.moved_seen >= settings.redirect_confirmations and not store.feed_url_taken(session, target, feed.id):
        feed.url, feed.moved_to, feed.moved_seen = target, None, 0


def _poll_notes(parsed: Any, settings: Settings) -> Optional[str]:
    """What an operator should know about a feed that was still read."""
    notes = []
    if parsed.warning:
        notes.append(parsed.warning if parsed.sitemaps else f"feed not well-formed: {parsed.warning}")
    if parsed.rejected_links:
        notes.append(f"{parsed.rejected_links} entries with links refused: " + "; ".join(parsed.rejected_examples))
    if parsed.entries_over_cap:
        notes.append(f"{parsed.entries_over_cap} entries past the {settings.max_entries_per_feed}-entry cap ignored "
                     "(NEWSWORKER_MAX_ENTRIES_PER_FEED)")
    return "; ".join(notes) or None


def record_interrupted_poll(session: Session, feed_id: int, error: str, settings: Settings) -> None:
    """Record a poll that was cut off from outside (the task's time limit) as a
    temporary failure, so it is rescheduled with backoff and shows in the feed's health."""
    record_poll(session, store.get_feed(session, feed_id), PollOutcome(TEMPORARY, error=error), utcnow(), None, settings)


def _new_entries(session: Session, feed_id: int, entries: list[ParsedEntry]) -> list[ParsedEntry]:
    """Entries whose canonical URL is not stored yet.  Stored ones are linked to this
    feed too: an article can be reached from several feeds."""
    return link_known_entries(session, feed_id, entries)[0]


@dataclass
class PollWrites:
    """Polls recorded in a batch, written together by :func:`store.write_polls`."""

    feeds: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def record_poll(session: Session, feed: Feed, outcome: PollOutcome, started, duration_ms: Optional[int], settings: Settings,
                raw_id: Optional[int] = None, writes: Optional[PollWrites] = None) -> None:
    """Apply the scheduling policy to *feed* and log the poll as a fetch event: now, or
    added to *writes* to be written with the rest of a batch."""
    now = utcnow()
    values = _poll_values(feed, outcome, now, settings)
    event = dict(feed_id=feed.id, started_at=started, finished_at=now, outcome=outcome.status,
                 http_status=outcome.http_status, items_seen=outcome.items_seen, items_new=outcome.items_new,
                 items_rejected=outcome.items_rejected, error=outcome.error, duration_ms=duration_ms, raw_id=raw_id)
    if writes is not None:
        writes.feeds.append({"_id": feed.id, **values})
        writes.events.append(event)
        return
    for name, value in values.items():
        setattr(feed, name, value)
    session.add(feed)
    store.add_fetch_event(session, **event)


def _poll_values(feed: Feed, outcome: PollOutcome, now: datetime, settings: Settings) -> dict[str, Any]:
    """The feed's scheduling and health columns after this poll (always the same keys)."""
    state = next_state(outcome, now=now, interval=feed.interval_seconds, error_count=feed.error_count, settings=settings,
                       fetch_interval=feed.fetch_interval, permanent_failures=feed.permanent_failures)
    ok = outcome.status in (OK, NOT_MODIFIED)
    return {
        "next_fetch_at": state.next_fetch_at, "error_count": state.error_count,
        "permanent_failures": state.permanent_failures, "fetch_interval": state.fetch_interval,
        "enabled": state.enabled, "disabled_reason": state.disabled_reason or feed.disabled_reason,
        "last_fetch_at": now, "last_status": outcome.status, "last_http_status": outcome.http_status,
        "queued_at": None, "last_error": outcome.error,
        "hint_interval": outcome.hint_seconds if outcome.hint_seconds is not None else feed.hint_interval,
        "last_success_at": now if ok else feed.last_success_at,
        "etag": outcome.etag if ok else feed.etag,
        "last_modified": outcome.last_modified if ok else feed.last_modified,
    }


# ---------------------------------------------------------------- entries

@dataclass
class Page:
    """An article page as fetched: the response, or the reason there is none."""

    url: str
    result: Optional[http.FetchResult] = None
    error: Optional[FetchError] = None
    tree: Any = None          # the parsed HTML (lxml), when parsed ahead
    raw_body: Optional[raw.RawBody] = None     # the body, compressed for keeping


def parse_page(page: Page) -> Page:
    """Parse the page's HTML and compress its bytes for keeping.  lxml and zstd release
    the GIL, so pages fetched ahead in threads are prepared there, beside extraction."""
    if page.result is not None and page.tree is None:
        r = page.result
        page.tree = parse_html(r.content)
        page.raw_body = raw.pack("page", r.final_url, r.content, r.content_type)
    return page


def fetch_page(client: httpx.Client, url: str, settings: Settings, polite: Optional[Politeness] = None) -> Page:
    """GET an article page (robots.txt and the host's politeness permitting).  Never
    raises ``FetchError`` but ``HostBusy``: a failure is kept in the value, so pages can
    be fetched ahead (in threads) of the step that uses them."""
    try:
        with polite.gate(url, page=True) if polite else nullcontext():
            result = http.get(client, url, max_bytes=settings.max_page_bytes,
                              allowed_private_hosts=settings.allowed_private_hosts, accept=PAGE_ACCEPT,
                              deadline=settings.request_deadline)
        ctype = result.content_type.lower()
        if ctype and not any(t in ctype for t in _HTML_TYPES):
            raise PermanentFetchError(url, f"not an HTML page (Content-Type {result.content_type})", status=result.status)
        return Page(url, result)
    except HostBusy:
        raise
    except FetchError as exc:
        return Page(url, error=exc)


PREFETCH = 2    # pages in flight ahead of extraction: more threads only contend for the GIL (4: 5% slower)


def prefetch_pages(client: httpx.Client, entries: list[ParsedEntry], settings: Settings,
                   polite: Optional[Politeness] = None, ahead: int = PREFETCH) -> Iterator[Page]:
    """The entries' pages in order, fetched (and parsed) up to *ahead* at a time in
    threads (never more than a host's politeness lets in flight), so network waits
    overlap with extraction instead of adding to it.  Raises ``HostBusy`` for a page
    whose host stayed busy; the pages after it are dropped."""
    ahead = max(1, min(ahead, settings.polite_max_concurrent))

    def fetch(entry: ParsedEntry) -> Page:
        return parse_page(fetch_page(client, entry.link, settings, polite))

    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="prefetch")
    window: deque[Future[Page]] = deque()
    todo = iter(entries)
    try:
        window.extend(pool.submit(fetch, entry) for entry in itertools.islice(todo, ahead))
        while window:
            page = window.popleft().result()
            window.extend(pool.submit(fetch, entry) for entry in itertools.islice(todo, 1))
            yield page
    finally:
        pool.shutdown(wait=False, cancel_futures=True)      # an abandoned window is not waited for


def link_known_entries(session: Session, feed_id: int, entries: list[ParsedEntry],
                       ) -> tuple[list[ParsedEntry], list[tuple[ParsedEntry, EntryResult]]]:
    """Split *entries* (one per canonical URL, the first kept) into those still to fetch
    and those whose URL is stored already (a redelivered task, another feed's copy),
    which are linked to the feed here: one query to look them up, one to link them."""
    by_url = {canonicalise(e.link): e for e in entries}
    known = store.known_url_map(session, list(by_url))
    store.link_feed_many(session, feed_id, {aid: (by_url[u].guid, by_url[u].link) for u, aid in known.items()})
    todo = [e for u, e in by_url.items() if u not in known]
    linked = [(by_url[u], EntryResult(aid, False, canonical_url=u)) for u, aid in known.items()]
    return todo, linked


def process_entry(
    session: Session, client: httpx.Client, feed_id: int, entry: ParsedEntry, tagger: Tagger, settings: Settings,
    *, fallback_on_temporary: bool = True, page: Optional[Page] = None, raw_feed_id: Optional[int] = None,
    polite: Optional[Politeness] = None,
) -> EntryResult:
    """Store one feed entry as an article (or link it to the article it duplicates).
    *page* is the entry's page when already fetched; *raw_feed_id* the kept feed body
    the entry came from.  With ``fallback_on_temporary=False``
    a temporary page-fetch error is raised so the caller can retry later; otherwise the
    feed's own content is used."""
    canonical = canonicalise(entry.link)
    if page is None:
        # Not fetched yet: a known URL (a redelivered task, another feed's entry) needs no fetch.
        existing = store.known_article(session, [canonical])
        if existing is not None:
            store.link_feed(session, existing, feed_id, entry.guid, entry.link)
            return EntryResult(existing, False)
        page = parse_page(fetch_page(client, entry.link, settings, polite))
    draft = make_article(entry, canonical, page, settings, fallback_on_temporary=fallback_on_temporary,
                         raw_feed_id=raw_feed_id)
    if draft.canonical_url != canonical:
        existing = store.known_article(session, [draft.canonical_url])
        if existing is not None:
            store.add_urls(session, existing, [canonical], entry.link)
            store.link_feed(session, existing, feed_id, entry.guid, entry.link)
            return EntryResult(existing, False)
    tags = tagger.tag(draft.title, draft.text, draft.language)
    entities = extract_entities(draft.title, draft.text, draft.language)
    article_id, created = store.save_article(session, draft, feed_id, tags, entities, tagger.version)
    return EntryResult(article_id, created, draft.text_source, draft.fetch_error, draft.canonical_url,
                       tuple(sorted(t.name for t in tags)))


def make_article(
    entry: ParsedEntry, canonical: str, page: Page, settings: Settings, *, fallback_on_temporary: bool = True,
    raw_feed_id: Optional[int] = None,
) -> store.ArticleDraft:
    """The article for *entry*: the page's text when it was fetched and has an article,
    else the feed's own content, and a note of which and why."""
    extracted: Optional[Extracted] = None
    fetch_error: Optional[str] = None
    aliases: set[str] = set()
    if page.error is not None:
        if isinstance(page.error, TemporaryFetchError) and not fallback_on_temporary:
            raise page.error
        fetch_error = str(page.error)
    elif page.result is not None:
        extracted = extract_page(page.tree if page.tree is not None else page.result.content, page.result.final_url)
        aliases.add(canonicalise(page.result.final_url))
        if extracted is None:
            fetch_error = f"{entry.link}: no article text found on the page"

    feed_content = html_to_text(entry.content).strip()
    feed_summary = html_to_text(entry.summary).strip()
    if extracted is not None and len(extracted.text) >= len(feed_content) / 2:
        text, source = extracted.text, "page"
    elif feed_content:
        # The page failed, or gave much less than the feed itself (paywall, teaser page).
        text, source = feed_content, "feed_content"
        if extracted is not None:
            fetch_error = f"{entry.link}: page text much shorter than the feed's content"
    elif feed_summary:
        text, source = feed_summary, "feed_summary"
    else:
        text, source = "", "title"
    text = clean_text(text, settings.max_text_chars)
    title = clean_text(entry.title or (extracted.title if extracted else "") or "") or None
    page_canonical = canonicalise(extracted.canonical_url) if extracted and extracted.canonical_url else None
    final_canonical = page_canonical or canonical
    aliases.add(canonical)
    aliases.discard(final_canonical)
    summary = clean_text(feed_summary or (extracted.description if extracted else None) or "", 2000)
    return store.ArticleDraft(
        url=entry.link,
        canonical_url=final_canonical,
        text=text,
        text_source=source,
        guid=entry.guid,
        title=title,
        summary=summary or None,
        author=entry.author or (clean_text(extracted.author, 500) or None if extracted and extracted.author else None),
        site_name=clean_text(extracted.site_name, 500) or None if extracted and extracted.site_name else None,
        published_at=entry.published_at or (extracted.published_at if extracted else None),
        language=detect_language(f"{title or ''}\n{text}"),
        content_hash=content_hash(text),
        fingerprint=fingerprint(text) if source in ("page", "feed_content") else None,
        fetch_error=fetch_error,
        alias_urls=tuple(sorted(aliases)),
        raw_page=page.raw_body,
        raw_feed_id=raw_feed_id,
    )


# ---------------------------------------------------------------- re-extraction

def reextract_article(session: Session, article_id: int, tagger: Tagger, settings: Settings) -> bool:
    """Rebuild one stored article's text, metadata, fingerprint, tags and entities from
    its kept page and feed bodies, without fetching.  False when nothing was kept."""
    a = session.get(Article, article_id)
    if a is None or (a.raw_page_id is None and a.raw_feed_id is None):
        return False
    entry = _kept_entry(session, a, settings) or ParsedEntry(
        link=a.url, guid=a.guid, title=a.title, summary=a.summary, author=a.author, published_at=a.published_at)
    doc = session.get(RawDocument, a.raw_page_id) if a.raw_page_id else None
    if doc is not None:
        result = http.FetchResult(doc.url, doc.url, 200, raw.unpack(doc.body), {"content-type": doc.content_type or ""})
        page = parse_page(Page(doc.url, result))
    else:
        page = Page(a.url, error=PermanentFetchError(a.url, a.fetch_error or "the page body was not kept"))
    draft = make_article(entry, a.canonical_url, page, settings, raw_feed_id=a.raw_feed_id)
    tags = tagger.tag(draft.title, draft.text, draft.language)
    store.update_article(session, a, draft, tags, extract_entities(draft.title, draft.text, draft.language),
                         tagger.version)
    return True


def _kept_entry(session: Session, article: Article, settings: Settings) -> Optional[ParsedEntry]:
    """The article's entry, parsed again from the kept feed body."""
    doc = session.get(RawDocument, article.raw_feed_id) if article.raw_feed_id else None
    if doc is None:
        return None
    try:
        parsed = parse_feed(raw.unpack(doc.body), doc.url, content_type=doc.content_type or "",
                            max_entries=settings.max_entries_per_feed)
    except FeedParseError:
        return None
    for e in parsed.entries:
        if e.link == article.url or (article.guid and e.guid == article.guid) or canonicalise(e.link) == article.canonical_url:
            return e
    return None
