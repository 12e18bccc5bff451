"""Article tasks in batches (``process_entries``) through a real Celery worker on
PostgreSQL and Redis: a poll's new entries go out a few to a message, their pages
fetched ahead in threads; what a batch cannot finish goes on as its own task."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from tests.support.proc import ROOT, WorkerProcess, base_env, cli, fetch_through_worker
from worker.devserver import build_rss

pytestmark = pytest.mark.services

TOPICS = ["harbour cranes", "river ferries", "mountain railways", "city tramways", "airport shuttles"]


def article_page(n: int, topic: str) -> str:
    """A small news page whose text is its own (no two share a paragraph)."""
    paragraphs = "".join(
        f"<p>Report {n}, part {i}: engineers inspected the {topic} on day {n * 10 + i} and wrote that "
        f"maintenance of the {topic} would continue through week {n + i} with {i + 2} crews.</p>"
        for i in range(6))
    return (f"<html><head><title>Update {n} on the {topic}</title></head><body><nav>Home | News</nav>"
            f"<article><h1>Update {n} on the {topic}</h1>{paragraphs}</article>"
            f"<footer>All rights reserved</footer></body></html>")


def mount_feed(devserver, entries: int, *, failing: set[int] = frozenset()) -> tuple[str, list[str]]:
    """A feed of *entries* pages; those in *failing* answer 503 to their first request."""
    paths = [f"/batch/story-{n}.html" for n in range(entries)]
    for n, path in enumerate(paths):
        devserver.add(path, article_page(n, TOPICS[n % len(TOPICS)]), fail_first=1 if n in failing else 0)
    items = [{"title": f"Update {n}", "link": devserver.base_url + path, "guid": path,
              "pub_date": datetime(2024, 5, 1, 12, n, tzinfo=timezone.utc)} for n, path in enumerate(paths)]
    devserver.add("/batch/feed.xml", build_rss(items, "Batch test", devserver.base_url + "/batch/"),
                  content_type="application/rss+xml")
    return devserver.base_url + "/batch/feed.xml", paths


@pytest.fixture
def batch_env(tmp_path, devserver, own_db, redis_url):
    env = base_env(tmp_path, database_url=own_db, broker_url=redis_url, result_backend=redis_url,
                   allowed_private_hosts=devserver.host_port, entry_batch="3")
    cli(env, "db", "upgrade")
    return env


def stored(db_url: str) -> dict[str, tuple[str, int]]:
    """{entry URL: (text source, article id)} of every stored article."""
    engine = sa.create_engine(db_url)
    with engine.connect() as db:
        rows = db.execute(sa.text("SELECT url, text_source, id FROM articles")).all()
    engine.dispose()
    return {url: (source, aid) for url, source, aid in rows}


def test_entries_go_out_in_batches_and_a_temporary_failure_goes_on_alone(devserver, batch_env, own_db, tmp_path):
    """Seven new entries with batches of three: three article tasks.  Story 4's page answers
    503 once: its batch hands it to a process_entry task of its own, which fetches it again
    after the Retry-After and stores it from the page; --wait follows that task too."""
    feed, paths = mount_feed(devserver, 7, failing={4})
    cli(batch_env, "feeds", "add", feed)
    out, log = fetch_through_worker(batch_env, tmp_path / "worker.log")
    assert "feeds polled: 1, entries seen: 7, articles new: 7, failures: 0" in out, out

    articles = stored(own_db)
    assert sorted(articles) == sorted(devserver.base_url + p for p in paths)
    assert {source for source, _ in articles.values()} == {"page"}      # story 4 too: from its page, later
    assert [r.status for r in devserver.requests if r.path == paths[4]] == [503, 200]

    batches = re.findall(r"process_entries\[([0-9a-f-]+)\] succeeded", log)
    assert len(batches) == 3, log[-3000:]
    alone = re.findall(r"process_entry\[([0-9a-f-]+)\] succeeded", log)
    assert len(alone) == 1, log[-3000:]
    # one line per entry naming the article it became
    for path in paths:
        assert re.search(re.escape(devserver.base_url + path) + r" stored as article \d+ \(text from page\)", log), path


def test_a_batch_of_stored_entries_links_them_without_fetching(devserver, batch_env, own_db, tmp_path):
    """A batch whose entries are stored already (a message delivered again, entries
    another feed's batch stored meanwhile) links them to its feed in one query and
    fetches no page."""
    feed, paths = mount_feed(devserver, 4)
    cli(batch_env, "feeds", "add", feed)
    cli(batch_env, "feeds", "add", "--no-discover", devserver.base_url + "/batch/other.xml")   # never polled
    worker = WorkerProcess(batch_env, "--concurrency", "2", log=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        first = cli(batch_env, "fetch", "--feed", feed, "--wait", "--timeout", "300").stdout
        assert "articles new: 4" in first, first
        devserver.clear_requests()
        code = ("import json, sys\nfrom worker.tasks import process_entries\n"
                "print(json.dumps(process_entries.apply_async((2, json.loads(sys.argv[1]))).get(timeout=120)))")
        entries = [{"link": devserver.base_url + p, "guid": p} for p in paths]
        done = subprocess.run([sys.executable, "-c", code, json.dumps(entries)], env=batch_env, cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
    finally:
        worker.stop()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ids = {aid for _, aid in stored(own_db).values()}
    assert sorted(a["article_id"] for a in result["articles"]) == sorted(ids)
    assert not any(a["created"] for a in result["articles"]) and result["entry_tasks"] == []
    assert devserver.requests == []             # no page fetched again
    engine = sa.create_engine(own_db)
    with engine.connect() as db:
        links = db.execute(sa.text("SELECT feed_id, count(*) FROM article_feeds GROUP BY feed_id ORDER BY feed_id")).all()
    engine.dispose()
    assert [tuple(r) for r in links] == [(1, 4), (2, 4)]
    assert len(re.findall(r" already stored as article \d+", worker.log())) == 4


def test_an_entry_that_fails_unexpectedly_goes_on_alone_and_the_rest_are_stored(devserver, tmp_path, redis_url):
    """An entry whose processing raises something unforeseen (a page that trips a parser
    bug) must not take its batch with it: the others are stored, it is queued as its own
    process_entry task (which sets it aside alone if it fails again).  The task body is
    called directly, in a process of its own, with one entry made to fail."""
    import redis as redis_lib

    feed, paths = mount_feed(devserver, 3)
    env = base_env(tmp_path, database_url=f"sqlite:///{tmp_path}/batch.db", broker_url=redis_url,
                   result_backend=redis_url, allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    cli(env, "feeds", "add", "--no-discover", feed)
    broken = devserver.base_url + paths[1]
    code = ("import json, sys\n"
            "import logging; logging.basicConfig(level=logging.INFO)\n"
            "from worker import pipeline, tasks\n"
            "real = pipeline.process_entry\n"
            "def flaky(session, client, feed_id, entry, *a, **k):\n"
            "    if entry.link == sys.argv[2]:\n"
            "        raise ValueError('a parser bug')\n"
            "    return real(session, client, feed_id, entry, *a, **k)\n"
            "pipeline.process_entry = flaky\n"
            "print(json.dumps(tasks.process_entries.run(1, json.loads(sys.argv[1]))))\n")
    entries = [{"link": devserver.base_url + p, "guid": p} for p in paths]
    broker = redis_lib.Redis.from_url(redis_url)
    broker.delete("articles")
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(entries), broken], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        queued = [json.loads(m) for m in broker.lrange("articles", 0, -1)]
    finally:
        broker.delete("articles")
        broker.close()
    assert sorted(a["url"] for a in result["articles"]) == sorted(e["link"] for e in entries if e["link"] != broken)
    assert all(a["created"] for a in result["articles"]) and len(result["entry_tasks"]) == 1
    assert [(m["headers"]["task"], m["headers"]["id"]) for m in queued] == \
        [("worker.tasks.process_entry", result["entry_tasks"][0])]
    assert f"{broken}: storing this entry failed; it goes on as a task of its own" in done.stderr
    assert "ValueError: a parser bug" in done.stderr
