"""Prometheus metrics through the real service: a Celery worker process ingests the
sample site from the local server into PostgreSQL over Redis; ``render()`` then reads the
counts from the database, the queue depths from Redis and the task latency histograms
from the worker's multiprocess files, and the worker serves the latter itself."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import redis
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from tests.support.proc import ROOT, WorkerProcess, add_sample_site, base_env, cli, jsonl
from tests.support.services import free_port
from worker.metrics import render
from worker.settings import Settings

pytestmark = pytest.mark.services


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def test_render_reports_polls_articles_tags_feeds_queues_and_task_latency(tmp_path, devserver, own_db, redis_url):
    metrics_port = free_port()
    env = base_env(tmp_path, database_url=own_db, broker_url=redis_url, result_backend=redis_url,
                   allowed_private_hosts=devserver.host_port, metrics_port=str(metrics_port))
    add_sample_site(env, devserver, inline_fetch=False)

    worker = WorkerProcess(env, "--concurrency", "2", log=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        first = cli(env, "fetch", "--all", "--wait", "--timeout", "300").stdout
        assert "articles new: 5, failures: 0" in first, first
        second = cli(env, "fetch", "--all", "--wait", "--timeout", "300").stdout     # 304s this time
        assert "articles new: 0, failures: 0" in second, second
        # The worker's own endpoint: the task histograms of all its pool processes.
        served = samples(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10).read().decode())
    finally:
        worker.stop()

    engine = sa.create_engine(own_db)
    with engine.begin() as db:
        # One article task per poll's new entries, entry_batch entries at most each.
        size = Settings().entry_batch
        entry_tasks = sum(-(-n // size) for n in db.execute(sa.text(
            "SELECT items_new FROM fetch_events WHERE items_new > 0")).scalars())
        # One feed disabled by hand, another an hour overdue.
        ids = db.execute(sa.text("SELECT id FROM feeds ORDER BY id")).scalars().all()
        db.execute(sa.text("UPDATE feeds SET enabled = false, disabled_reason = 'test' WHERE id = :id"), {"id": ids[0]})
        db.execute(sa.text("UPDATE feeds SET next_fetch_at = :t WHERE id = :id"),
                   {"id": ids[1], "t": datetime.now(timezone.utc) - timedelta(hours=1)})
        # The first polls long past: counted once and kept, the newer ones counted at each scrape.
        db.execute(sa.text("UPDATE fetch_events SET started_at = started_at - interval '2 hours' WHERE outcome = 'ok'"))
    assert entry_tasks >= 3         # the three feeds' new entries (how many are new depends on timing)

    # Messages no worker consumes (the worker is stopped): 3 article tasks, 2 polls.
    broker = redis.Redis.from_url(redis_url)
    broker.delete("articles", "feeds")
    code = ("from worker.tasks import process_entry, poll_feed\n"
            "for i in range(3): process_entry.apply_async((999999, {'link': 'http://example.invalid/%d' % i}),"
            " ignore_result=True)\n"
            "for i in range(2): poll_feed.apply_async((999999,), ignore_result=True)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    # Tags as the CLI sees them: an independent count of what render() must report.
    articles = jsonl(cli(env, "articles", "list", "--json", "--limit", "100").stdout)
    tag_counts = Counter(t["name"] for a in articles for t in a["tags"])
    assert tag_counts["defence"] >= 1

    settings = Settings(var_dir=tmp_path, database_url=own_db, broker_url=redis_url)
    try:
        with Session(engine) as session:
            body, content_type = render(session, settings)
    finally:
        broker.delete("articles", "feeds")
        broker.close()
        engine.dispose()
    assert content_type.startswith("text/plain")
    found = samples(body.decode())

    assert value(found, "newsworker_polls_total", outcome="ok") == 3
    assert value(found, "newsworker_polls_total", outcome="not_modified") == 3
    assert value(found, "newsworker_polls_total", outcome="permanent") is None
    assert value(found, "newsworker_articles_total") == 5
    # /news/removed-story.html answers 404: its text came from the feed.
    assert value(found, "newsworker_articles_by_text_source_total", source="page") == 4
    assert value(found, "newsworker_articles_by_text_source_total", source="feed_content") == 1
    rendered_tags = {dict(labels)["name"]: v for (name, labels), v in found.items() if name == "newsworker_tags_total"}
    assert rendered_tags == dict(tag_counts)
    assert value(found, "newsworker_feeds", state="enabled") == 2
    assert value(found, "newsworker_feeds", state="disabled") == 1
    assert value(found, "newsworker_feeds_overdue") == 1
    assert value(found, "newsworker_dead_letters_total") == 0
    assert value(found, "newsworker_broker_up") == 1
    assert value(found, "newsworker_queue_depth", queue="articles") == 3
    assert value(found, "newsworker_queue_depth", queue="feeds") == 2

    # Task latency from the worker's pool processes (their multiprocess files): every
    # entry was processed once, and succeeded.
    for source in (found, served):
        assert value(source, "newsworker_task_seconds_count", task="process_entries", state="SUCCESS") == entry_tasks
        assert value(source, "newsworker_task_seconds_sum", task="process_entries", state="SUCCESS") > 0
        assert value(source, "newsworker_task_queue_seconds_count", task="process_entries") == entry_tasks
        polls = sum(v for (name, labels), v in source.items() if name == "newsworker_task_seconds_count"
                    and dict(labels)["task"] in ("poll_feed", "poll_feeds"))
        assert polls >= 2           # two fetch --all runs
    assert value(found, "newsworker_task_seconds_bucket", task="process_entries", state="SUCCESS",
                 le="+Inf") == entry_tasks

    # A poll recorded after the first scrape shows in the next one, the settled counts kept.
    engine = sa.create_engine(own_db)
    with engine.begin() as db:
        db.execute(sa.text("INSERT INTO fetch_events (feed_id, started_at, outcome, items_seen, items_new, "
                           "items_rejected) VALUES (:id, now(), 'temporary', 0, 0, 0)"), {"id": ids[2]})
    with Session(engine) as session:
        again = samples(render(session, settings)[0].decode())
    engine.dispose()
    assert value(again, "newsworker_polls_total", outcome="ok") == 3
    assert value(again, "newsworker_polls_total", outcome="not_modified") == 3
    assert value(again, "newsworker_polls_total", outcome="temporary") == 1


def test_render_on_the_embedded_broker_counts_sqlite_queue(tmp_path):
    """The server-less default: SQLite database and kombu's SQLAlchemy transport."""
    env = base_env(tmp_path)
    cli(env, "db", "upgrade")
    code = ("from worker.tasks import process_entry\n"
            "for i in range(2): process_entry.apply_async((1, {'link': 'http://example.invalid/%d' % i}),"
            " ignore_result=True)\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    settings = Settings(var_dir=tmp_path)
    engine = sa.create_engine(settings.database_url)
    with Session(engine) as session:
        found = samples(render(session, settings)[0].decode())
    engine.dispose()
    assert value(found, "newsworker_queue_depth", queue="articles") == 2
    assert value(found, "newsworker_queue_depth", queue="feeds") == 0
    assert value(found, "newsworker_articles_total") == 0
    assert value(found, "newsworker_feeds", state="enabled") == 0
