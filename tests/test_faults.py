"""Faults during a run, through the real service: a Celery worker started with
`newsworker worker`, `newsworker beat`, Redis and PostgreSQL servers, feeds and
article pages on a local HTTP server.

Each test starts its own throwaway Redis (so no other test run's worker can take
its messages, and so it can be restarted), a database of its own, and stops every
process it started, pass or fail.  Waits poll for the expected state (no fixed
sleeps); a wait that runs out fails with the processes' log tails and the database
state.
"""

from __future__ import annotations

import random
import re
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.support.proc import BeatProcess, WorkerProcess, base_env, cli
from tests.support.services import (PostgresServer, RedisServer, create_database, drop_database,
                                    ensure_postgres)
from worker.devserver import DevServer, _Handler, _norm, build_rss

pytestmark = pytest.mark.services

WAIT = 90               # seconds any one expected state may take to appear, on a loaded machine
HOLD_LIMIT = 120        # a held response is answered after this long at the latest
# Redis redelivers an unacknowledged message once it is older than this (kombu's sweep
# for such messages runs when a worker starts, then only every ~100 s by default).
VISIBILITY_TIMEOUT = 10


# ---------------------------------------------------------------- the site

_WORDS = """army border budget cabinet capital carrier ceasefire coalition command convoy corridor council
 defence delegation deployment diplomat drill drone envoy exercise fleet frontier garrison general
 harbour helicopter infantry inspection intelligence logistics minister mission navy observer officer
 parliament patrol pilot port radar reserve satellite sentry signal squadron summit supply tank
 treaty troops unit vessel warship airfield agreement analyst archive artillery audit ballot bridge
 bulletin canal census charter column committee contract court crater customs debate desert district
 dock embassy engineer estate festival forest fountain glacier governor granary harvest highway island
 journal kitchen ladder lantern library lighthouse market meadow merchant mill monument museum orchard
 painter palace pasture pharmacy pilgrim plateau quarry railway reef reservoir river school scholar
 shepherd shipyard station statue tavern temple terrace theatre tower tunnel valley village vineyard
 warehouse weaver workshop yard announced approved arrived blocked built carried checked closed
 delayed delivered discussed doubled expanded finished gathered handed inspected joined launched
 measured moved noted opened ordered paid planned printed raised reached recorded repaired reported
 returned signed started stopped supplied tested visited warned widened quietly rapidly early late
 northern southern eastern western local regional annual formal temporary permanent several many
 three seven twelve hundred""".split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(9, 16))]
    return " ".join(words).capitalize() + "."


def article_page(title: str, seed: str) -> bytes:
    """An article page whose text (about 300 words drawn at random from a fixed vocabulary)
    shares no 5-word sequence with another seed's, so near-duplicate detection keeps
    every article apart."""
    rng = random.Random(seed)
    paragraphs = "\n".join(f"<p>{' '.join(_sentence(rng) for _ in range(5))}</p>" for _ in range(5))
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>\n'
            f'<body><header><nav><a href="/">Home</a> <a href="/world/">World</a></nav></header>\n'
            f"<main><article><h1>{title}</h1>\n<p>By Staff Reporter</p>\n{paragraphs}\n</article></main>\n"
            f"<footer><p>Contact the newsroom.</p></footer></body></html>\n").encode("utf-8")


@dataclass(frozen=True)
class Entry:
    feed: int           # index into Site.feeds
    path: str
    url: str


@dataclass
class Site:
    feeds: list[str] = field(default_factory=list)          # feed URLs
    feed_paths: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [e.url for e in self.entries]


def mount_site(server: DevServer, n_feeds: int, per_feed: int, tag: str) -> Site:
    """*n_feeds* RSS feeds of *per_feed* distinct articles each, at /<tag>/feed-<i>.xml."""
    site = Site()
    when = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
    for f in range(n_feeds):
        items = []
        for a in range(per_feed):
            path = f"/{tag}/{f}/story-{a}.html"
            title = f"Report {tag} {f}-{a}"
            server.add(path, article_page(title, f"{tag}-{f}-{a}"))
            site.entries.append(Entry(f, path, server.base_url + path))
            items.append({"title": title, "link": server.base_url + path, "guid": f"{tag}-{f}-{a}",
                          "description": f"Summary of report {f}-{a}.", "pub_date": when})
        feed_path = f"/{tag}/feed-{f}.xml"
        server.add(feed_path, build_rss(items, f"Feed {tag} {f}", server.base_url + f"/{tag}/"),
                   content_type="application/rss+xml")
        site.feeds.append(server.base_url + feed_path)
        site.feed_paths.append(feed_path)
    return site


class _HoldingHandler(_Handler):
    def _respond(self, head: bool) -> None:
        dev: HoldingServer = self.server.dev  # type: ignore[assignment]
        path = _norm(self.path)
        gate = dev._arrived(path)
        if gate is not None:
            gate.wait(HOLD_LIMIT)
        try:
            super()._respond(head)
        except (BrokenPipeError, ConnectionResetError):
            pass                                    # the client was killed while it waited


class HoldingServer(DevServer):
    """The dev server, plus: requests are recorded when they *arrive* (the dev server
    records them when answered), and chosen paths hold their response until released,
    so a test knows a task is in the middle of a fetch and decides when it ends."""

    def __init__(self) -> None:
        super().__init__()
        self._httpd.RequestHandlerClass = _HoldingHandler
        self._gates: dict[str, threading.Event] = {}
        self._arrivals: list[str] = []

    def _arrived(self, path: str) -> Optional[threading.Event]:
        with self._lock:
            self._arrivals.append(path)
            return self._gates.get(path)

    def hold(self, *paths: str) -> None:
        with self._lock:
            for p in paths:
                self._gates[_norm(p)] = threading.Event()

    def release(self, *paths: str) -> None:
        """Answer the held requests (all held paths when none given); later requests are not held."""
        with self._lock:
            keys = [_norm(p) for p in paths] if paths else list(self._gates)
            gates = [self._gates.pop(k) for k in keys if k in self._gates]
        for g in gates:
            g.set()

    def arrivals(self, *paths: str) -> int:
        """How many requests for these paths have arrived (answered or not)."""
        wanted = {_norm(p) for p in paths}
        with self._lock:
            return sum(p in wanted for p in self._arrivals)

    def stop(self) -> None:
        self.release()
        super().stop()


# ---------------------------------------------------------------- the service

class Harness:
    """One newsworker deployment: its environment, database, processes and diagnostics."""

    def __init__(self, tmp_path: Path, server: HoldingServer, redis_server: RedisServer, pg_admin: str,
                 settings: dict[str, str]):
        self.tmp_path, self.server, self.redis_server = tmp_path, server, redis_server
        self.pg_admin = pg_admin
        self.db_url = create_database(pg_admin)
        broker = f"{redis_server.url}/0"
        self.env = base_env(tmp_path / "var", database_url=self.db_url, broker_url=broker, result_backend=broker,
                            allowed_private_hosts=server.host_port, **settings)
        self.engine = sa.create_engine(self.db_url, poolclass=NullPool, connect_args={"connect_timeout": 3})
        self.procs: list[WorkerProcess] = []
        self.watched: list[WorkerProcess] = []      # must stay up: a wait fails at once if one exits
        self.expected: list[str] = []               # article URLs the test expects, for diagnostics
        cli(self.env, "db", "upgrade")

    # -- processes
    def cli(self, *args: str) -> str:
        return cli(self.env, *args, timeout=120).stdout

    def worker(self, name: str, *args: str, wait: bool = True) -> WorkerProcess:
        proc = WorkerProcess(self.env, "--concurrency", "2", *args, log=self.tmp_path / f"{name}.log")
        proc.name = name  # type: ignore[attr-defined]
        return self._started(proc, wait)

    def beat(self, name: str, var_dir: Optional[Path] = None, wait: bool = True) -> BeatProcess:
        env = dict(self.env, NEWSWORKER_VAR_DIR=str(var_dir)) if var_dir else self.env
        proc = BeatProcess(env, log=self.tmp_path / f"{name}.log")
        proc.name = name  # type: ignore[attr-defined]
        return self._started(proc, wait)

    def _started(self, proc: Any, wait: bool) -> Any:
        self.procs.append(proc)
        self.watched.append(proc)
        if wait:
            self.ready(proc)
        return proc

    def ready(self, proc: WorkerProcess) -> None:
        try:
            proc.wait_ready(WAIT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None

    def unwatch(self, proc: WorkerProcess) -> None:
        """*proc* is expected to exit from now on."""
        if proc in self.watched:
            self.watched.remove(proc)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()         # no graceful shutdown needed: everything here is thrown away
            proc.stop()
        self.engine.dispose()
        try:
            drop_database(self.pg_admin, self.db_url)
        except Exception:       # a throwaway server already stopped: it is deleted with its data
            pass

    # -- the database
    def rows(self, query: str, **params: Any) -> list[Any]:
        with self.engine.connect() as db:
            return list(db.execute(sa.text(query), params).all())

    def stored_urls(self) -> Counter:
        return Counter(r.url for r in self.rows("select url from articles"))

    def fetch_events(self) -> dict[int, list[datetime]]:
        polls: dict[int, list[datetime]] = {}
        for r in self.rows("select feed_id, started_at from fetch_events order by started_at"):
            polls.setdefault(r.feed_id, []).append(r.started_at)
        return polls

    # -- the broker
    def wait_unacked_expired(self) -> None:
        """Wait until every unacknowledged message in Redis (a dead worker's) is older than
        the visibility timeout.  kombu restores such messages when a worker starts and then
        only every unacked_restore_interval x unacked_restore_throttle (10 s x 10) seconds,
        so a worker started before that would take up to 100 s more to redeliver them."""
        client = redis.Redis.from_url(self.env["NEWSWORKER_BROKER_URL"])
        try:
            self.wait_for("the dead worker's unacknowledged messages to pass the visibility timeout",
                          lambda: all(time.time() - score > VISIBILITY_TIMEOUT + 0.5
                                      for _, score in client.zrange("unacked_index", 0, -1, withscores=True)))
        finally:
            client.close()

    # -- waiting
    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
        """Poll *check* until it returns something true; fail (with diagnostics) after
        *timeout* seconds or as soon as a process that must stay up has exited.  A
        database that does not answer counts as "not yet"."""
        deadline = time.monotonic() + timeout
        while True:
            for proc in self.watched:
                if not proc.running():
                    raise AssertionError(f"{proc.name} exited with {proc.proc.returncode} while waiting for "
                                         f"{what}\n{self.diagnostics()}")
            try:
                value = check()
            except sa.exc.OperationalError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout} s: {what}\n{self.diagnostics()}")
            time.sleep(0.3)

    def diagnostics(self) -> str:
        parts = []
        try:
            feeds = self.rows("select id, url, queued_at, next_fetch_at, last_status, last_error from feeds order by id")
            parts.append("feeds (id, url, queued_at, next_fetch_at, last_status, last_error):\n" + "\n".join(
                f"  {r.id} {r.url} {r.queued_at and r.queued_at.isoformat()} {r.next_fetch_at.isoformat()} "
                f"{r.last_status} {r.last_error}" for r in feeds))
            parts.append(f"fetch_events per feed: { {k: len(v) for k, v in self.fetch_events().items()} }")
            stored = self.stored_urls()
            parts.append(f"articles stored: {dict(stored)}")
            if self.expected:
                parts.append(f"articles expected but not stored: {[u for u in self.expected if u not in stored]}")
            dead = self.rows("select task_name, args, error, deliveries, retries from dead_letters order by id")
            parts.append("dead_letters:\n" + ("\n".join(f"  {tuple(r)}" for r in dead) or "  (none)"))
        except Exception as exc:  # the database may be the thing that is down
            parts.append(f"(database state unavailable: {exc.__class__.__name__}: {exc})")
        with self.server._lock:
            arrivals = Counter(self.server._arrivals)
        parts.append(f"HTTP requests arrived: {dict(arrivals)}")
        for proc in self.procs:
            state = "running" if proc.running() else f"exited {proc.proc.returncode}"
            parts.append(f"---- {proc.name} (pid {proc.proc.pid}, {state}), log {proc.log_path}, "
                         f"last entries (tracebacks and idle dispatches left out):\n{log_summary(proc.log())}")
        return "\n".join(parts)

    # -- the outcome
    def assert_stored_once(self, site: Site) -> None:
        """Every entry of *site* is one article, made from its page, linked once to its
        feed and reached through one URL; nothing else is stored, no task was given up."""
        diag = self.diagnostics
        articles = self.rows("select id, url, canonical_url, text_source, feed_id from articles")
        counts = Counter(a.url for a in articles)
        assert {u: n for u, n in counts.items() if n != 1} == {}, f"articles stored more than once\n{diag()}"
        assert sorted(counts) == sorted(site.urls), f"articles missing or unexpected\n{diag()}"
        feed_ids = {r.url: r.id for r in self.rows("select id, url from feeds")}
        by_url = {a.url: a for a in articles}
        feed_of = {by_url[e.url].id: feed_ids[site.feeds[e.feed]] for e in site.entries}
        for e in site.entries:
            a = by_url[e.url]
            assert a.text_source == "page", f"{e.url} stored from {a.text_source}, not its page\n{diag()}"
            assert a.feed_id == feed_of[a.id], f"{e.url} stored for the wrong feed\n{diag()}"
        links = self.rows("select article_id, feed_id from article_feeds order by article_id")
        assert sorted((r.article_id, r.feed_id) for r in links) == sorted(feed_of.items()), \
            f"article_feeds: each article must be linked once, to its feed: {links}\n{diag()}"
        urls = self.rows("select canonical_url, article_id from article_urls order by article_id")
        assert sorted((r.article_id, r.canonical_url) for r in urls) == sorted((a.id, a.canonical_url) for a in articles), \
            f"article_urls: each article must be reached through its one canonical URL: {urls}\n{diag()}"
        dead = self.rows("select task_name, error from dead_letters")
        assert dead == [], f"tasks were given up (dead letters): {dead}\n{diag()}"


_ENTRY = re.compile(r"^\[\d{4}-\d\d-\d\d ")       # a log record's first line, not a traceback's
_IDLE = re.compile(r"dispatch_due_feeds\[[0-9a-f-]+\] (received|succeeded in [0-9.e-]+s: 0)$"
                   r"|Sending due task dispatch-due-feeds")


def log_summary(text: str, lines: int = 60) -> str:
    """A log's last *lines* records, without traceback lines and the routine dispatch
    records that would otherwise fill the view."""
    records = [line[:400] for line in text.splitlines() if _ENTRY.match(line) and not _IDLE.search(line)]
    return "\n".join(records[-lines:])


def all_stored(h: Harness, site: Site) -> Callable[[], bool]:
    h.expected = site.urls
    return lambda: set(site.urls) <= set(h.stored_urls())


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def site_server():
    server = HoldingServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
def pg_server():
    with PostgresServer() as server:
        yield server


@pytest.fixture
def make_harness(tmp_path, site_server, redis_server):
    made: list[Harness] = []

    def make(pg_admin: Optional[str] = None, **settings: Any) -> Harness:
        h = Harness(tmp_path, site_server, redis_server, pg_admin or ensure_postgres(),
                    {k: str(v) for k, v in settings.items()})
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


# ---------------------------------------------------------------- the faults

def _worker_busy_on_a_held_page(make_harness, site_server, tag: str, index: int):
    """One feed of three articles; the worker is fetching article *index*, whose page
    the server holds.  Returns (harness, site, held entry, worker)."""
    h = make_harness(visibility_timeout=VISIBILITY_TIMEOUT)
    site = mount_site(site_server, n_feeds=1, per_feed=3, tag=tag)
    slow = site.entries[index]
    site_server.hold(slow.path)
    h.cli("feeds", "add", site.feeds[0])
    w1 = h.worker("worker-1")
    h.cli("fetch", "--all")
    h.wait_for(f"the worker fetching {slow.path}", lambda: site_server.arrivals(slow.path) >= 1)
    return h, site, slow, w1


def test_worker_killed_mid_article_redelivers_and_stores_it_once(make_harness, site_server):
    """SIGKILL to every process of the worker while an article's page is being fetched:
    the message was never acknowledged, so a new worker gets it again after the
    visibility timeout and the article is stored once, from its page."""
    h, site, slow, w1 = _worker_busy_on_a_held_page(make_harness, site_server, "kill", 1)

    h.unwatch(w1)
    w1.kill()
    site_server.release(slow.path)
    assert slow.url not in h.stored_urls(), f"stored although its task was killed mid-fetch\n{h.diagnostics()}"

    h.wait_unacked_expired()
    w2 = h.worker("worker-2")
    h.wait_for("every article stored after the redelivery", all_stored(h, site))
    h.assert_stored_once(site)
    assert site_server.arrivals(slow.path) >= 2, \
        f"the killed task's page was not fetched again: no redelivery?\n{h.diagnostics()}"
    # The batch delivered again went on as one task per entry: an entry that kills its
    # worker each time is set aside alone, not with the rest of its batch.
    assert "was delivered again; split into one task per entry" in w2.log(), h.diagnostics()


def test_redis_restart_loses_no_feed_poll(make_harness, site_server, redis_server):
    """Redis stops (losing every queued message) while two polls are running and two
    more are queued; the running polls end while it is down; it starts again on the
    same port.  The worker and beat reconnect by themselves, beat re-dispatches the
    feeds whose claim went stale, and every feed's articles end up stored once."""
    h = make_harness(visibility_timeout=VISIBILITY_TIMEOUT, dispatch_interval=2, claim_timeout=15)
    site = mount_site(site_server, n_feeds=4, per_feed=2, tag="redis")
    site_server.hold(*site.feed_paths)
    for url in site.feeds:
        h.cli("feeds", "add", url)
    worker = h.worker("worker", wait=False)
    beat = h.beat("beat", wait=False)
    h.ready(worker)
    h.ready(beat)
    h.wait_for("two polls in progress", lambda: site_server.arrivals(*site.feed_paths) >= 2)

    redis_server.stop()
    site_server.release()           # the running polls end while Redis is down
    # A task's end is logged as succeeded / raised / retry, or (when storing its result in
    # the unreachable Redis fails too) as an exception raised outside its body.
    poll_ended = re.compile(r"poll_feed\[[0-9a-f-]+\] (succeeded|raised|retry)|Exception raised outside body")
    try:                            # their follow-up messages are sent (or fail) meanwhile
        h.wait_for("the running polls to end", lambda: len(poll_ended.findall(worker.log())) >= 2, timeout=30)
    except AssertionError:
        pass                        # not a requirement: only what happens next is checked
    redis_server.start()

    h.wait_for("every article stored after the Redis restart", all_stored(h, site))
    polls = h.fetch_events()
    feed_ids = [r.id for r in h.rows("select id from feeds order by id")]
    assert all(polls.get(fid) for fid in feed_ids), f"feeds never polled: {polls}\n{h.diagnostics()}"
    h.assert_stored_once(site)
    assert beat.running() and worker.running(), h.diagnostics()


def test_postgres_restart_tasks_retry_and_finish(make_harness, site_server, pg_server):
    """PostgreSQL stops (pg_ctl -m fast) while article tasks are in the middle of their
    transactions, and more are queued; it starts again on the same port.  The tasks
    retry and finish; every article is stored once."""
    h = make_harness(pg_admin=pg_server.admin_url)
    site = mount_site(site_server, n_feeds=3, per_feed=3, tag="pg")
    site_server.hold(*(e.path for e in site.entries))
    for url in site.feeds:
        h.cli("feeds", "add", url)
    worker = h.worker("worker")
    h.cli("fetch", "--all")
    h.wait_for("two article tasks fetching their pages",
               lambda: site_server.arrivals(*(e.path for e in site.entries)) >= 2)

    pg_server.stop("fast")          # ends the tasks' open transactions
    site_server.release()
    retried = re.compile(r"process_entr(?:y|ies)\[[0-9a-f-]+\] retry")
    h.wait_for("article tasks retrying while the database is down", lambda: len(retried.findall(worker.log())) >= 2)
    pg_server.start()

    h.wait_for("every article stored after the PostgreSQL restart", all_stored(h, site))
    h.assert_stored_once(site)


def test_two_beats_do_not_double_poll(make_harness, site_server, tmp_path):
    """Two `newsworker beat` processes (two hosts: separate schedule files), started at
    once, send the dispatcher every second; one worker.  Over many dispatches each feed
    is polled once (its interval is an hour) and each article stored once."""
    interval = 3600
    h = make_harness(dispatch_interval=1)
    site = mount_site(site_server, n_feeds=5, per_feed=2, tag="beats")
    for url in site.feeds:
        h.cli("feeds", "add", url, "--interval", str(interval))
    worker = h.worker("worker")
    beats = [h.beat(f"beat-{i}", var_dir=tmp_path / f"beat-{i}", wait=False) for i in (1, 2)]
    for b in beats:
        h.ready(b)

    h.wait_for("every article stored", all_stored(h, site))
    sent = re.compile(r"Sending due task dispatch-due-feeds")
    ran = re.compile(r"dispatch_due_feeds\[[0-9a-f-]+\] succeeded")
    sent_before = [len(sent.findall(b.log())) for b in beats]
    ran_before = len(ran.findall(worker.log()))
    rounds = 5
    h.wait_for(f"{rounds} more dispatches from each beat, run by the worker",
               lambda: all(len(sent.findall(b.log())) >= n + rounds for b, n in zip(beats, sent_before))
               and len(ran.findall(worker.log())) >= ran_before + 2 * rounds)

    polls = h.fetch_events()
    feed_ids = [r.id for r in h.rows("select id from feeds order by id")]
    too_close = {fid: times for fid, times in polls.items()
                 if any((b - a).total_seconds() < interval for a, b in zip(times, times[1:]))}
    assert too_close == {}, f"feeds polled twice within their interval: {too_close}\n{h.diagnostics()}"
    assert sorted(polls) == feed_ids and all(len(polls[f]) == 1 for f in feed_ids), \
        f"each feed must be polled exactly once: {polls}\n{h.diagnostics()}"
    h.assert_stored_once(site)


@pytest.mark.parametrize("target", ["main", "group"])
def test_worker_sigterm_mid_article_finishes_or_requeues(make_harness, site_server, target):
    """SIGTERM while an article's page is being fetched, to the worker's main process
    (`kill PID`, `docker stop`) or to all its processes (systemd's default KillMode):
    the worker shuts down by itself, having finished the task or handed it back, and
    after a new worker starts the article is stored once."""
    h, site, slow, w1 = _worker_busy_on_a_held_page(make_harness, site_server, f"term-{target}", 0)

    h.unwatch(w1)
    w1.signal(signal.SIGTERM, group=(target == "group"))
    h.wait_for("the worker starting its warm shutdown", lambda: "Warm shutdown" in w1.log() or not w1.running())
    site_server.release(slow.path)
    code = w1.wait_exit(WAIT)
    assert code is not None, f"the worker did not exit after SIGTERM\n{h.diagnostics()}"

    h.wait_unacked_expired()        # in case the task was neither finished nor handed back
    h.worker("worker-2")
    h.wait_for("every article stored", all_stored(h, site))
    h.assert_stored_once(site)
