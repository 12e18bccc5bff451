"""``make soak``: continuous polling against a local server that mixes good and hostile
feeds, through the real service (Celery on Redis and PostgreSQL), with worker restarts.

  - good feeds gain new items (the 181 real Zyte pages) throughout the run;
  - hostile feeds and pages: XML bombs, XXE, gzip and brotli bombs, a dripping server,
    a slow server, 404/410/429/500, redirect loops, redirects to the metadata address,
    an HTML page instead of a feed, javascript:/data: links, NUL bytes, mojibake,
    oversized pages, unresolvable hosts;
  - worker A runs the whole time (its memory is sampled); worker B is stopped every
    few minutes, alternately with SIGTERM and SIGKILL, and started again; one beat.

At the end every good page must be stored exactly once, every hostile feed must have
a recorded error, and worker A's processes must not grow.  Prints a report and writes
bench/results/soak.json.  ``--minutes`` sets the length (30 for the issue's run)."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, corpus_dir  # noqa: E402
from worker.devserver import DevServer, build_atom, build_rss, mount_zyte_corpus  # noqa: E402
from worker.urls import canonicalise  # noqa: E402

GOOD_FEEDS = 12
RESULTS = ROOT / "bench" / "results"


# ---------------------------------------------------------------- hostile routes

def _bomb_gzip(mib: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * (1 << 20)
    return b"".join(c.compress(block) for _ in range(mib)) + c.flush()


def _bomb_brotli(mib: int) -> bytes:
    import brotli

    c = brotli.Compressor(quality=5)
    block = b"\0" * (1 << 20)
    return b"".join(c.process(block) for _ in range(mib)) + c.finish()


def mount_hostile(server: DevServer, good_page: str) -> dict[str, str]:
    """Hostile feeds, each at its own path.  Returns {path: what must be recorded}:
    "error" (the poll fails with a reason), "rejected" (entries dropped and counted),
    "inert" (parsed, with nothing expanded or fetched)."""
    base = server.base_url
    laughs = ('<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY a "lol">'
              + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
              + ']><rss version="2.0"><channel><title>&j;</title><item><title>&j;</title>'
              f'<link>{good_page}?laughs</link></item></channel></rss>')
    xxe = ('<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY x SYSTEM "file:///etc/passwd">'
           f'<!ENTITY y SYSTEM "{base}/secret.txt">]><rss version="2.0"><channel><title>xxe</title>'
           f'<item><title>&x;&y;</title><link>{base}/xxe-page.html</link><description>&x;</description></item>'
           '</channel></rss>')
    bad_links = build_rss([
        {"title": "script", "link": "javascript:alert(1)", "guid": "js"},
        {"title": "data", "link": "data:text/html,<script>alert(1)</script>", "guid": "data"},
        {"title": "file", "link": "file:///etc/passwd", "guid": "file"},
        {"title": "Caf\u00c3\u00a9 mojibake \u00e2\u20ac\u201c and a NUL \x00 here", "link": f"{base}/mojibake.html",
         "guid": "moji", "description": "D\u00c3\u00bcsseldorf \x00 nul"},
        {"title": "bomb page", "link": f"{base}/bomb-page.html", "guid": "bomb-page"},
        {"title": "huge page", "link": f"{base}/huge-page.html", "guid": "huge-page"},
        {"title": "dripping page", "link": f"{base}/drip-page.html", "guid": "drip-page",
         "description": "A page that drips its bytes; the feed's summary is kept instead of waiting for ever."},
        {"title": "dead host", "link": "http://unresolvable.invalid/story.html", "guid": "dead",
         "description": "The host does not resolve: after retries the feed's own text is stored."},
        {"title": "metadata", "link": "http://169.254.169.254/latest/meta-data/", "guid": "meta"},
    ], "hostile links", base)
    rss = "application/rss+xml"
    routes = {
        "/hostile/billion-laughs.xml": (laughs.encode(), rss, {}),
        "/hostile/xxe.xml": (xxe.encode(), rss, {}),
        "/hostile/gzip-bomb.xml": (_bomb_gzip(1024), rss, {"Content-Encoding": "gzip"}),
        "/hostile/brotli-bomb.xml": (_bomb_brotli(1024), rss, {"Content-Encoding": "br"}),
        "/hostile/not-a-feed.xml": (b"<html><body><p>Just a page.</p></body></html>", "text/html", {}),
        "/hostile/garbage.xml": (os.urandom(20_000), rss, {}),
        "/hostile/bad-links.xml": (bad_links, rss, {}),
    }
    for path, (body, ctype, headers) in routes.items():
        server.add(path, body, content_type=ctype, headers=headers)
    server.add("/hostile/drip.xml", build_rss([], "drip", base), content_type=rss, drip=1.0)
    server.add("/hostile/slow.xml", build_rss([], "slow", base), content_type=rss, delay=45)
    server.add("/hostile/500.xml", b"oops", status=500)
    server.add("/hostile/429.xml", b"slow down", status=429, headers={"Retry-After": "30"})
    server.add("/hostile/410.xml", b"gone", status=410)
    server.add("/hostile/loop.xml", b"", status=302, headers={"Location": "/hostile/loop2.xml"})
    server.add("/hostile/loop2.xml", b"", status=302, headers={"Location": "/hostile/loop.xml"})
    server.add("/hostile/metadata.xml", b"", status=301, headers={"Location": "http://169.254.169.254/latest/"})
    # 404: /hostile/404.xml is simply not served.
    server.add("/secret.txt", b"SECRET-SHOULD-NEVER-BE-FETCHED")
    server.add("/xxe-page.html", b"<html><body><article><p>" + b"An ordinary page behind a hostile feed. " * 20
               + b"</p></article></body></html>")
    server.add("/mojibake.html", "<html><head><meta charset='utf-8'></head><body><article><p>"
               + "Caf\u00c3\u00a9 in D\u00c3\u00bcsseldorf \u2014 a page with mis-decoded text and a NUL \x00. " * 10
               + "</p></article></body></html>")
    server.add("/bomb-page.html", _bomb_gzip(512), headers={"Content-Encoding": "gzip"})
    server.add("/huge-page.html", b"<html><body>" + b"<p>filler words here</p>" * 400_000 + b"</body></html>")
    server.add("/drip-page.html", b"<html><body>" + b"<p>drip</p>" * 200 + b"</body></html>", drip=1.0)
    paths = [*routes, "/hostile/drip.xml", "/hostile/slow.xml", "/hostile/500.xml", "/hostile/429.xml",
             "/hostile/410.xml", "/hostile/404.xml", "/hostile/loop.xml", "/hostile/metadata.xml"]
    expect = {"/hostile/billion-laughs.xml": "inert", "/hostile/xxe.xml": "inert", "/hostile/bad-links.xml": "rejected"}
    return {p: expect.get(p, "error") for p in paths}


# ---------------------------------------------------------------- good feeds that grow

class GrowingFeeds:
    """GOOD_FEEDS feeds (RSS and Atom alternately); the Zyte pages are released into
    them one by one over the run, so every poll cycle may find something new."""

    def __init__(self, server: DevServer, pages: dict[str, dict], release_seconds: float):
        self.server = server
        self.pending = list(pages.items())
        random.Random(7).shuffle(self.pending)
        self.items: list[list[dict]] = [[] for _ in range(GOOD_FEEDS)]
        self.interval = release_seconds / max(1, len(self.pending))
        self.released: list[str] = []
        self.stop = threading.Event()
        for _ in range(GOOD_FEEDS * 2):          # something to find on the first poll
            self._release()
        self._publish_all()

    def paths(self) -> list[str]:
        return [f"/good/feed-{i}.{'rss' if i % 2 == 0 else 'atom'}" for i in range(GOOD_FEEDS)]

    def _release(self) -> None:
        if not self.pending:
            return
        url, meta = self.pending.pop()
        i = len(self.released) % GOOD_FEEDS
        self.items[i].append({"title": meta["hash"], "link": url, "guid": meta["hash"],
                              "pub_date": datetime.now(timezone.utc)})
        self.released.append(url)

    def _publish(self, i: int) -> None:
        build = build_rss if i % 2 == 0 else build_atom
        body = build(self.items[i], f"good feed {i}", self.server.base_url)
        ctype = "application/rss+xml" if i % 2 == 0 else "application/atom+xml"
        self.server.add(self.paths()[i], body, content_type=ctype)

    def _publish_all(self) -> None:
        for i in range(GOOD_FEEDS):
            self._publish(i)

    def run(self) -> None:
        while self.pending and not self.stop.wait(self.interval):
            before = len(self.released)
            self._release()
            self._publish((before) % GOOD_FEEDS)


# ---------------------------------------------------------------- processes

def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Proc:
    def __init__(self, env: dict[str, str], args: list[str], log: Path):
        self.args, self.env, self.log = args, env, log
        self.p: subprocess.Popen | None = None

    def start(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "worker", *self.args], env=self.env, cwd=ROOT,
                                  stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

    def send(self, sig: int) -> None:
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if not self.p:
            return
        self.send(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.p.wait(10)


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "worker", *args], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"soak: newsworker {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--restart-every", type=float, default=300, help="seconds between restarts of worker B")
    args = ap.parse_args()

    from tests.support.services import create_database, drop_database, ensure_postgres, ensure_redis
    import redis as redis_lib
    import sqlalchemy as sa

    admin = ensure_postgres()
    db_url = create_database(admin)
    redis_url = ensure_redis() + "/14"
    redis_lib.Redis.from_url(redis_url).flushdb()
    var = Path(tempfile.mkdtemp(prefix="nw-soak-"))
    server = DevServer().start()
    pages = mount_zyte_corpus(server, corpus_dir())
    good_page = next(iter(pages))
    hostile = mount_hostile(server, good_page)
    duration = args.minutes * 60
    feeds = GrowingFeeds(server, pages, release_seconds=duration * 0.7)

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSWORKER_")}
    env.update(NEWSWORKER_VAR_DIR=str(var), NEWSWORKER_DATABASE_URL=db_url, NEWSWORKER_BROKER_URL=redis_url,
               NEWSWORKER_RESULT_BACKEND=redis_url, NEWSWORKER_ALLOWED_PRIVATE_HOSTS=server.host_port,
               NEWSWORKER_DISPATCH_INTERVAL="5", NEWSWORKER_DEFAULT_INTERVAL="20", NEWSWORKER_MIN_INTERVAL="5",
               NEWSWORKER_MAX_BACKOFF="120", NEWSWORKER_CLAIM_TIMEOUT="300", NEWSWORKER_VISIBILITY_TIMEOUT="200",
               NEWSWORKER_REQUEST_DEADLINE="30", NEWSWORKER_MAX_PAGE_BYTES=str(5 << 20),
               NEWSWORKER_POLITE_MIN_DELAY="0.1", NEWSWORKER_POLITE_MAX_CONCURRENT="4")   # one server, many sites
    cli(env, "db", "upgrade")
    for path in feeds.paths() + list(hostile):
        cli(env, "feeds", "add", "--no-discover", server.base_url + path)   # hostile ones would be refused

    a = Proc(env, ["worker", "--concurrency", "2", "--loglevel", "WARNING"], var / "worker-a.log")
    b = Proc(env, ["worker", "--concurrency", "1", "--loglevel", "WARNING"], var / "worker-b.log")
    beat = Proc(env, ["beat", "--loglevel", "WARNING"], var / "beat.log")
    memory: dict[int, list[tuple[float, int]]] = {}
    restarts: list[str] = []
    t0 = time.monotonic()
    for p in (a, b, beat):
        p.start()
    releaser = threading.Thread(target=feeds.run, daemon=True)
    releaser.start()
    print(f"soak: {args.minutes:g} min, {GOOD_FEEDS} growing feeds ({len(pages)} pages), {len(hostile)} hostile feeds; "
          f"logs in {var}", flush=True)
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    next_restart = t0 + args.restart_every
    kill = False
    try:
        while time.monotonic() - t0 < duration:
            time.sleep(10)
            now = time.monotonic() - t0
            for pid in [a.p.pid, *children(a.p.pid)]:
                kib = rss_kib(pid)
                if kib:
                    memory.setdefault(pid, []).append((now, kib))
            if time.monotonic() >= next_restart:
                sig = signal.SIGKILL if kill else signal.SIGTERM
                b.stop(sig)
                restarts.append(f"{now:.0f}s {signal.Signals(sig).name}")
                b.start()
                kill = not kill
                next_restart += args.restart_every
            with engine.connect() as c:
                stored = c.execute(sa.text("select count(*) from articles")).scalar()
            print(f"  {now / 60:5.1f} min: released {len(feeds.released)}/{len(pages)}, articles {stored}", flush=True)
        # Let the last releases be polled and stored.
        feeds.stop.set()
        deadline = time.monotonic() + 300      # above the visibility timeout: a killed worker's task comes back
        expected = set(feeds.released)
        while time.monotonic() < deadline:
            with engine.connect() as c:
                have = set(c.execute(sa.text("select canonical_url from article_urls")).scalars())
            if {canonicalise(u) for u in expected} <= have:
                break
            time.sleep(5)
        report = check(engine, server, feeds, hostile, memory, restarts, args.minutes)
    finally:
        for p in (beat, b, a):
            p.stop()
        engine.dispose()
        server.stop()
        drop_database(admin, db_url)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        raise SystemExit("soak: FAILED (see the report above)")


def check(engine, server, feeds, hostile, memory, restarts, minutes) -> dict:
    import sqlalchemy as sa

    with engine.connect() as c:
        stored_urls = set(c.execute(sa.text("select canonical_url from article_urls")).scalars())
        guids = c.execute(sa.text("select guid, count(*) from articles where guid is not null "
                                  "group by guid having count(*) > 1")).all()
        # per hostile feed: its last failed outcome and error, and the entries it had rejected
        hostile_events = {path: c.execute(sa.text(
            "select (select e.outcome from fetch_events e where e.feed_id = f.id "
            "        order by (e.outcome in ('temporary', 'permanent')) desc, e.id desc limit 1), "
            "       (select e.error from fetch_events e where e.feed_id = f.id and e.error is not null "
            "        order by e.id desc limit 1), "
            "       (select max(e.items_rejected) from fetch_events e where e.feed_id = f.id) "
            "from feeds f where f.url = :u and exists (select 1 from fetch_events e where e.feed_id = f.id)"),
            {"u": server.base_url + path}).first() for path in hostile}
        polls = c.execute(sa.text("select outcome, count(*) from fetch_events group by outcome")).all()
        dead = c.execute(sa.text("select task_name, left(error, 300) from dead_letters")).all()
        secret = c.execute(sa.text("select count(*) from articles where text like '%SECRET-SHOULD%' "
                                   "or text like '%root:x:0%' or title like '%root:x:0%'")).scalar()
        total = c.execute(sa.text("select count(*) from articles")).scalar()
    lost = [u for u in feeds.released if canonicalise(u) not in stored_urls]
    secret_requests = len(server.requests_for("/secret.txt"))
    growth = {}
    for pid, samples in memory.items():
        warm = [k for t, k in samples if t >= min(300, samples[-1][0] / 3)]
        if len(warm) >= 3:
            growth[str(pid)] = {"rss_mib_after_warmup": round(warm[0] / 1024, 1),
                                "rss_mib_end": round(warm[-1] / 1024, 1),
                                "growth_pct": round(100 * (warm[-1] - warm[0]) / warm[0], 1)}
    def recorded(path: str, event) -> bool:
        if event is None:
            return False
        outcome, error, rejected = event
        return {"error": outcome in ("temporary", "permanent") and bool(error),
                "rejected": bool(rejected), "inert": True}[hostile[path]]

    unrecorded = [p for p, e in hostile_events.items() if not recorded(p, e)]
    ok = not lost and not guids and not secret and not secret_requests and not unrecorded
    return {
        "ok": ok, "minutes": minutes, "pages_released": len(feeds.released), "articles_stored": total,
        "pages_lost": lost, "duplicate_guids": [g for g, _ in guids], "polls_by_outcome": dict(polls),
        "hostile_feeds": {p: (list(e) if e else None) for p, e in hostile_events.items()},
        "hostile_feeds_without_a_recorded_error": unrecorded, "secret_leaked": secret,
        "secret_requested": secret_requests,
        "dead_letters": [list(d) for d in dead], "worker_b_restarts": restarts, "worker_a_memory": growth,
    }


if __name__ == "__main__":
    main()
