"""Per-host politeness (worker.politeness) and robots.txt (worker.robots), on real Redis
and real local HTTP.  Contenders run in threads and in separate (spawned) processes; each
records when it held a slot, and the records are checked for overlaps and spacing.

Recorded intervals are taken *inside* the slot (after the grant, before the release), so
they lie within the limiter's own hold intervals: more overlap among them than allowed is
a real violation.  Start spacing is checked exactly on the limiter's clock (Redis TIME,
reported in each Lease) and, with a tolerance, on the contenders' own clock."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.services import ensure_redis, free_port
from worker import http
from worker.errors import TemporaryFetchError
from worker.politeness import (HostBusy, HostLimiter, Lease, LocalHostLimiter, PolitenessUnavailable,
                               RedisHostLimiter, Wait, group_by_wait, host_key, interleave_hosts)
from worker.robots import (MAX_ROBOTS_BYTES, RobotsCache, RobotsDisallowed, http_fetcher, product_token,
                           truncate)
from worker.settings import Settings

REDIS_DB = 9            # this file's own db; keys carry a per-test prefix, removed afterwards
UA = Settings().user_agent
SPAWN = multiprocessing.get_context("spawn")   # children share nothing inherited (locks, sockets)
CLOCK_SLACK = 0.1       # contenders' clock vs the limiter's: scheduling between grant and record


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def redis_url() -> str:
    return f"{ensure_redis()}/{REDIS_DB}"


@pytest.fixture
def rc(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def prefix(rc: redis.Redis) -> Iterator[str]:
    p = f"test-polite-{uuid.uuid4().hex[:12]}"
    yield p
    keys = list(rc.scan_iter(match=f"{p}:*"))
    if keys:
        rc.delete(*keys)


@pytest.fixture
def limiter_for(rc: redis.Redis, prefix: str) -> Callable[..., RedisHostLimiter]:
    def make(name: str = "lim", **limits: Any) -> RedisHostLimiter:
        """A limiter on this test's keys; another *name* starts from a clean slate."""
        limits.setdefault("busy_poll", 0.02)
        return RedisHostLimiter(rc, prefix=f"{prefix}:{name}", **limits)
    return make


def _hold_slots(limiter: HostLimiter, host: str, threads: int, each: int, hold: float,
                record: Callable[[list[Any]], object], tag: str) -> None:
    """*threads* threads each take a slot *each* times and hold it *hold* seconds."""
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for _ in range(each):
                with limiter.slot(host, max_wait=60) as lease:
                    t0 = time.monotonic()       # system-wide on Linux: comparable across processes
                    time.sleep(hold)
                    t1 = time.monotonic()
                record([f"{tag}/{n}", lease.started_at, t0, t1])
        except BaseException as exc:   # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]


def _child(redis_url: str, prefix: str, limits: dict[str, Any], host: str, threads: int, each: int,
           hold: float, barrier: Any) -> None:
    """A separate worker process: its own Redis connection and limiter."""
    import os

    client = redis.Redis.from_url(redis_url)
    limiter = RedisHostLimiter(client, prefix=prefix + ":lim", **limits)
    barrier.wait(timeout=60)
    _hold_slots(limiter, host, threads, each, hold,
                lambda row: client.rpush(f"{prefix}:log", json.dumps(row)), f"pid{os.getpid()}")


def _contend(redis_url: str, rc: redis.Redis, prefix: str, limits: dict[str, Any], host: str, *,
             procs: int, threads: int, each: int, hold: float) -> list[list[Any]]:
    """*procs* processes and this one, *threads* threads each, all contending for *host*.
    Returns the records [who, lease start (limiter clock), t0, t1 (monotonic)]."""
    barrier = SPAWN.Barrier(procs + 1)
    children = [SPAWN.Process(target=_child, args=(redis_url, prefix, limits, host, threads, each, hold, barrier))
                for _ in range(procs)]
    for c in children:
        c.start()
    try:
        barrier.wait(timeout=60)        # everyone set up: start together
        limiter = RedisHostLimiter(rc, prefix=prefix + ":lim", **limits)
        _hold_slots(limiter, host, threads, each, hold,
                    lambda row: rc.rpush(f"{prefix}:log", json.dumps(row)), "parent")
        for c in children:
            c.join(timeout=60)
        assert [c.exitcode for c in children] == [0] * procs
    finally:
        for c in children:
            if c.is_alive():
                c.kill()
    return [json.loads(r) for r in rc.lrange(f"{prefix}:log", 0, -1)]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(t0, 1) for t0, _ in intervals] + [(t1, -1) for _, t1 in intervals])  # ends sort first
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _gaps(values: list[float]) -> list[float]:
    values = sorted(values)
    return [b - a for a, b in zip(values, values[1:])]


# ---------------------------------------------------------------- host keys

def test_host_key_normalises_case_default_ports_and_idna():
    assert host_key("https://Example.COM:443/a?b") == "example.com"
    assert host_key("http://example.com:80/") == "example.com"
    assert host_key("https://example.com:80/") == "example.com:80"     # not https' default port
    assert host_key("http://Example.com:8080/x") == "example.com:8080"
    assert host_key("example.com.") == "example.com"
    assert host_key("http://[::1]:8080/x") == "[::1]:8080"
    assert host_key("https://bücher.de/") == host_key("https://xn--bcher-kva.de/") == "xn--bcher-kva.de"
    with pytest.raises(ValueError):
        host_key("http:///nohost")


def test_interleave_hosts_takes_hosts_in_turn_the_busiest_first_in_every_round():
    """The dispatcher's order: one feed of each host per round, each host's own order
    kept; the host with the most feeds (the longest chain of delays) leads every round,
    ties in the order hosts were first seen; a URL with no host is a "host" of its own."""
    items = [(1, "http://a.example/1"), (2, "http://b.example/1"), (3, "http://b.example/2"),
             (4, "http://c.example/1"), (5, "http://B.example:80/3"), (6, "http:///nohost"),
             (7, "http://a.example/2"), (8, "http://d.example/1")]
    assert interleave_hosts(items) == [2, 1, 4, 6, 8,   # b has 3 feeds, a 2, then c, "", d as seen
                                       3, 7,
                                       5]
    assert interleave_hosts([]) == []


# ---------------------------------------------------------------- the shared limiter

def test_max_concurrent_never_exceeded_across_threads_and_processes(redis_url, rc, prefix):
    limits = {"max_concurrent": 2, "min_delay": 0.05, "busy_poll": 0.02}
    rows = _contend(redis_url, rc, prefix, limits, "news.example", procs=3, threads=2, each=2, hold=0.2)
    assert len(rows) == (3 + 1) * 2 * 2
    assert len({r[0].split("/")[0] for r in rows}) == 4          # really four processes took part
    overlap = _max_overlap([(r[2], r[3]) for r in rows])
    # Never above the limit; and the limit is reached (holds of 0.2 s, starts 0.05 s apart),
    # so the limiter lets requests run side by side rather than one at a time.
    assert overlap == 2
    assert min(_gaps([r[1] for r in rows])) >= 0.05 - 1e-6


def test_min_delay_between_starts_across_threads_and_processes(redis_url, rc, prefix):
    limits = {"max_concurrent": 10, "min_delay": 0.3, "busy_poll": 0.02}
    rows = _contend(redis_url, rc, prefix, limits, "slow.example", procs=2, threads=2, each=1, hold=0.01)
    assert len(rows) == 6
    assert min(_gaps([r[1] for r in rows])) >= 0.3 - 1e-6            # limiter clock: exact
    assert min(_gaps([r[2] for r in rows])) >= 0.3 - CLOCK_SLACK     # as the contenders saw it


@pytest.mark.parametrize("kind", ["redis", "local"])
def test_threads_share_one_limiter_within_a_process(kind, limiter_for):
    limits = {"max_concurrent": 2, "min_delay": 0.1, "busy_poll": 0.02}
    limiter = limiter_for(**limits) if kind == "redis" else LocalHostLimiter(**limits)
    rows: list[list[Any]] = []
    lock = threading.Lock()

    def record(row: list[Any]) -> None:
        with lock:
            rows.append(row)

    _hold_slots(limiter, "HOST.example:8443", threads=4, each=2, hold=0.25, record=record, tag=kind)
    assert len(rows) == 8
    assert _max_overlap([(r[2], r[3]) for r in rows]) == 2
    assert min(_gaps([r[1] for r in rows])) >= 0.1 - 1e-6
    assert min(_gaps([r[2] for r in rows])) >= 0.1 - CLOCK_SLACK


def test_killed_holders_lease_expires(redis_url, rc, prefix, limiter_for):
    limits = {"max_concurrent": 2, "min_delay": 0.0, "lease_seconds": 2.0}
    holder = SPAWN.Process(target=_hold_forever, args=(redis_url, prefix, limits, "feeds.example"))
    holder.start()
    try:
        raw = rc.blpop([f"{prefix}:held"], timeout=60)
        assert raw is not None, "the holder never took its slot"
        dead = Lease(**json.loads(raw[1]))
    finally:
        holder.kill()                   # SIGKILL: no finally, no release
        holder.join(timeout=10)
    assert holder.exitcode is not None and holder.exitcode < 0
    # A live worker with long leases keeps the host's keys alive: the dead lease must
    # expire on its own, not only with the whole key.
    limiter = limiter_for(**{**limits, "lease_seconds": 60.0})
    live = limiter.try_acquire("https://feeds.example/rss")
    assert isinstance(live, Lease)
    waiting = limiter.try_acquire("https://feeds.example/rss")
    assert isinstance(waiting, Wait) and waiting.reason == "busy"   # the dead worker's slot still counts
    with limiter.slot("https://feeds.example/rss", max_wait=10) as lease:
        assert lease.started_at >= dead.expires_at                  # not one moment before it expired
        assert lease.started_at - dead.started_at >= 2.0 - 1e-6
    assert limiter.release(dead) is False                           # its lease is gone
    assert limiter.release(live) is True


def test_a_shorter_lease_does_not_cut_a_longer_one(limiter_for):
    # Workers configured with different lease lengths share the host's keys.
    long_lived = limiter_for(max_concurrent=2, min_delay=0.0, lease_seconds=60.0)
    short_lived = limiter_for(max_concurrent=2, min_delay=0.0, lease_seconds=0.5)
    assert isinstance(long_lived.try_acquire("mixed.example"), Lease)
    assert isinstance(short_lived.try_acquire("mixed.example"), Lease)
    time.sleep(0.7)
    assert isinstance(short_lived.try_acquire("mixed.example"), Lease)    # the short lease's slot is free
    wait = short_lived.try_acquire("mixed.example")
    assert isinstance(wait, Wait) and wait.reason == "busy"                # the long one still counts


def _hold_forever(redis_url: str, prefix: str, limits: dict[str, Any], host: str) -> None:
    client = redis.Redis.from_url(redis_url)
    lease = RedisHostLimiter(client, prefix=prefix + ":lim", **limits).try_acquire(host)
    assert isinstance(lease, Lease)
    client.rpush(f"{prefix}:held", json.dumps(lease.__dict__))
    time.sleep(600)


def test_penalise_makes_every_other_worker_wait(redis_url, rc, prefix, limiter_for):
    limits = {"max_concurrent": 5, "min_delay": 0.0, "busy_poll": 0.02}
    here = limiter_for(**limits)
    before = rc.time()
    before_s = before[0] + before[1] / 1e6
    assert here.penalise("https://api.example/feed", 0.8) == pytest.approx(0.8)
    # Another limiter (another worker) sees it at once...
    other = RedisHostLimiter(redis.Redis.from_url(redis_url), prefix=prefix + ":lim", **limits)
    wait = other.try_acquire("https://API.example:443/x")
    assert isinstance(wait, Wait) and wait.reason == "penalty" and 0.3 < wait.seconds <= 0.8
    # ...and so does another process: its first slot starts no earlier than the penalty's end.
    rows = _contend(redis_url, rc, prefix, limits, "api.example", procs=1, threads=1, each=1, hold=0.0)
    assert min(r[1] for r in rows) - before_s >= 0.8 - 1e-6
    # A shorter penalty never shortens a longer one; a huge one is capped.
    assert here.penalise("api.example", 5) == pytest.approx(5, abs=0.01)
    assert here.penalise("api.example", 1) > 4.5
    assert limiter_for(max_penalty=2.0).penalise("other.example", 10_000) == pytest.approx(2.0)


def test_slot_gives_up_with_a_countdown_instead_of_blocking(limiter_for):
    limiter = limiter_for(max_concurrent=1, min_delay=2.0)
    first = limiter.try_acquire("cdn.example")
    assert isinstance(first, Lease)
    t0 = time.monotonic()
    with pytest.raises(HostBusy) as busy:
        with limiter.slot("https://cdn.example/a.html", max_wait=0.5):
            pytest.fail("entered the slot during the min delay")
    assert time.monotonic() - t0 < 1.0         # a known 2 s wait is not slept through first
    assert isinstance(busy.value, TemporaryFetchError) and busy.value.wait.reason == "delay"
    assert busy.value.retry_after is not None and 1.0 < busy.value.retry_after <= 2.0
    assert busy.value.url == "https://cdn.example/a.html" and busy.value.host == "cdn.example"
    # All slots held and no delay left: polled until max_wait, then the same error.
    busy_limiter = limiter_for(max_concurrent=1, min_delay=0.0)
    held = busy_limiter.try_acquire("busy.example")
    assert isinstance(held, Lease)
    with pytest.raises(HostBusy) as full:
        with busy_limiter.slot("busy.example", max_wait=0.2):
            pytest.fail("entered a full host")
    assert full.value.wait.reason == "busy"
    assert busy_limiter.release(held) is True
    with busy_limiter.slot("busy.example", max_wait=0.2) as lease:   # free again
        assert lease.host == "busy.example"


def test_slot_is_released_when_the_body_raises(limiter_for):
    limiter = limiter_for(max_concurrent=1, min_delay=0.0)
    with pytest.raises(ValueError):
        with limiter.slot("err.example"):
            raise ValueError("boom")
    assert isinstance(limiter.try_acquire("err.example"), Lease)


def test_different_hosts_do_not_block_each_other(limiter_for):
    limiter = limiter_for(max_concurrent=1, min_delay=30.0)
    assert isinstance(limiter.try_acquire("a.example"), Lease)
    limiter.penalise("c.example", 30)
    assert isinstance(limiter.try_acquire("a.example"), Wait)           # same host: held and delayed
    assert isinstance(limiter.try_acquire("b.example"), Lease)          # another host: free
    assert isinstance(limiter.try_acquire("a.example:8080"), Lease)     # another port: another host
    assert isinstance(limiter.try_acquire("sub.a.example"), Lease)
    assert limiter.try_acquire("c.example").reason == "penalty"         # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["redis", "local"])
def test_429_from_the_host_penalises_it_for_everyone(kind, limiter_for, devserver):
    limits = {"max_concurrent": 5, "min_delay": 0.0, "default_penalty": 7.0}
    limiter = limiter_for(**limits) if kind == "redis" else LocalHostLimiter(**limits)
    devserver.add("/limited", b"slow down", status=429, headers={"Retry-After": "3"})
    devserver.add("/limited-no-header", b"slow down", status=429)
    url = devserver.base_url + "/limited"
    with _client(devserver) as client:
        with pytest.raises(TemporaryFetchError) as err:
            with limiter.slot(url):
                _get(client, url, devserver)
        assert err.value.status == 429 and err.value.retry_after == 3.0
        wait = limiter.try_acquire(devserver.base_url + "/another/page")
        assert isinstance(wait, Wait) and wait.reason == "penalty" and 2.0 < wait.seconds <= 3.0
        limiter.penalise(url, 0)                  # no-op: a zero penalty changes nothing
        assert isinstance(limiter.try_acquire(url), Wait)
    # Without Retry-After, the default back-off applies (a fresh limiter: the first is penalised).
    other = limiter_for(name="other", **limits) if kind == "redis" else LocalHostLimiter(**limits)
    url = devserver.base_url + "/limited-no-header"
    with _client(devserver) as client, pytest.raises(TemporaryFetchError):
        with other.slot(url):
            _get(client, url, devserver)
    wait = other.try_acquire(url)
    assert isinstance(wait, Wait) and wait.reason == "penalty" and 6.0 < wait.seconds <= 7.0


def test_redis_down_is_a_temporary_error_not_a_free_pass():
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))   # fail at once, not after redis-py's default retries
    limiter = RedisHostLimiter(dead, prefix="test-polite-dead")
    with pytest.raises(PolitenessUnavailable) as err:
        with limiter.slot("https://example.com/"):
            pytest.fail("fetched without the limiter")
    assert isinstance(err.value, TemporaryFetchError)
    with pytest.raises(PolitenessUnavailable):
        limiter.penalise("example.com", 10)


# ---------------------------------------------------------------- robots.txt

ROBOTS = """\
User-agent: *
Disallow: /private/

User-agent: newsworker
Disallow: /no-bots/
Disallow: /*.pdf$
Allow: /no-bots/but-this
Crawl-delay: 2.5
"""


def _client(devserver):
    return http.make_client(Settings(allowed_private_hosts=[devserver.host_port], connect_timeout=5.0,
                                     read_timeout=5.0))


def _get(client, url: str, devserver) -> http.FetchResult:
    return http.get(client, url, max_bytes=1_000_000, allowed_private_hosts=[devserver.host_port], deadline=10)


def _robots(devserver, client, **kw: Any) -> RobotsCache:
    fetch = http_fetcher(client, allowed_private_hosts=[devserver.host_port], deadline=10,
                         limiter=kw.pop("limiter", None), max_wait=kw.pop("max_wait", None))
    return RobotsCache(fetch, UA, **kw)


def test_robots_rules_for_our_user_agent_and_one_fetch(devserver):
    devserver.add("/robots.txt", ROBOTS, content_type="text/plain")
    base = devserver.base_url
    with _client(devserver) as client:
        robots = _robots(devserver, client)
        assert robots.allowed(base + "/news/2024/story.html")
        assert not robots.allowed(base + "/no-bots/page.html")
        assert robots.allowed(base + "/no-bots/but-this.html")           # longest match wins
        assert not robots.allowed(base + "/files/report.pdf")
        assert robots.allowed(base + "/files/report.pdf?download=1")     # "$": the path must end there
        assert robots.allowed(base + "/private/x")                       # our group replaces "*"
        assert not robots.allowed(base + "/private/x", user_agent="OtherBot/2.0")
        assert robots.crawl_delay(base + "/anything") == 2.5
        with pytest.raises(RobotsDisallowed):
            robots.check(base + "/no-bots/page.html")
    fetched = devserver.requests_for("/robots.txt")
    assert len(fetched) == 1                                             # every answer above from one fetch
    assert fetched[0].headers["user-agent"] == UA                        # through http.get's client


def test_robots_404_allows_everything(devserver):
    with _client(devserver) as client:
        robots = _robots(devserver, client)
        assert robots.allowed(devserver.base_url + "/no-bots/page.html")
        assert robots.allowed(devserver.base_url + "/private/x")
        entry = robots.entry(devserver.base_url + "/")
    assert (entry.kind, entry.status) == ("allow_all", 404)
    assert robots.crawl_delay(devserver.base_url + "/") is None
    assert [r.status for r in devserver.requests_for("/robots.txt")] == [404]


def test_robots_500_disallows_everything_until_error_ttl(devserver):
    devserver.add("/robots.txt", "oops", status=500)
    page = devserver.base_url + "/news/story.html"
    with _client(devserver) as client:
        robots = _robots(devserver, client, error_ttl=0.5)
        assert not robots.allowed(page)
        assert robots.entry(page).kind == "disallow_all" and robots.entry(page).error == "HTTP 500"
        devserver.add("/robots.txt", "User-agent: *\nDisallow:\n", content_type="text/plain")   # fixed
        assert not robots.allowed(page)                       # the failure is remembered for a while...
        assert len(devserver.requests_for("/robots.txt")) == 1
        time.sleep(0.6)
        assert robots.allowed(page)                           # ...then asked again
    assert [r.status for r in devserver.requests_for("/robots.txt")] == [500, 200]


def test_robots_network_error_disallows(devserver):
    port = free_port()                                        # nothing listens there
    with _client(devserver) as client:
        fetch = http_fetcher(client, allowed_private_hosts=[f"127.0.0.1:{port}"], deadline=5)
        robots = RobotsCache(fetch, UA)
        assert not robots.allowed(f"http://127.0.0.1:{port}/page.html")
        entry = robots.entry(f"http://127.0.0.1:{port}/")
    assert entry.kind == "disallow_all" and entry.status is None and "connection failed" in (entry.error or "")


def test_robots_server_error_keeps_the_earlier_copy(devserver):
    devserver.add("/robots.txt", ROBOTS, content_type="text/plain")
    base = devserver.base_url
    with _client(devserver) as client:
        robots = _robots(devserver, client, ttl=0.3, error_ttl=60)
        assert robots.allowed(base + "/news/a.html") and not robots.allowed(base + "/no-bots/a.html")
        devserver.add("/robots.txt", "down", status=503)
        time.sleep(0.4)
        assert robots.allowed(base + "/news/a.html") and not robots.allowed(base + "/no-bots/a.html")
        entry = robots.entry(base + "/")
    assert entry.kind == "rules" and entry.error == "HTTP 503"
    assert [r.status for r in devserver.requests_for("/robots.txt")] == [200, 503]


def test_robots_cache_in_redis_is_shared_between_workers(devserver, redis_url, rc, prefix):
    devserver.add("/robots.txt", ROBOTS, content_type="text/plain")
    page = devserver.base_url + "/no-bots/a.html"
    with _client(devserver) as client:
        first = _robots(devserver, client, redis_client=rc, prefix=prefix + ":robots")
        assert not first.allowed(page)
        second = _robots(devserver, client, redis_client=redis.Redis.from_url(redis_url), prefix=prefix + ":robots")
        assert not second.allowed(page) and second.crawl_delay(page) == 2.5
        assert len(devserver.requests_for("/robots.txt")) == 1        # the second worker asked Redis, not the site
        alone = _robots(devserver, client)                             # no Redis: must fetch itself
        assert not alone.allowed(page)
    assert len(devserver.requests_for("/robots.txt")) == 2
    key = f"{prefix}:robots:http://{devserver.host_port}"
    assert 86_400 < rc.ttl(key) <= 86_400 + 7 * 86_400


def test_robots_beyond_500_kib_is_ignored(devserver):
    padding = "# " + "x" * 98 + "\n"
    body = "User-agent: *\nDisallow: /early\n" + padding * (MAX_ROBOTS_BYTES // len(padding) + 10) + "Disallow: /late\n"
    devserver.add("/robots.txt", body, content_type="text/plain")
    with _client(devserver) as client:
        robots = _robots(devserver, client)
        assert not robots.allowed(devserver.base_url + "/early/a")
        assert robots.allowed(devserver.base_url + "/late/a")
    assert len(robots.entry(devserver.base_url + "/").body.encode()) <= MAX_ROBOTS_BYTES
    # Cut at a line break: never half a rule (here "Disallow: /ab" would not become "/a").
    assert truncate(b"Disallow: /x\nDisallow: /ab", 20) == "Disallow: /x\n"
    assert truncate("\ufeffAllow: /".encode()) == "Allow: /"


def test_robots_fetch_takes_a_politeness_slot(devserver, limiter_for, rc, prefix):
    devserver.add("/robots.txt", ROBOTS, content_type="text/plain")
    page = devserver.base_url + "/news/a.html"
    with _client(devserver) as client:
        # The host asked us to back off: robots.txt is not fetched, and not cached as a failure.
        backing_off = limiter_for(name="penalised", max_concurrent=2, min_delay=5.0)
        backing_off.penalise(page, 30)
        robots = _robots(devserver, client, limiter=backing_off, max_wait=0.1, redis_client=rc,
                         prefix=prefix + ":robots")
        with pytest.raises(HostBusy):
            robots.allowed(page)
        assert devserver.requests_for("/robots.txt") == []
        assert rc.get(f"{prefix}:robots:http://{devserver.host_port}") is None
        # Otherwise robots.txt takes a slot like any request: the page then waits its turn.
        limiter = limiter_for(name="fresh", max_concurrent=2, min_delay=5.0)
        robots = _robots(devserver, client, limiter=limiter, max_wait=0.1)
        assert robots.allowed(page)
        wait = limiter.try_acquire(page)
        assert isinstance(wait, Wait) and wait.reason == "delay" and wait.seconds > 4.0
    assert len(devserver.requests_for("/robots.txt")) == 1


def test_robots_crawl_delay_request_rate_and_product_token():
    files = {"https://a.example/robots.txt": "User-agent: *\nRequest-rate: 1/10s\nCrawl-delay: 3\n",
             "https://b.example/robots.txt": "User-agent: *\nCrawl-delay: nonsense\n",
             # "github" is in our User-Agent's URL, not our product token: not our group.
             "https://c.example/robots.txt": "User-agent: github\nDisallow: /\n"}
    robots = RobotsCache(lambda url: (200, files[url].encode()), UA)
    assert robots.crawl_delay("https://a.example/x") == 10.0       # the longer of the two
    assert robots.crawl_delay("A.example") == 10.0                 # a bare host: its https origin
    assert robots.crawl_delay("https://b.example/x") is None
    assert robots.allowed("https://c.example/x")                   # another bot's group
    assert product_token(UA) == "newsworker"
    assert product_token("Mozilla/5.0 (compatible)") == "mozilla"
    assert robots.allowed("https://c.example/robots.txt")


def test_busy_feeds_are_deferred_in_groups_of_similar_waits():
    def busy(feed_id: int, seconds: float, host: str) -> tuple[int, HostBusy]:
        return feed_id, HostBusy(f"http://{host}/f.xml", Wait(host, seconds, "delay"), 0.0)

    items = [busy(1, 0.4, "a"), busy(2, 120, "b"), busy(3, 0.9, "c"), busy(4, 1.5, "d"), busy(5, 0.1, "e"),
             busy(6, 100, "f")]
    groups = group_by_wait(items)
    # one message per group, sent with its longest wait: at most twice what any member needs
    assert [[feed_id for feed_id, _ in g] for g in groups] == [[5, 1, 3], [4], [6, 2]]
    assert all(g[-1][1].retry_after <= 2 * max(1.0, g[0][1].retry_after) for g in groups)
    assert group_by_wait([]) == []
