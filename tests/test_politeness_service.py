"""Politeness in the real service: a Celery worker (two processes) on Redis keeps the
per-host minimum delay across its processes, and article pages respect robots.txt."""

from __future__ import annotations

import pytest

from tests.support.proc import WorkerProcess, base_env, cli, jsonl
from worker.devserver import build_rss

pytestmark = pytest.mark.services

MIN_DELAY = 0.4


def test_worker_keeps_the_per_host_delay_and_respects_robots(tmp_path, devserver, own_db, redis_url):
    base = devserver.base_url
    pages = [f"/site/story-{i}.html" for i in range(6)]
    for i, path in enumerate(pages):
        devserver.add(path, f"<html><body><article><h1>Story {i}</h1><p>"
                            + f"Paragraph {i} of a story that is long enough to be an article. " * 12
                            + "</p></article></body></html>")
    devserver.add("/robots.txt", "User-agent: *\nDisallow: /site/story-5.html\n", content_type="text/plain")
    devserver.add("/site/feed.xml", build_rss([{"title": f"Story {i}", "link": base + p, "guid": p,
                                                "description": f"Feed summary of story {i}, kept when the page "
                                                               "may not be fetched."}
                                               for i, p in enumerate(pages)], "site", base),
                  content_type="application/rss+xml")
    env = base_env(tmp_path, database_url=own_db, broker_url=redis_url, result_backend=redis_url,
                   allowed_private_hosts=devserver.host_port, polite_min_delay=str(MIN_DELAY),
                   polite_max_concurrent="2")
    cli(env, "db", "upgrade")
    cli(env, "feeds", "add", f"{base}/site/feed.xml")
    devserver.clear_requests()
    worker = WorkerProcess(env, "--concurrency", "2", log=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        out = cli(env, "fetch", "--all", "--wait", "--timeout", "120").stdout
        assert "articles new: 6" in out, out + worker.log()[-3000:]
    finally:
        worker.stop()
    # every request to the host, feed, robots.txt and pages alike, kept the minimum delay
    starts = sorted(r.at for r in devserver.requests)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert len(starts) >= 7 and min(gaps) >= MIN_DELAY, gaps     # counted from the end of the previous request
    assert 1 <= len(devserver.requests_for("/robots.txt")) <= 2     # once per worker process at most, then cached
    assert devserver.requests_for("/site/story-5.html") == []       # disallowed: never fetched
    articles = {a["url"].removeprefix(base): a for a in jsonl(cli(env, "articles", "list", "--json").stdout)}
    refused = articles["/site/story-5.html"]
    assert refused["text_source"] == "feed_summary" and "robots.txt" in refused["fetch_error"]
    assert articles["/site/story-0.html"]["text_source"] == "page"
