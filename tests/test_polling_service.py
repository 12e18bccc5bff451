"""Polling at scale, as the service does it: beat dispatching every second, a real Celery
worker (two processes) on Redis and PostgreSQL, and local servers that count requests.
One run of about twenty seconds, then what each server saw is checked: the schedule,
conditional GETs, backoff after 5xx and timeouts, disabling after 404/410, redirects
(301/308 followed, 302 not), a 429 that slows a whole host, the per-host limits, and no
feed ever polled twice at once."""

from __future__ import annotations

import time

import pytest
import redis
import sqlalchemy as sa

from tests.support.proc import BeatProcess, WorkerProcess, base_env, cli, jsonl
from worker.devserver import DevServer, build_rss

pytestmark = pytest.mark.services

MIN_DELAY = 0.2         # per host, between the end of one request and the start of the next
RETRY_AFTER = 6         # seconds, from the 429
RUN_SECONDS = 22


def rss(base: str, name: str, items: int = 1) -> bytes:
    return build_rss([{"title": f"{name} story {i}", "link": f"{base}/{name}/{i}.html", "guid": f"{name}-{i}",
                       "description": f"Summary of {name} story {i}."} for i in range(items)], name, base)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_schedule_backoff_redirects_and_host_limits_through_celery(tmp_path, devserver, own_db, redis_url):
    redis.Redis.from_url(redis_url).flushdb()       # no messages or host state from other tests
    a = devserver
    with DevServer() as b, DevServer() as c, DevServer() as d, DevServer() as e:
        feed_type = {"content_type": "application/rss+xml"}
        a.add("/ok.xml", rss(a.base_url, "ok"), **feed_type)
        a.add("/gone.xml", "no such feed", status=404, content_type="text/plain")
        a.add("/flaky.xml", "upstream down", status=500, content_type="text/plain")
        d.add("/old.xml", "", status=301, headers={"Location": f"{d.base_url}/new.xml"})
        d.add("/new.xml", rss(d.base_url, "moved"), **feed_type)
        d.add("/old308.xml", "", status=308, headers={"Location": f"{d.base_url}/new308.xml"})
        d.add("/new308.xml", rss(d.base_url, "moved308"), **feed_type)
        d.add("/gone410.xml", "gone for good", status=410, content_type="text/plain")
        d.add("/hop.xml", "", status=302, headers={"Location": f"{d.base_url}/elsewhere.xml"})
        d.add("/elsewhere.xml", rss(d.base_url, "hop"), **feed_type)
        b.add("/throttle.xml", "slow down", status=429, headers={"Retry-After": str(RETRY_AFTER)},
              content_type="text/plain")
        b.add("/b.xml", rss(b.base_url, "b"), **feed_type)
        c.add("/slow.xml", rss(c.base_url, "slow"), delay=6, **feed_type)
        e.add("/hang.xml", rss(e.base_url, "hang"), delay=10, **feed_type)     # past the read timeout
        for server in (a, b, c, d, e):
            server.add("/robots.txt", "User-agent: *\nAllow: /\n", content_type="text/plain")
            for name in ("ok", "moved", "hop", "b", "slow"):
                server.add(f"/{name}/0.html", f"<html><body><article><h1>{name}</h1><p>"
                           + f"The {name} story, told at length for the extractor. " * 12 + "</p></article></body></html>")

        env = base_env(tmp_path, database_url=own_db, broker_url=redis_url, result_backend=redis_url,
                       allowed_private_hosts=",".join(s.host_port for s in (a, b, c, d, e)), read_timeout="8",
                       dispatch_interval="1", default_interval="1", min_interval="1", max_interval="3",
                       max_backoff="30", disable_after_failures="2", redirect_confirmations="2",
                       polite_min_delay=str(MIN_DELAY), polite_max_concurrent="1")
        cli(env, "db", "upgrade")
        urls = {"ok": f"{a.base_url}/ok.xml", "gone": f"{a.base_url}/gone.xml", "flaky": f"{a.base_url}/flaky.xml",
                "old": f"{d.base_url}/old.xml", "old308": f"{d.base_url}/old308.xml",
                "gone410": f"{d.base_url}/gone410.xml", "hop": f"{d.base_url}/hop.xml", "hang": f"{e.base_url}/hang.xml",
                "throttle": f"{b.base_url}/throttle.xml", "b": f"{b.base_url}/b.xml", "slow": f"{c.base_url}/slow.xml"}
        for url in urls.values():
            cli(env, "feeds", "add", url, "--no-discover")
        ids = {f["url"]: f["id"] for f in jsonl(cli(env, "feeds", "list", "--json").stdout)}
        for server in (a, b, c, d, e):
            server.clear_requests()

        worker = WorkerProcess(env, "--concurrency", "2", log=tmp_path / "worker.log")
        beat = BeatProcess(env, log=tmp_path / "beat.log")
        said_busy = None
        try:
            worker.wait_ready()
            beat.wait_ready()
            end = time.monotonic() + RUN_SECONDS
            while time.monotonic() < end:
                if said_busy is None and c.in_flight("/slow.xml"):
                    # a manual fetch of a feed being polled says so and queues nothing
                    said_busy = cli(env, "fetch", "--feed", str(ids[urls["slow"]]), check=False)
                time.sleep(0.05)
        finally:
            beat.stop()
            worker.stop()
        engine = sa.create_engine(own_db)
        with engine.connect() as conn:
            events = conn.execute(sa.text("select feed_id, outcome, http_status, started_at from fetch_events "
                                          "order by id")).all()
        engine.dispose()
        diag = "\nfetch events:\n" + "\n".join(map(str, events)) + f"\nworker log:\n{worker.tail(40)}"
        feeds = {f["id"]: f for f in jsonl(cli(env, "feeds", "list", "--json").stdout)}

        def feed(name: str) -> dict:
            return feeds[ids[urls[name]]]

        def arrivals(server: DevServer, path: str) -> list[float]:
            return [r.at for r in server.requests_for(path)]

        # The schedule: an unchanged feed is polled again and again, never sooner than the
        # minimum interval, and after the first poll only conditionally (304).
        ok = a.requests_for("/ok.xml")
        assert len(ok) >= 4, [r.status for r in ok] + [diag]
        assert min(gaps([r.at for r in ok])) >= 1.0, gaps([r.at for r in ok])
        assert [r.status for r in ok[1:]] == [304] * (len(ok) - 1)
        assert all(r.headers.get("if-none-match") for r in ok[1:])

        # Permanent failures: exactly as many polls as it takes to disable the feed, then none.
        for name, path, status in (("gone", "/gone.xml", "404"), ("gone410", "/gone410.xml", "410")):
            assert len((a if name == "gone" else d).requests_for(path)) == 2, diag
            assert feed(name)["enabled"] is False and status in feed(name)["disabled_reason"]

        # Temporary failures back off: each wait longer than the one before (with jitter).
        flaky = gaps(arrivals(a, "/flaky.xml"))
        assert len(flaky) >= 3 and flaky[2] > flaky[0], (flaky, diag)
        assert feed("flaky")["enabled"] is True and feed("flaky")["error_count"] >= 3
        # A server that does not answer in time is a temporary failure too, never a hung worker.
        assert len(e.requests_for("/hang.xml")) >= 2
        assert feed("hang")["last_status"] == "temporary" and "timed out" in feed("hang")["last_error"]

        # A permanent redirect seen twice moves the feed; a temporary one never does.
        for old, new in (("old", "new"), ("old308", "new308")):
            assert len(d.requests_for(f"/{old}.xml")) == 2, diag
            assert feed(old)["url"] == f"{d.base_url}/{new}.xml"
            assert len(d.requests_for(f"/{new}.xml")) >= 3
        assert len(d.requests_for("/hop.xml")) >= 3 and feed("hop")["url"] == urls["hop"]

        # A 429 with Retry-After holds back every feed of that host, not just the one.
        first_429 = next(r.at for r in b.requests if r.status == 429)
        after = [r.at - first_429 for r in b.requests if r.at > first_429]
        assert after and min(after) >= RETRY_AFTER, after
        assert feed("throttle")["last_status"] == "temporary"

        # Per-host limits, as each server saw them: one request at a time, and the minimum
        # delay between the end of one and the start of the next kept.  (A redirect's next
        # hop belongs to the same fetch and follows at once: d is checked fetch by fetch.)
        for server in (a, b, c, e):
            # (e's server goes on sleeping on a request the client gave up at its timeout)
            assert server is e or server.max_in_flight() == 1, (server.host_port, diag)
            assert min(gaps([r.at for r in server.requests])) >= MIN_DELAY, (server.host_port, diag)
        fetches = [r for prev, r in zip([None, *d.requests], d.requests) if not (prev and 300 <= prev.status < 400)]
        assert min(gaps([r.at for r in fetches])) >= MIN_DELAY, [(r.path, r.status, r.at) for r in d.requests]

        # No feed polled twice at once; a manual fetch while it is polled says so.
        assert len(c.requests_for("/slow.xml")) >= 1 and c.max_in_flight("/slow.xml") == 1   # beat dispatched every second meanwhile
        assert said_busy is not None, "the slow feed was never seen in flight" + diag
        assert "already queued or being polled" in said_busy.stderr + said_busy.stdout, said_busy
