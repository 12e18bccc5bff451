"""robots.txt for article pages (RFC 9309), parsed by Protego (Scrapy's parser: RFC 9309
matching with ``*``/``$`` wildcards and longest-match Allow/Disallow, which the stdlib's
urllib.robotparser lacks: it takes the first matching rule and knows no wildcards).

The file is fetched through a caller-supplied ``fetch(url) -> (status, body)`` -- use
:func:`http_fetcher` so it goes through ``http.get`` and all its checks -- and cached per
origin (scheme://host[:port]): in Redis when a client is given, shared by every worker,
else in this process.  Outcomes, per RFC 9309 section 2.3.1:

* 2xx: the rules, cached ``ttl`` (24 h: the RFC's "SHOULD NOT use a cached version for
  more than 24 hours").  Only the first 500 KiB is parsed (the RFC's minimum).
* 4xx ("unavailable"): everything allowed, cached ``ttl``.
* 429, 5xx, network error, unfetchable body ("unreachable"): everything disallowed, for
  ``error_ttl`` only, then asked again -- unless an earlier copy of the rules is still
  kept (``stale_keep``), which is used meanwhile, as the RFC allows.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional
from urllib.parse import urlsplit

import httpx
import redis
from protego import Protego

from . import http
from .errors import FetchError, PermanentFetchError
from .politeness import HostBusy, HostLimiter, PolitenessUnavailable, host_key

log = logging.getLogger(__name__)

MAX_ROBOTS_BYTES = 500 * 1024      # parsed; the rest is ignored (RFC 9309 2.5)
FETCH_CAP = 2 * 1024 * 1024        # fetched at most: a larger file is "unreachable"
ROBOTS_ACCEPT = "text/plain, */*;q=0.5"

Fetch = Callable[[str], tuple[int, bytes]]
Kind = Literal["rules", "allow_all", "disallow_all"]
# Raised by a fetch that did not happen (politeness said wait): not a robots outcome,
# so it propagates and nothing is cached.
NOT_ATTEMPTED: tuple[type[Exception], ...] = (HostBusy, PolitenessUnavailable)


class RobotsDisallowed(PermanentFetchError):
    """The site's robots.txt disallows the URL for our user agent."""

    hint = "the site's robots.txt disallows this path; the feed's own text is used"


@dataclass(frozen=True)
class RobotsEntry:
    """What is known about one origin's robots.txt.  Times are epoch seconds (shared
    through Redis by machines whose clocks agree to well under ``error_ttl``)."""

    kind: Kind
    body: str = ""                 # the rules (kind "rules" only), truncated
    status: Optional[int] = None   # HTTP status of the fetch, None on a network error
    fetched_at: float = 0.0        # when the rules were last actually fetched
    expires_at: float = 0.0        # ask again after this
    error: Optional[str] = None    # why the last fetch was unreachable


def product_token(user_agent: str) -> str:
    """The token robots.txt groups are matched against: ``newsworker/0.1 (+url)`` ->
    ``newsworker`` (RFC 9309 2.2.1).  Matching the whole header would let a group named
    after a word in our URL or comment apply to us."""
    token = user_agent.strip().split("/", 1)[0].split(None, 1)
    return token[0].lower() if token else "*"


def origin(url: str) -> str:
    """``scheme://host[:port]``: robots.txt applies per origin (RFC 9309 2.3).  A bare
    ``host[:port]`` means https."""
    if "://" not in url:
        url = "https://" + url
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"robots.txt applies to http(s) URLs only, not {url!r}")
    return f"{scheme}://{host_key(url)}"


def truncate(body: bytes, limit: int = MAX_ROBOTS_BYTES) -> str:
    """The first *limit* bytes, cut at the last line break so a half line is not read
    as a shorter (wider) rule, decoded as UTF-8 (RFC 9309 2.3)."""
    if len(body) > limit:
        cut = body[:limit]
        body = cut[:cut.rfind(b"\n") + 1] if b"\n" in cut else b""
    return body.decode("utf-8", "replace").lstrip("\ufeff")


def http_fetcher(client: httpx.Client, *, allowed_private_hosts: list[str] | tuple[str, ...] = (),
                 deadline: Optional[float] = 30.0, limiter: Optional[HostLimiter] = None,
                 max_wait: Optional[float] = None) -> Fetch:
    """A ``fetch`` for :class:`RobotsCache` that goes through :func:`http.get` (address
    checks, redirects, size cap, deadline) and, given a *limiter*, holds a slot of the
    host like any other request.  HTTP errors come back as their status; network errors
    raise; a politeness wait raises :class:`~worker.politeness.HostBusy`."""

    def fetch(url: str) -> tuple[int, bytes]:
        def get() -> http.FetchResult:
            return http.get(client, url, max_bytes=FETCH_CAP, allowed_private_hosts=allowed_private_hosts,
                            accept=ROBOTS_ACCEPT, deadline=deadline)

        try:
            if limiter is None:
                result = get()
            else:
                with limiter.slot(url, max_wait=max_wait):   # a 429 here penalises the host too
                    result = get()
        except NOT_ATTEMPTED:
            raise
        except FetchError as exc:
            if exc.status is not None and exc.status >= 400:
                return exc.status, b""
            raise       # network error, too large, redirect loop: unreachable
        return result.status, result.content

    return fetch


class RobotsCache:
    """``allowed(url)`` and ``crawl_delay(url)`` for our user agent, robots.txt fetched
    once per origin and ``ttl``.  Thread-safe; one fetch per origin at a time per process
    (other processes may fetch the same file once each when it expires together)."""

    def __init__(self, fetch: Fetch, user_agent: str, *, redis_client: Optional[redis.Redis] = None,
                 ttl: float = 86_400, error_ttl: float = 600, stale_keep: float = 7 * 86_400,
                 prefix: str = "nw:robots", max_local: int = 2048) -> None:
        self._fetch = fetch
        self.user_agent = user_agent
        self._redis = redis_client
        self.ttl, self.error_ttl, self.stale_keep = ttl, error_ttl, stale_keep
        self._prefix = prefix
        self._max_local = max_local
        # origin -> (entry, parsed rules); LRU, so a crawl over many sites stays bounded.
        self._local: OrderedDict[str, tuple[RobotsEntry, Optional[Protego]]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}

    # -- questions
    def allowed(self, url: str, user_agent: Optional[str] = None) -> bool:
        """May *url* be fetched?  robots.txt itself always may."""
        if urlsplit(url).path == "/robots.txt":
            return True
        entry, rules = self._get(origin(url))
        if entry.kind != "rules" or rules is None:
            return entry.kind == "allow_all"
        return rules.can_fetch(url, product_token(user_agent or self.user_agent))

    def check(self, url: str, user_agent: Optional[str] = None) -> None:
        """Raise :class:`RobotsDisallowed` unless :meth:`allowed`."""
        if not self.allowed(url, user_agent):
            raise RobotsDisallowed(url, "disallowed by robots.txt")

    def crawl_delay(self, url: str, user_agent: Optional[str] = None) -> Optional[float]:
        """Seconds between requests the site (a URL or bare host) asks for (Crawl-delay, or Request-rate as
        seconds per request, whichever is longer); None if it asks nothing."""
        entry, rules = self._get(origin(url))
        if rules is None:
            return None
        token = product_token(user_agent or self.user_agent)
        delays = [rules.crawl_delay(token)]
        rate = rules.request_rate(token)
        if rate is not None and rate.requests > 0:
            delays.append(rate.seconds / rate.requests)
        valid = [d for d in delays if d is not None and math.isfinite(d) and d > 0]
        return max(valid) if valid else None

    def entry(self, url: str) -> RobotsEntry:
        """The cached entry for *url*'s origin (fetched if needed)."""
        return self._get(origin(url))[0]

    # -- cache
    def _get(self, key: str) -> tuple[RobotsEntry, Optional[Protego]]:
        now = time.time()
        with self._lock:
            hit = self._local.get(key)
            if hit is not None and hit[0].expires_at > now:
                self._local.move_to_end(key)
                return hit
            lock = self._fetching.setdefault(key, threading.Lock())
        with lock:      # one fetch per origin: the others wait for its answer
            with self._lock:
                hit = self._local.get(key)
            if hit is not None and hit[0].expires_at > time.time():
                return hit
            shared = self._load(key)
            if shared is not None and shared.expires_at > time.time():
                return self._remember(key, shared)
            stale = shared or (hit[0] if hit is not None else None)
            entry = self._refresh(key, stale)
            self._store(key, entry)
            return self._remember(key, entry)

    def _remember(self, key: str, entry: RobotsEntry) -> tuple[RobotsEntry, Optional[Protego]]:
        rules = Protego.parse(entry.body) if entry.kind == "rules" else None
        with self._lock:
            self._local[key] = (entry, rules)
            self._local.move_to_end(key)
            while len(self._local) > self._max_local:
                self._local.popitem(last=False)
            self._fetching.pop(key, None)   # waiters already hold it; new callers find the entry
        return entry, rules

    def _refresh(self, key: str, stale: Optional[RobotsEntry]) -> RobotsEntry:
        now = time.time()
        url = key + "/robots.txt"
        status: Optional[int] = None
        try:
            status, body = self._fetch(url)
        except NOT_ATTEMPTED:
            raise
        except (FetchError, OSError) as exc:
            error = str(exc)
        else:
            if 200 <= status < 300:
                return RobotsEntry("rules", truncate(body), status, now, now + self.ttl)
            if 400 <= status < 500 and status != 429:   # 429 is the server being overloaded
                return RobotsEntry("allow_all", "", status, now, now + self.ttl)
            error = f"HTTP {status}"                     # 5xx, 429, or a 1xx/3xx left after redirects
        log.warning("robots.txt at %s unreachable (%s): %s for %.0f s", url, error,
                    "keeping the earlier copy" if stale and stale.kind != "disallow_all" else "disallowing all",
                    self.error_ttl)
        if stale is not None and stale.kind != "disallow_all":
            return RobotsEntry(stale.kind, stale.body, stale.status, stale.fetched_at, now + self.error_ttl, error)
        return RobotsEntry("disallow_all", "", status, now, now + self.error_ttl, error)

    def _load(self, key: str) -> Optional[RobotsEntry]:
        if self._redis is None:
            return None
        try:
            raw = self._redis.get(f"{self._prefix}:{key}")
            return RobotsEntry(**json.loads(raw)) if raw else None
        except (redis.RedisError, ValueError, TypeError) as exc:   # fall back to fetching
            log.warning("robots cache read for %s failed: %s", key, exc)
            return None

    def _store(self, key: str, entry: RobotsEntry) -> None:
        if self._redis is None:
            return
        # Kept past its expiry, so an unreachable robots.txt can fall back to it.
        keep = max(1, int(entry.expires_at - time.time() + self.stale_keep))
        try:
            self._redis.set(f"{self._prefix}:{key}", json.dumps(asdict(entry)), ex=keep)
        except redis.RedisError as exc:
            log.warning("robots cache write for %s failed: %s", key, exc)
