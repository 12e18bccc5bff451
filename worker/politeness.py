"""Per-host politeness: at most N requests in flight to one host, a minimum delay between
the starts of two requests to it, and a penalty (Retry-After, 429) every worker obeys.

Two implementations of one interface (:class:`HostLimiter`):

* :class:`RedisHostLimiter` -- shared by every worker process on every machine.  Each
  decision is one Lua script, so it is atomic, and it uses the Redis server's clock, so
  machines with skewed clocks still agree.  A slot is a *lease* with an expiry: a worker
  killed while holding one blocks the host for at most ``lease_seconds``.
* :class:`LocalHostLimiter` -- threads of one process only (embedded mode has no Redis).

Use ``with limiter.slot(url): ...`` to wait (sleeping) for a slot, or
``limiter.try_acquire(url)`` to get a :class:`Lease` or a :class:`Wait` without waiting,
so a Celery task can re-queue itself with a countdown instead of holding a worker.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from itertools import zip_longest
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal, Optional, Union
from urllib.parse import urlsplit

import redis

from .errors import TemporaryFetchError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}
PENALTY_STATUSES = (429, 503)     # with Retry-After (429 also without): the host asked us to slow down
WaitReason = Literal["delay", "penalty", "busy"]


def host_key(url_or_host: str) -> str:
    """The key requests are limited by: lower-case hostname (IDNA-encoded, no trailing dot),
    plus ``:port`` when the port is not the scheme's default.  Accepts a URL or a key."""
    text = url_or_host.strip()
    parts = urlsplit(text if "://" in text else "//" + text)
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValueError(f"no host in {url_or_host!r}")
    if not host.isascii():    # one key whether a feed spells the name in Unicode or punycode
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {url_or_host!r}") from None
    if ":" in host:           # IPv6 literal: brackets keep the port unambiguous
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS.get(parts.scheme):
        return host
    return f"{host}:{port}"


def interleave_hosts(items: Iterable[tuple[int, str]]) -> list[int]:
    """The ids of ``(id, url)`` pairs reordered round-robin across hosts (one of each host,
    then the second of each, ...), keeping each host's own order: queued in this order,
    polls of one host are spread out instead of arriving together.  Hosts with the most
    items come first in every round: their chain of requests, one per politeness delay,
    is the longest, so it must not start late (ties keep the order hosts were seen in)."""
    by_host: dict[str, list[int]] = {}
    for item_id, url in items:
        try:
            key = host_key(url)
        except ValueError:
            key = ""
        by_host.setdefault(key, []).append(item_id)
    groups = sorted(by_host.values(), key=len, reverse=True)
    return [i for round_ in zip_longest(*groups) for i in round_ if i is not None]


def group_by_wait(busy: Iterable[tuple[int, HostBusy]]) -> list[list[tuple[int, HostBusy]]]:
    """Busy items grouped by how long their hosts ask them to wait, in doubling windows
    (up to 1 s, 1-2 s, 2-4 s, ...), longest wait last in each group.  One deferred
    message per group, sent with that longest wait, holds each item back at most twice
    what it needs (or 1 s), instead of one message per host: a batch that ran into its
    own hosts' delays would otherwise come back as 25 single-feed polls."""
    groups: dict[int, list[tuple[int, HostBusy]]] = {}
    for item in busy:
        wait = item[1].retry_after or 0.0
        groups.setdefault(math.ceil(math.log2(wait)) if wait > 1 else 0, []).append(item)
    return [sorted(g, key=lambda item: item[1].retry_after or 0.0) for _, g in sorted(groups.items())]


@dataclass(frozen=True)
class Lease:
    """A held slot.  Times are the limiter's clock (Redis server time, or time.monotonic()
    for the local limiter): compare leases of one limiter only."""

    host: str
    token: str
    started_at: float
    expires_at: float
    delay: float = 0.0      # the host's next request waits this long after this one ends


@dataclass(frozen=True)
class Wait:
    """No slot now.  ``delay``/``penalty``: the host may be asked again in exactly
    ``seconds``.  ``busy``: all slots are held; ``seconds`` is only a re-check hint."""

    host: str
    seconds: float
    reason: WaitReason


class HostBusy(TemporaryFetchError):
    """The host's politeness limit did not allow a request within the wait allowed.
    ``retry_after`` is the countdown a task should re-queue itself with."""

    hint = "the host's politeness limit; try again after retry_after seconds (not a failure of the host)"

    def __init__(self, url: str, wait: Wait, waited: float):
        super().__init__(url, f"host {wait.host} {_REASONS[wait.reason]} after waiting {waited:.1f} s; "
                              f"next try in {wait.seconds:.1f} s", retry_after=wait.seconds)
        self.host = wait.host
        self.wait = wait


class PolitenessUnavailable(TemporaryFetchError):
    """The shared limiter could not be asked (Redis down): fetch nothing rather than
    fetch impolitely."""

    hint = "Redis unreachable; will be retried with backoff"


_REASONS: dict[WaitReason, str] = {"delay": "was asked too recently", "penalty": "asked us to back off",
                                   "busy": "has all its slots in use"}


class HostLimiter:
    """The shared interface and the waiting logic; subclasses implement the atomic steps.

    max_concurrent: requests in flight per host.  min_delay: seconds between two starts.
    lease_seconds: a slot not released is freed after this long -- must exceed the
    longest request (the http deadline).  busy_poll: re-check interval while all slots
    are held.  max_penalty: cap on a host's Retry-After.  default_penalty: back-off after
    a 429 without Retry-After.  max_wait: default wait limit of :meth:`slot`."""

    def __init__(self, *, max_concurrent: int = 2, min_delay: float = 1.0, lease_seconds: float = 120.0,
                 busy_poll: float = 0.5, max_penalty: float = 3600.0, default_penalty: float = 60.0,
                 max_wait: float = 30.0) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if min_delay < 0 or lease_seconds <= 0 or busy_poll <= 0 or max_wait < 0:
            raise ValueError("min_delay and max_wait must be >= 0; lease_seconds and busy_poll > 0")
        self.max_concurrent = max_concurrent
        self.min_delay = min_delay
        self.lease_seconds = lease_seconds
        self.busy_poll = busy_poll
        self.max_penalty = max_penalty
        self.default_penalty = default_penalty
        self.max_wait = max_wait

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_concurrent={self.max_concurrent}, min_delay={self.min_delay}, "
                f"lease_seconds={self.lease_seconds})")

    # -- the atomic steps
    def try_acquire(self, url_or_host: str, *, min_delay: Optional[float] = None) -> Union[Lease, Wait]:
        """Take a slot now if the host allows it, else say how long to wait.  *min_delay*
        raises (never lowers) this request's delay, e.g. to a robots.txt Crawl-delay."""
        raise NotImplementedError

    def release(self, lease: Lease) -> bool:
        """Give the slot back.  False if it had expired already (held past its lease)."""
        raise NotImplementedError

    def restamp(self, lease: Lease) -> Optional[Wait]:
        """For a request that starts a while after its slot was granted (queued behind
        other fetches): count the host's delay from now instead of from the grant, so the
        next request granted cannot come closer to this one than the delay.  Returns a
        :class:`Wait` instead when that is no longer possible: another request of the
        host was granted or ended since, the host asked us to back off, or the lease
        expired.  Then give the lease back without a delay and ask for a new slot."""
        raise NotImplementedError

    def try_acquire_many(self, urls: list[str]) -> list[Union[Lease, Wait]]:
        """:meth:`try_acquire` for each URL, in order (Redis: one round trip for all)."""
        return [self.try_acquire(url) for url in urls]

    @contextmanager
    def held(self, lease: Lease, url_or_host: str) -> Iterator[Lease]:
        """The body of the ``with`` holds *lease*, released at its end; a 429 (or 503 with
        Retry-After) raised in it penalises the host for everyone first."""
        try:
            yield lease
        except BaseException as exc:
            self.penalise_for(url_or_host, exc)
            raise
        finally:
            self.release(lease)

    def penalise(self, url_or_host: str, seconds: float) -> float:
        """No request to the host starts for *seconds* (capped at ``max_penalty``), on
        any worker.  Never shortens a longer penalty.  Returns the seconds in force."""
        host = host_key(url_or_host)
        seconds = min(max(seconds, 0.0), self.max_penalty)
        return self._penalise_host(url_or_host, host, seconds) if seconds > 0 else 0.0

    def _penalise_host(self, url_or_host: str, host: str, seconds: float) -> float:
        raise NotImplementedError

    # -- waiting
    def _sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def _delay(self, min_delay: Optional[float]) -> float:
        return max(self.min_delay, min_delay or 0.0)

    @contextmanager
    def slot(self, url_or_host: str, *, max_wait: Optional[float] = None,
             min_delay: Optional[float] = None) -> Iterator[Lease]:
        """Hold a slot for the body of the ``with``.  Sleeps until one is free, or raises
        :class:`HostBusy` at once if the known wait exceeds *max_wait* (default
        ``self.max_wait``; 0 = do not wait).  A 429 (or 503 with Retry-After) raised in the
        body penalises the host for everyone before it propagates."""
        limit = self.max_wait if max_wait is None else max_wait
        start = time.monotonic()
        while True:
            got = self.try_acquire(url_or_host, min_delay=min_delay)
            if isinstance(got, Lease):
                break
            waited = time.monotonic() - start
            left = limit - waited
            # A known wait longer than what is left: fail now, so the task re-queues with
            # the exact countdown.  Busy: the wait is unknown, so poll until time is up.
            give_up = left <= 0 if got.reason == "busy" else got.seconds > left
            if give_up:
                raise HostBusy(url_or_host, got, waited)
            # Jitter spreads the waiters that would all wake at the same instant.
            nap = got.seconds * (1 + random.uniform(0, 0.1)) + random.uniform(0, 0.01)
            self._sleep(max(0.001, min(nap, left)))
        with self.held(got, url_or_host):
            yield got

    def penalise_for(self, url_or_host: str, exc: BaseException) -> None:
        """Penalise the host if *exc* says it asked us to slow down (429; 503 with Retry-After)."""
        status = getattr(exc, "status", None)
        retry_after = getattr(exc, "retry_after", None)
        if status == 429 or (status in PENALTY_STATUSES and retry_after):
            try:
                self.penalise(url_or_host, retry_after if retry_after else self.default_penalty)
            except PolitenessUnavailable:
                log.warning("could not record the back-off for %s: limiter unavailable", url_or_host)


# ---------------------------------------------------------------- Redis

# Lua passes numbers to redis.call as "%.14g": epoch microseconds (16 digits) would lose
# precision, so they go through string.format first.  TIME (the server's clock) makes
# every machine agree; scripts are replicated by effect, so TIME is allowed before writes.
_NOW = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function str(n) return string.format('%.0f', n) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The host's earliest next start (µs) and why; the key lives until then.
local function set_next(key, at, why)
  redis.call('HSET', key, 'at', str(at), 'why', why)
  redis.call('PEXPIRE', key, str(math.ceil((at - now) / 1000)))
end
"""

# KEYS: leases (zset token -> expiry µs), next (hash: at = earliest next start µs, why)
# ARGV: token, max_concurrent, delay µs, lease µs.  Returns {1, start, expiry} or
# {2 delay | 3 penalty | 4 busy, µs to wait}.  Expired leases (killed workers) go first.
_ACQUIRE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', str(now))
local nxt = redis.call('HMGET', KEYS[2], 'at', 'why')
local at = tonumber(nxt[1] or '0')
if at > now then
  return {nxt[2] == 'penalty' and 3 or 2, at - now}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return {4, 0}
end
local delay, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], str(now + lease), ARGV[1])
-- The key outlives its longest lease (workers may be configured with different ones).
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], str(math.ceil((tonumber(last[2]) - now) / 1000)))
if delay > 0 then
  set_next(KEYS[2], now + delay, 'delay')
end
return {1, now, now + lease}
"""

# KEYS: leases, next.  ARGV: token, delay µs.  Returns 1 if the lease was still held.
# The delay counts from the end of the request too, so a host never sees two requests
# closer than the delay, however late the first one left the client.
_RELEASE = _NOW + """
local held = redis.call('ZREM', KEYS[1], ARGV[1])
local delay = tonumber(ARGV[2])
if delay > 0 then
  local nxt = redis.call('HMGET', KEYS[2], 'at', 'why')
  local at = tonumber(nxt[1] or '0')
  if at < now + delay then
    set_next(KEYS[2], now + delay, nxt[2] == 'penalty' and at > now and 'penalty' or 'delay')
  end
end
return held
"""

# KEYS: leases, next.  ARGV: token, delay µs, the lease's start µs.  Returns {1, 0} when
# the host's next start now counts from now; {2, wait µs} when another request was
# granted or ended since this lease's grant, or a penalty is in force; {0, 0} when the
# lease is gone.
_RESTAMP = _NOW + """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {0, 0}
end
local nxt = redis.call('HMGET', KEYS[2], 'at', 'why')
local at = tonumber(nxt[1] or '0')
local delay = tonumber(ARGV[2])
if at > now and at > tonumber(ARGV[3]) + delay + 1000 then
  return {2, at - now}
end
if delay > 0 and at < now + delay then
  set_next(KEYS[2], now + delay, 'delay')
end
return {1, 0}
"""

# KEYS: next.  ARGV: penalty µs.  A longer penalty already in force is kept.
_PENALISE = _NOW + """
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
local want = now + tonumber(ARGV[1])
if want > at then
  set_next(KEYS[1], want, 'penalty')
  return tonumber(ARGV[1])
end
return at - now
"""

_US = 1_000_000


class RedisHostLimiter(HostLimiter):
    """The limiter every worker shares.  Keys: ``{prefix}:{host}:leases|next``; the
    braces are a Redis Cluster hash tag, so one host's keys live on one node.  Safe to
    use from several threads, and after a fork (redis-py reconnects per process)."""

    def __init__(self, client: redis.Redis, *, prefix: str = "nw:polite", **limits: Any) -> None:
        super().__init__(**limits)
        self.client = client
        self.prefix = prefix
        self._acquire = self.client.register_script(_ACQUIRE)
        self._release = self.client.register_script(_RELEASE)
        self._restamp = self.client.register_script(_RESTAMP)
        self._penalise = self.client.register_script(_PENALISE)

    def _keys(self, host: str) -> list[str]:
        return [f"{self.prefix}:{{{host}}}:leases", f"{self.prefix}:{{{host}}}:next"]

    def try_acquire(self, url_or_host: str, *, min_delay: Optional[float] = None) -> Union[Lease, Wait]:
        host = host_key(url_or_host)
        token = uuid.uuid4().hex
        try:
            delay = self._delay(min_delay)
            reply = self._acquire(keys=self._keys(host), args=[
                token, self.max_concurrent, int(delay * _US), int(self.lease_seconds * _US)])
        except redis.RedisError as exc:
            raise PolitenessUnavailable(url_or_host, f"politeness limiter unavailable: {exc}") from None
        return self._grant(host, token, delay, reply)

    def try_acquire_many(self, urls: list[str]) -> list[Union[Lease, Wait]]:
        if not urls:
            return []       # no round trip for a batch of late polls only
        hosts = [host_key(url) for url in urls]
        tokens = [uuid.uuid4().hex for _ in urls]
        delay = self._delay(None)
        try:
            pipe = self.client.pipeline(transaction=False)
            for host, token in zip(hosts, tokens):
                self._acquire(keys=self._keys(host), args=[
                    token, self.max_concurrent, int(delay * _US), int(self.lease_seconds * _US)], client=pipe)
            replies = pipe.execute()
        except redis.RedisError as exc:
            raise PolitenessUnavailable(urls[0] if urls else "", f"politeness limiter unavailable: {exc}") from None
        return [self._grant(host, token, delay, reply) for host, token, reply in zip(hosts, tokens, replies)]

    def _grant(self, host: str, token: str, delay: float, reply: list[int]) -> Union[Lease, Wait]:
        code, *rest = reply
        if code == 1:
            return Lease(host, token, rest[0] / _US, rest[1] / _US, delay)
        if code == 4:
            return Wait(host, self.busy_poll, "busy")
        return Wait(host, rest[0] / _US, "penalty" if code == 3 else "delay")

    def release(self, lease: Lease) -> bool:
        try:
            return bool(self._release(keys=self._keys(lease.host), args=[lease.token, int(lease.delay * _US)]))
        except redis.RedisError as exc:     # the lease expires by itself
            log.warning("could not release the slot for %s (freed in %.0f s at most): %s",
                        lease.host, self.lease_seconds, exc)
            return False

    def restamp(self, lease: Lease) -> Optional[Wait]:
        try:
            code, wait = self._restamp(keys=self._keys(lease.host), args=[
                lease.token, int(lease.delay * _US), int(lease.started_at * _US)])
        except redis.RedisError as exc:
            raise PolitenessUnavailable(lease.host, f"politeness limiter unavailable: {exc}") from None
        return None if code == 1 else Wait(lease.host, wait / _US, "delay")

    def _penalise_host(self, url_or_host: str, host: str, seconds: float) -> float:
        try:
            in_force = self._penalise(keys=self._keys(host)[1:], args=[int(seconds * _US)])
        except redis.RedisError as exc:
            raise PolitenessUnavailable(url_or_host, f"politeness limiter unavailable: {exc}") from None
        return int(in_force) / _US


# ---------------------------------------------------------------- in-process

@dataclass
class _HostState:
    leases: dict[str, float] = field(default_factory=dict)    # token -> expiry (monotonic)
    next_at: float = 0.0
    why: WaitReason = "delay"


class LocalHostLimiter(HostLimiter):
    """The same limits for the threads of one process (embedded mode, no Redis).  Two
    processes each using one do not see each other's requests."""

    def __init__(self, **limits: Any) -> None:
        super().__init__(**limits)
        self._hosts: dict[str, _HostState] = {}
        self._cond = threading.Condition()

    def _state(self, host: str, now: float) -> _HostState:
        if len(self._hosts) > 1000:    # forget idle hosts now and then: the dict stays small
            for h in [h for h, s in self._hosts.items() if not s.leases and s.next_at <= now]:
                del self._hosts[h]
        return self._hosts.setdefault(host, _HostState())

    def try_acquire(self, url_or_host: str, *, min_delay: Optional[float] = None) -> Union[Lease, Wait]:
        host = host_key(url_or_host)
        with self._cond:
            now = time.monotonic()
            state = self._state(host, now)
            state.leases = {t: exp for t, exp in state.leases.items() if exp > now}
            if state.next_at > now:
                return Wait(host, state.next_at - now, state.why)
            if len(state.leases) >= self.max_concurrent:
                return Wait(host, self.busy_poll, "busy")
            token = uuid.uuid4().hex
            delay = self._delay(min_delay)
            state.leases[token] = now + self.lease_seconds
            state.next_at, state.why = now + delay, "delay"
            return Lease(host, token, now, now + self.lease_seconds, delay)

    def release(self, lease: Lease) -> bool:
        with self._cond:
            state = self._hosts.get(lease.host)
            held = state is not None and state.leases.pop(lease.token, None) is not None
            now = time.monotonic()
            if state is not None and state.next_at < now + lease.delay:
                # the delay counts from the end of the request too (see _RELEASE)
                if not (state.why == "penalty" and state.next_at > now):
                    state.why = "delay"
                state.next_at = now + lease.delay
            self._cond.notify_all()     # a waiter on a busy host need not sleep out its poll
            return held

    def restamp(self, lease: Lease) -> Optional[Wait]:
        with self._cond:
            now = time.monotonic()
            state = self._state(lease.host, now)
            if state.leases.get(lease.token, now) <= now:
                return Wait(lease.host, 0.0, "delay")         # the lease is gone
            if state.next_at > now and state.next_at > lease.started_at + lease.delay + 0.001:
                return Wait(lease.host, state.next_at - now, state.why)
            if lease.delay > 0 and state.next_at < now + lease.delay:
                state.next_at, state.why = now + lease.delay, "delay"
            return None

    def _penalise_host(self, url_or_host: str, host: str, seconds: float) -> float:
        with self._cond:
            now = time.monotonic()
            state = self._state(host, now)
            if now + seconds > state.next_at:
                state.next_at, state.why = now + seconds, "penalty"
                return seconds
            return state.next_at - now

    def _sleep(self, seconds: float) -> None:
        with self._cond:
            self._cond.wait(seconds)


# ---------------------------------------------------------------- what the pipeline holds

@dataclass
class Politeness:
    """The limiter and robots.txt rules one worker process applies to every request:
    :meth:`gate` holds a slot of the URL's host for one request (waiting at most
    ``max_wait``; longer waits raise :class:`HostBusy` so the task re-queues itself)."""

    limiter: HostLimiter
    robots: Any = None                  # worker.robots.RobotsCache, or None when robots.txt is not consulted
    max_wait: float = 10.0
    max_crawl_delay: float = 60.0

    fallback: Optional[HostLimiter] = None   # used while the shared limiter is unreachable

    @contextmanager
    def gate(self, url: str, *, page: bool = False, max_wait: Optional[float] = None) -> Iterator[None]:
        """Hold a slot of *url*'s host for the body of the ``with``, waiting at most
        *max_wait* (default ``self.max_wait``) for it.  For article pages (*page*),
        robots.txt is checked first (``RobotsDisallowed``) and its Crawl-delay honoured.
        While Redis is unreachable the limits hold per process (*fallback*): the tasks in
        flight finish instead of failing their feeds."""
        delay = None
        max_wait = self.max_wait if max_wait is None else max_wait
        if page and self.robots is not None:
            self.robots.check(url)
            asked = self.robots.crawl_delay(url)
            delay = min(asked, self.max_crawl_delay) if asked else None
        with ExitStack() as stack:
            try:
                stack.enter_context(self.limiter.slot(url, max_wait=max_wait, min_delay=delay))
            except PolitenessUnavailable as exc:
                if self.fallback is None:
                    raise
                log.warning("%s; limiting %s in this process until it is back", exc.reason, host_key(url))
                stack.enter_context(self.fallback.slot(url, max_wait=max_wait, min_delay=delay))
            yield


    def acquire_many(self, urls: list[str]) -> tuple[list[Union[Lease, Wait]], HostLimiter]:
        """Ask for a slot for each URL at once, without waiting (feed polls: no robots.txt).
        Returns the grants and the limiter that gave them: release each lease there
        (:meth:`HostLimiter.held`) for its request."""
        try:
            return self.limiter.try_acquire_many(urls), self.limiter
        except PolitenessUnavailable as exc:
            if self.fallback is None:
                raise
            log.warning("%s; limiting in this process until it is back", exc.reason)
            return self.fallback.try_acquire_many(urls), self.fallback


def make_politeness(settings: Any, client: Any, redis_url: Optional[str],
                    max_wait: Optional[float] = None) -> Politeness:
    """The limiter on Redis when there is one (shared by every worker), else in this
    process only (the embedded default); robots.txt fetched through *client*."""
    from .robots import RobotsCache, http_fetcher

    limits = dict(max_concurrent=settings.polite_max_concurrent, min_delay=settings.polite_min_delay,
                  lease_seconds=max(settings.polite_lease_seconds, settings.request_deadline + 30),
                  max_wait=settings.polite_max_wait)
    rclient = redis.Redis.from_url(redis_url) if redis_url else None
    limiter: HostLimiter = RedisHostLimiter(rclient, **limits) if rclient else LocalHostLimiter(**limits)
    robots = None
    if settings.robots_enabled:
        robots = RobotsCache(http_fetcher(client, allowed_private_hosts=settings.allowed_private_hosts,
                                          deadline=settings.request_deadline, limiter=limiter,
                                          max_wait=settings.polite_max_wait),
                             settings.user_agent, redis_client=rclient)
    fallback = LocalHostLimiter(**limits) if rclient else None
    return Politeness(limiter, robots, settings.polite_max_wait if max_wait is None else max_wait, fallback=fallback)
