"""The manual trigger behind ``newsworker fetch``: claim feeds, then either enqueue
polls for a worker or run the same core functions in this process."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Optional

from sqlmodel import select

from . import store
from .db import session_scope
from .models import Feed, utcnow
from .schedule import NOT_MODIFIED, OK
from .settings import get_settings


@dataclass
class Summary:
    feeds: int = 0
    entries_seen: int = 0
    articles_new: int = 0
    failures: int = 0
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"feeds polled: {self.feeds}, entries seen: {self.entries_seen}, "
                f"articles new: {self.articles_new}, failures: {self.failures}")


def claim(selectors: list[str], all_feeds: bool) -> tuple[list[int], list[tuple[int, datetime]]]:
    """Claim the chosen feeds for a poll.  Returns (claimed ids, [(busy id, queued since)])."""
    settings = get_settings()
    now = utcnow()
    stale = now - timedelta(seconds=settings.claim_timeout)
    with session_scope() as s:
        if all_feeds:
            feeds = list(s.exec(select(Feed).where(Feed.enabled.is_(True)).order_by(Feed.id)).all())
        else:
            feeds = [store.get_feed(s, sel) for sel in dict.fromkeys(selectors)]
        claimed, busy = [], []
        for f in feeds:
            if store.claim_feed(s, f.id, now, stale):
                claimed.append(f.id)
            else:
                busy.append((f.id, f.queued_at))
    return claimed, busy


def enqueue(feed_ids: list[int]) -> list[tuple[int, str]]:
    """Send one poll per feed.  By task name: the CLI need not import the pipeline."""
    from .celery_app import app

    return [(fid, app.send_task("worker.tasks.poll_feed", args=(fid,)).id) for fid in feed_ids]


def wait(tasks: list[tuple[int, str]], timeout: float) -> Summary:
    """Wait for the polls and every article task they spawned."""
    from celery.result import AsyncResult, ResultSet

    from .celery_app import app

    summary = Summary()
    child_ids: list[str] = []
    for fid, task_id in tasks:
        r = AsyncResult(task_id, app=app).get(timeout=timeout, propagate=False)
        while isinstance(r, dict) and r.get("deferred_task"):     # put off for a busy host: follow it
            r = AsyncResult(r["deferred_task"], app=app).get(timeout=timeout, propagate=False)
        summary.feeds += 1
        if not isinstance(r, dict):
            summary.failures += 1
            summary.details.append(f"feed {fid}: poll task failed: {r}")
            continue
        summary.entries_seen += r.get("items_seen") or 0
        if r["status"] not in (OK, NOT_MODIFIED):
            summary.failures += 1
        summary.details.append(f"feed {fid}: {r['status']}" + (f" — {r['error']}" if r.get("error") else "")
                               + f" ({r.get('items_seen', 0)} entries, {r.get('items_new', 0)} new)")
        child_ids.extend(r.get("entry_tasks") or [])
    while child_ids:
        rs = ResultSet([AsyncResult(i, app=app) for i in child_ids])
        join = rs.join_native if rs.supports_native_join else rs.join     # Redis: one subscription, no polling
        child_ids = []
        for r in join(timeout=timeout, propagate=False):
            if not isinstance(r, dict):
                summary.failures += 1
                summary.details.append(f"article task failed: {r}")
                continue
            # a batch's results are under "articles"; its follow-ups (an entry retried
            # alone, the rest deferred for a busy host) under "entry_tasks"
            summary.articles_new += sum(bool(a.get("created")) for a in r.get("articles", [r]))
            child_ids.extend(t for t in (r.get("deferred_task"), *(r.get("entry_tasks") or ())) if t)
    return summary


def run_inline(feed_ids: list[int], on_event: Optional[Callable[..., None]] = None) -> Summary:
    """Poll and process the feeds here, as a worker would: the same steps, the entries
    stored a group per transaction (:func:`_store_entries`)."""
    from . import pipeline
    from .http import make_client
    from .politeness import make_politeness
    from .tagging import load_tagger

    settings = get_settings()
    tagger = load_tagger()
    summary = Summary()
    notify = on_event or (lambda *a, **k: None)
    with make_client(settings) as client:
        # This process only: wait for a busy host as long as it takes (no task to re-queue).
        polite = make_politeness(settings, client, None, max_wait=settings.request_deadline * 10)
        for fid in feed_ids:
            with session_scope() as s:
                result = pipeline.poll_feed(s, client, fid, settings, polite)
            o = result.outcome
            summary.feeds += 1
            summary.entries_seen += o.items_seen
            if o.status not in (OK, NOT_MODIFIED):
                summary.failures += 1
                summary.details.append(f"feed {fid}: {o.status} — {o.error}")
            notify("entries", f"feed {fid}: {len(result.new_entries)} new entries", len(result.new_entries))
            pages = pipeline.prefetch_pages(client, result.new_entries, settings, polite)
            with session_scope() as s:          # one connection for the feed's entries
                summary.articles_new += _store_entries(
                    s, zip(result.new_entries, pages),
                    lambda s, entry, page: pipeline.process_entry(s, client, fid, entry, tagger, settings, page=page,
                                                                  raw_feed_id=result.raw_feed_id),
                    on_entry=lambda entry: notify("entry", entry.link))
            notify("feed", f"feed {fid}: {o.status}")
    return summary


# Entries stored per transaction in this process: a commit per article was a twentieth of
# an article's time on SQLite (its WAL and FTS5 index written each time).  Articles are
# visible to readers within COMMIT_SECONDS.
COMMIT_EVERY, COMMIT_SECONDS = 20, 1.0


def _store_entries(session: Any, pages: Iterable[tuple[Any, Any]], process: Callable[[Any, Any, Any], Any],
                   on_entry: Callable[[Any], None]) -> int:
    """*process* each (entry, page), committing every COMMIT_EVERY entries or COMMIT_SECONDS;
    returns the articles created.  When one fails (or is interrupted), the entries before
    it in its group are stored again one transaction each (from their bytes: extraction
    prunes the parsed page) before the error goes on, so no other entry's article is lost;
    an error from *pages* itself (a host that stayed busy) commits the group first."""
    created, group, since = 0, [], time.monotonic()
    try:
        for entry, page in pages:
            try:
                created += process(session, entry, page).created
            except BaseException:
                session.rollback()
                redo, group = group, []
                for done, done_page in redo:
                    process(session, done, done_page)
                    session.commit()
                raise
            group.append((entry, dataclasses.replace(page, tree=None)))     # not the parsed page: its bytes
            on_entry(entry)
            if len(group) >= COMMIT_EVERY or time.monotonic() - since >= COMMIT_SECONDS:
                session.commit()
                group, since = [], time.monotonic()
    finally:
        if group:
            session.commit()
    return created


def _for_each_article(cond: Any, work: Callable[[Any, list[int]], int],
                      on_progress: Optional[Callable[[int, int], None]], batch: int) -> tuple[int, int]:
    """Run *work(session, ids)* over the articles matching *cond*, in id order, one
    transaction per batch; returns (how many *work* reported done, articles seen)."""
    import sqlalchemy as sa

    from .models import Article

    with session_scope() as s:
        total = s.execute(sa.select(sa.func.count()).select_from(Article).where(cond)).scalar_one()
    seen, done, last_id = 0, 0, 0
    while True:
        with session_scope() as s:
            ids = s.execute(sa.select(Article.id).where(cond, Article.id > last_id).order_by(Article.id)
                            .limit(batch)).scalars().all()
            done += work(s, list(ids)) if ids else 0
        if not ids:
            return done, seen
        seen += len(ids)
        last_id = ids[-1]
        if on_progress:
            on_progress(seen, total)


def _since(since: Optional[datetime]) -> Any:
    import sqlalchemy as sa

    from .models import Article

    return sa.true() if since is None else sa.func.coalesce(Article.published_at, Article.created_at) >= since


def retag(since: Optional[datetime] = None, on_progress: Optional[Callable[[int, int], None]] = None,
          batch: int = 200) -> tuple[int, str]:
    """Re-tag stored articles (published or stored at or after *since*) with the current
    rules, replacing their tags and entities.  One transaction per batch; returns
    (articles re-tagged, tagger version)."""
    import sqlalchemy as sa

    from .entities import extract_entities
    from .models import Article
    from .tagging import load_tagger

    tagger = load_tagger()

    def work(s: Any, ids: list[int]) -> int:
        rows = s.execute(sa.select(Article.id, Article.title, Article.text, Article.language)
                         .where(Article.id.in_(ids))).all()
        for aid, title, text, language in rows:
            store.replace_analysis(s, aid, tagger.tag(title, text, language),
                                   extract_entities(title, text, language), tagger.version)
        return len(rows)

    return _for_each_article(_since(since), work, on_progress, batch)[0], tagger.version


def reextract(since: Optional[datetime] = None, on_progress: Optional[Callable[[int, int], None]] = None,
              batch: int = 50) -> tuple[int, int]:
    """Rebuild text, metadata, tags and entities of stored articles from their kept
    page and feed bodies, without fetching.  Returns (rebuilt, without kept bodies)."""
    from . import pipeline
    from .tagging import load_tagger

    settings = get_settings()
    tagger = load_tagger()

    def work(s: Any, ids: list[int]) -> int:
        return sum(pipeline.reextract_article(s, aid, tagger, settings) for aid in ids)

    rebuilt, seen = _for_each_article(_since(since), work, on_progress, batch)
    return rebuilt, seen - rebuilt
