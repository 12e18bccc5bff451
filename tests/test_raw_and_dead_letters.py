"""Nothing lost: the bytes behind every article are kept (and expire), `reextract`
rebuilds articles from them without fetching, and a task that fails for good or keeps
killing its worker is set aside in the dead letters."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.support.proc import WorkerProcess, add_sample_site, base_env, cli, jsonl
from worker import raw, store
from worker.db import session_scope
from worker.models import Article, ArticleChange, DeadLetter, FetchEvent, RawDocument, TaskDelivery, utcnow


@pytest.fixture
def embedded(tmp_path, devserver):
    env = base_env(tmp_path, allowed_private_hosts=devserver.host_port)
    add_sample_site(env, devserver)
    return env, f"sqlite:///{tmp_path / 'newsworker.db'}"


def test_page_and_feed_bytes_are_kept_compressed(embedded, devserver):
    _, db = embedded
    with session_scope(db) as s:
        articles = s.execute(sa.select(Article)).scalars().all()
        page_articles = [a for a in articles if a.text_source == "page"]
        assert page_articles and all(a.raw_page_id for a in page_articles)
        assert all(a.raw_feed_id for a in articles)
        seed = next(a for a in page_articles if "Zakir Hasanov" in a.text)
        doc = s.get(RawDocument, seed.raw_page_id)
        served = devserver.lookup(seed.url.removeprefix(devserver.base_url)).body
        assert doc.kind == "page" and raw.unpack(doc.body) == served and len(doc.body) < len(served)
        feed_doc = s.get(RawDocument, seed.raw_feed_id)
        assert feed_doc.kind == "feed" and seed.url.encode() in raw.unpack(feed_doc.body)
        # the poll that found the entries points at the feed body too
        assert s.execute(sa.select(sa.func.count()).select_from(FetchEvent)
                         .where(FetchEvent.raw_id == seed.raw_feed_id)).scalar_one() == 1


def test_reextract_rebuilds_text_metadata_and_tags_without_fetching(embedded, devserver):
    env, db = embedded
    with session_scope(db) as s:
        # A broken extractor once stored garbage: damage every stored article.
        before = {a.id: (a.text, a.title, a.content_hash) for a in s.execute(sa.select(Article)).scalars()}
        s.execute(sa.update(Article).values(text="navigation scraps", title="?", content_hash=None, language=None))
        s.execute(sa.text("DELETE FROM tags"))
    devserver.clear_requests()
    out = cli(env, "reextract").stdout
    assert f"re-extracted {len(before)} articles" in out, out
    assert devserver.requests == []           # nothing fetched again
    with session_scope(db) as s:
        after = {a.id: (a.text, a.title, a.content_hash) for a in s.execute(sa.select(Article)).scalars()}
    assert after == before
    seed = next(a for a in jsonl(cli(env, "articles", "list", "--json", "--tag", "defence").stdout)
                if "Zakir Hasanov" in a["text"])
    assert any(t["name"] == "defence" and t["evidence"] for t in seed["tags"])


def test_expired_raw_bodies_are_purged_and_articles_keep_their_text(embedded):
    env, db = embedded
    with session_scope(db) as s:
        n_raw = s.execute(sa.select(sa.func.count()).select_from(RawDocument)).scalar_one()
        s.execute(sa.update(RawDocument).values(fetched_at=utcnow() - timedelta(days=40)))
        s.add(TaskDelivery(attempt="old:0", deliveries=1, updated_at=utcnow() - timedelta(days=3)))
        s.add(TaskDelivery(attempt="new:0", deliveries=1))
        changes = s.execute(sa.select(ArticleChange.id).order_by(ArticleChange.id)).scalars().all()
        assert len(changes) >= 2
        s.execute(sa.update(ArticleChange).where(ArticleChange.id == changes[0])
                  .values(changed_at=utcnow() - timedelta(days=100)))
    with session_scope(db) as s:
        removed = store.purge_expired(s, utcnow() - timedelta(days=30), utcnow() - timedelta(days=1), batch=3,
                                      changes_before=utcnow() - timedelta(days=90))
    assert removed == n_raw
    with session_scope(db) as s:        # change-feed rows past their retention go, the rest stay
        assert s.execute(sa.select(ArticleChange.id).order_by(ArticleChange.id)).scalars().all() == changes[1:]
    with session_scope(db) as s:
        assert s.execute(sa.select(sa.func.count()).select_from(RawDocument)).scalar_one() == 0
        arts = s.execute(sa.select(Article)).scalars().all()
        assert all(a.raw_page_id is None and a.raw_feed_id is None and a.text for a in arts)
        assert s.execute(sa.select(TaskDelivery.attempt)).scalars().all() == ["new:0"]
    out = cli(env, "reextract").stdout
    assert f"re-extracted 0 articles; {len(arts)} had no kept page or feed body" in out


# ---------------------------------------------------------------- dead letters, with a real worker

@pytest.mark.services
def test_failing_and_poison_tasks_go_to_dead_letters(tmp_path, pg_url, redis_url):
    env = base_env(tmp_path, database_url=pg_url, broker_url=redis_url, result_backend=redis_url, max_deliveries="2")
    cli(env, "db", "upgrade")
    worker = WorkerProcess(env, "--concurrency", "1", log=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        # 1. A message the task cannot take (no link in the entry): fails for good, no retry loop.
        _send(env, "worker.tasks.process_entry", [1, {"guid": "x"}], task_id="bad-entry-1")
        # 2. A message that has already been started max_deliveries times (it killed its worker
        #    each time): the next delivery sets it aside instead of running it again.
        with session_scope(pg_url) as s:
            s.add(TaskDelivery(attempt="poison-1:0", deliveries=2))
        _send(env, "worker.tasks.poll_feed", [999_999], task_id="poison-1")
        rows = _wait_for(pg_url, 2, worker)
        by_id = {r.task_id: r for r in rows}
        assert "TypeError" in by_id["bad-entry-1"].error and by_id["bad-entry-1"].retries == 0
        assert by_id["bad-entry-1"].args["args"][1] == {"guid": "x"}
        poison = by_id["poison-1"]
        assert poison.deliveries == 3 and "started 3 times without finishing" in poison.error
        assert poison.task_name == "worker.tasks.poll_feed"
        assert "set aside in dead_letters" in worker.log()
    finally:
        worker.stop()


def _send(env: dict[str, str], name: str, args: list, task_id: str) -> None:
    """Send a raw task message, as another program on the broker would."""
    code = f"from worker.celery_app import app; app.send_task({name!r}, args={args!r}, task_id={task_id!r})"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=60)


def _wait_for(db: str, n: int, worker: WorkerProcess, timeout: float = 90) -> list[DeadLetter]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(db) as s:
            rows = s.execute(sa.select(DeadLetter)).scalars().all()
        if len(rows) >= n:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"expected {n} dead letters, found {len(rows)}; worker log:\n{worker.log()[-4000:]}")
