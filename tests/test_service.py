"""End to end through the real service: the CLI, a Celery worker process, Redis and
PostgreSQL, feeds and pages on a local HTTP server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support.proc import WorkerProcess, base_env, cli, jsonl
from worker.demo import mount_site

pytestmark = pytest.mark.services

SEED_PATH = "/news/hasanov-tufekci-meeting.html"
MIRROR_PATH = "/mirror/az-tr-defence-talks.html"


@pytest.fixture
def service_env(tmp_path, devserver, pg_url, redis_url):
    env = base_env(tmp_path, database_url=pg_url, broker_url=redis_url, result_backend=redis_url,
                   allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    return env


@pytest.fixture
def worker_proc(service_env, tmp_path):
    worker = WorkerProcess(service_env, "--concurrency", "2", log=tmp_path / "worker.log")
    worker.wait_ready()
    yield worker
    worker.stop()


def test_fetch_through_celery_stores_clean_tagged_articles_once(devserver, service_env, worker_proc, pg_url):
    feeds = mount_site(devserver)
    for url in feeds:
        cli(service_env, "feeds", "add", url)

    first = cli(service_env, "fetch", "--all", "--wait", "--timeout", "300").stdout
    assert "queued poll task" in first
    assert "feeds polled: 3, entries seen: 7, articles new: 5, failures: 0" in first, first

    articles = {a["canonical_url"].removeprefix(devserver.base_url): a
                for a in jsonl(cli(service_env, "articles", "list", "--json", "--limit", "100").stdout)}
    # The mirror's exact copy joined the seed article; the rest are separate stories.
    assert len(articles) == 5
    # The seed page and the mirror's exact copy are one article, under whichever was stored first.
    seed = next(a for a in articles.values() if "Zakir Hasanov" in a["text"])
    copies = {devserver.base_url + SEED_PATH, devserver.base_url + MIRROR_PATH}
    assert seed["canonical_url"] in copies
    assert "Colonel General Zakir Hasanov" in seed["text"]
    for boilerplate in ("ADVERTISEMENT", "Subscribe now", "All rights reserved", "Most read", "Cookie settings"):
        assert boilerplate not in seed["text"]
    assert seed["author"] in ("Staff reporter", "Wire service")
    assert seed["published_at"].startswith("2024-01-17T")
    assert seed["language"] == "en"
    assert seed["text_source"] == "page"
    assert seed["feed_url"] in feeds
    defence = {t["name"]: t for t in seed["tags"]}
    assert "defence" in defence and defence["defence"]["evidence"]
    assert defence["defence"]["score"] > 0
    assert "defence.diplomacy" in defence
    assert {"AZ", "TR"} <= {c["code"] for c in seed["countries"]}
    assert any(o["name"] == "Zakir Hasanov" and o["code"] == "AZ" for o in seed["officials"])

    removed = articles["/news/removed-story.html"]
    assert removed["text_source"] == "feed_content" and "120 million manat" in removed["text"]
    assert "HTTP 404" in removed["fetch_error"]
    assert not any(t["name"].startswith("defence") for t in articles["/sport/champions-start-title-defence.html"]["tags"])
    assert not any(t["name"].startswith("defence") for t in articles["/news/jewellery-robbery-trial.html"]["tags"])

    engine = sa.create_engine(pg_url)
    with engine.connect() as db:
        seed_feeds = db.execute(sa.text(
            "select count(*) from article_feeds where article_id = :id"), {"id": seed["id"]}).scalar()
        assert seed_feeds == 3          # world.rss, sport.atom, and the exact copy in wire.json
        urls = db.execute(sa.text("select canonical_url from article_urls where article_id = :id"),
                          {"id": seed["id"]}).scalars().all()
        assert set(urls) == copies      # utm_* and #fragment variants canonicalised away

    # Second poll: conditional GET answered 304, nothing stored twice.
    devserver.clear_requests()
    second = cli(service_env, "fetch", "--all", "--wait", "--timeout", "300").stdout
    assert "articles new: 0, failures: 0" in second, second
    feed_requests = [r for r in devserver.requests if r.path.startswith("/feeds/")]
    assert len(feed_requests) == 3
    assert all(r.headers.get("if-none-match") for r in feed_requests)
    assert all(r.status == 304 for r in feed_requests)
    with engine.connect() as db:
        assert db.execute(sa.text("select count(*) from articles")).scalar() == 5
        outcomes = db.execute(sa.text("select outcome, count(*) from fetch_events group by outcome")).all()
        assert dict(outcomes) == {"ok": 3, "not_modified": 3}
        health = db.execute(sa.text("select min(error_count), max(error_count) from feeds")).one()
        assert tuple(health) == (0, 0)
    engine.dispose()


def test_beat_dispatcher_polls_due_feeds_once(devserver, service_env, worker_proc, pg_url):
    """The beat task claims due feeds; a second dispatch while they are queued claims nothing."""
    feeds = mount_site(devserver)
    cli(service_env, "feeds", "add", feeds[0])
    code = ("from worker.tasks import dispatch_due_feeds as d; from celery.result import AsyncResult; "
            "a = d.delay(); b = d.delay(); ra = a.get(timeout=60); rb = b.get(timeout=60); "
            "print(sorted([ra, rb]))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], env=service_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1]"
