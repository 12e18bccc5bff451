"""The one place that talks HTTP: timeouts, a total deadline, size caps, a User-Agent,
conditional GET, and the private-address rule.  Everything else receives an
``httpx.Client`` from here, so tests can pass a client with another transport.

Address checks live in the connect path (:class:`GuardedBackend`): each host is resolved
once, every answer is checked, and the socket goes to a checked address, so a DNS answer
that changes between check and connect (rebinding) cannot reach a private address."""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import itertools
import socket
import ssl
import time
import weakref
import zlib
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol
from urllib.parse import urlsplit

import httpcore
import httpx

from .errors import BlockedURL, PermanentFetchError, TemporaryFetchError
from .settings import Settings, get_settings

try:
    import brotli

    # brotli >= 1.1 can bound each step's output; without that a bomb is unbounded.
    brotli.Decompressor().process(b"", output_buffer_limit=1)
    BROTLI_BOUNDED = True
except (ImportError, TypeError, AttributeError):
    BROTLI_BOUNDED = False

ALLOWED_SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)
DECODE_CHUNK = 64 * 1024   # most decoded bytes produced per step: memory stays near the cap
MAX_CODINGS = 2            # Content-Encoding layers; each holds a decompressor's state
ACCEPT_ENCODING = "gzip, deflate, br" if BROTLI_BOUNDED else "gzip, deflate"

Resolver = Callable[[str, int], list[str]]


@dataclass
class FetchResult:
    """What a GET gave back.  ``not_modified`` means 304: there is no content."""

    url: str                      # the URL asked for
    final_url: str                # after redirects
    status: int
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    not_modified: bool = False
    redirects: list[tuple[int, str]] = field(default_factory=list)   # (status, target) per hop followed

    @property
    def moved_permanently_to(self) -> Optional[str]:
        """The final URL when every hop was a permanent redirect (301, 308) and none went
        from https to http: the address a subscriber should switch to."""
        if not self.redirects or any(code not in (301, 308) for code, _ in self.redirects):
            return None
        if urlsplit(self.url).scheme == "https" and any(urlsplit(t).scheme != "https" for _, t in self.redirects):
            return None
        return self.final_url

    @property
    def etag(self) -> Optional[str]:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> Optional[str]:
        return self.headers.get("last-modified")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


# ---------------------------------------------------------------- addresses

_NAT64 = ipaddress.ip_network("64:ff9b::/96")          # well-known prefix: IPv4 in the low 32 bits
_ALWAYS_REFUSED = tuple(ipaddress.ip_network(n) for n in (
    "64:ff9b:1::/48",    # local-use NAT64 (RFC 8215): the embedded IPv4 is site-specific
    "2001::/32",         # Teredo: tunnels to an obfuscated IPv4
    "::ffff:0:0:0/96",   # IPv4-translated (SIIT)
    "fec0::/10",         # deprecated site-local, still routed by some stacks
))


def is_public_address(addr: str) -> bool:
    """True if *addr* is a globally reachable unicast address.  IPv6 forms that carry an
    IPv4 address (mapped, NAT64, 6to4) are judged by that IPv4 address."""
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _ALWAYS_REFUSED):
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
    # is_global alone lets multicast (224/4, ff0e::) and some reserved IPv6 through.
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def resolve_host(host: str, port: int) -> list[str]:
    """Every address *host* resolves to, in resolver order.  Tests replace this (or pass
    ``resolver=`` to :func:`make_client`) to simulate DNS."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refusal(host: str, addrs: Iterable[str]) -> Optional[str]:
    for addr in addrs:
        if not is_public_address(addr):
            if addr == host:
                return f"non-public address {addr}"
            return f"host {host!r} resolves to non-public address {addr}"
    return None


def check_url(url: str, allowed_private_hosts: list[str] | tuple[str, ...] = (), *, resolve: bool = True) -> None:
    """Raise ``BlockedURL`` unless *url* is http(s) to a public address, or its
    ``host:port`` is explicitly allowed.  ``resolve=False`` checks only scheme, host and
    port (a client from :func:`make_client` checks addresses when it connects)."""
    parts = urlsplit(url)
    if parts.scheme not in ALLOWED_SCHEMES:
        raise BlockedURL(url, f"scheme {parts.scheme or '(none)'!r} is not fetched; only http and https")
    host = (parts.hostname or "").lower()
    if not host:
        raise BlockedURL(url, "no host in URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BlockedURL(url, "invalid port") from None
    if f"{host}:{port}" in allowed_private_hosts:
        return
    try:
        addrs = [str(ipaddress.ip_address(host))]   # a literal needs no lookup: always checked
    except ValueError:
        if not resolve:
            return
        try:
            addrs = resolve_host(host, port)
        except (OSError, UnicodeError) as exc:
            raise TemporaryFetchError(url, f"cannot resolve host {host!r}: {exc}") from None
    reason = _refusal(host, addrs)
    if reason:
        raise BlockedURL(url, reason)


# ---------------------------------------------------------------- per-request budget

@dataclass(frozen=True)
class _Budget:
    """What :func:`get` tells the connect path about the request running in this context."""

    allowed_private_hosts: tuple[str, ...]
    deadline: Optional[float] = None          # seconds, for messages
    deadline_at: Optional[float] = None       # time.monotonic() value

    def expired(self) -> bool:
        # Slack: a socket timeout set to the time left may wake a hair early.
        return self.deadline_at is not None and time.monotonic() >= self.deadline_at - 0.05

    def exceeded(self) -> str:
        return f"exceeded the {self.deadline:g} s deadline for the whole request (connect, headers, body, redirects)"


_BUDGET: contextvars.ContextVar[Optional[_Budget]] = contextvars.ContextVar("newsworker_http_budget", default=None)


def _time_left(timeout: Optional[float], exc: type[Exception]) -> Optional[float]:
    """*timeout* shortened to what is left of the request's deadline."""
    budget = _BUDGET.get()
    if budget is None or budget.deadline_at is None:
        return timeout
    left = budget.deadline_at - time.monotonic()
    if left <= 0:
        raise exc(f"exceeded the {budget.deadline:g} s deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """Every read and write waits at most until the deadline.  httpx timeouts are per
    operation, so a server dripping a byte at a time would otherwise never time out."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        self._inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: Optional[str] = None,
                  timeout: Optional[float] = None) -> httpcore.NetworkStream:
        # httpcore passes the URL's hostname here: SNI and certificate checks use it,
        # not the IP we connected to.
        return _DeadlineStream(self._inner.start_tls(
            ssl_context, server_hostname, _time_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore network backend that resolves once, refuses non-public answers (unless
    ``host:port`` is allowed) and connects to the checked address itself."""

    def __init__(self, allowed_private_hosts: Iterable[str] = (), resolver: Optional[Resolver] = None) -> None:
        self._allowed = tuple(allowed_private_hosts)
        self._resolver = resolver
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None,
                    local_address: Optional[str] = None,
                    socket_options: Optional[Iterable[httpcore.SOCKET_OPTION]] = None) -> httpcore.NetworkStream:
        budget = _BUDGET.get()
        allowed = budget.allowed_private_hosts if budget is not None else self._allowed
        host = host.lower()
        try:
            addrs = (self._resolver or resolve_host)(host, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve host {host!r}: {exc}") from None
        if not addrs:
            raise httpcore.ConnectError(f"host {host!r} resolves to no address")
        if f"{host}:{port}" not in allowed:
            reason = _refusal(host, addrs)
            if reason:
                raise BlockedURL(f"{host}:{port}", reason)
        error: Optional[Exception] = None
        for addr in addrs:   # only ever the addresses checked above; never the name again
            try:
                stream = self._backend.connect_tcp(addr, port, _time_left(timeout, httpcore.ConnectTimeout),
                                                   local_address, socket_options)
                return _DeadlineStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                            socket_options: Optional[Iterable[httpcore.SOCKET_OPTION]] = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_GUARDED: "weakref.WeakSet[httpx.Client]" = weakref.WeakSet()


class _Cookieless(httpx.Cookies):
    """The client's cookie store: it keeps nothing.  (A cookie a redirect sets is sent
    on the later hops of that one fetch, see :func:`_follow`.)"""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class _Client(httpx.Client):
    """An ``httpx.Client`` that remembers no cookies between fetches.  httpx keeps every
    Set-Cookie in one jar for the client's life, and copies and scans the whole jar for
    each request: with thousands of hosts each request would grow slower, and one site's
    cookies would ride along to its later requests (a fetcher should look the same each
    time)."""

    def __init__(self, **kwargs: Any) -> None:
        self._cookieless = _Cookieless()
        super().__init__(**kwargs)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookieless

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise ValueError("this client keeps no cookies")


def make_client(settings: Settings | None = None, transport: httpx.BaseTransport | None = None, *,
                resolver: Optional[Resolver] = None) -> httpx.Client:
    """An ``httpx.Client`` with the project's timeouts, User-Agent and address checks.
    Redirects are followed by :func:`get` itself so that every hop is checked.  With a
    custom *transport* the connect-path guard and the deadline inside reads are absent
    (:func:`get` then checks addresses by resolving before each hop)."""
    settings = settings or get_settings()
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
    guarded = transport is None
    if transport is None:
        # verify=True always; there is no path that retries without verification.
        # Passing a transport also stops httpx from using HTTP(S)_PROXY from the
        # environment: a proxy would connect on our behalf, past the address checks.
        transport = httpx.HTTPTransport(verify=True, limits=limits)
        pool = getattr(transport, "_pool", None)
        if not isinstance(pool, httpcore.ConnectionPool) or not hasattr(pool, "_network_backend"):
            raise RuntimeError("cannot install the address guard: httpx/httpcore internals changed")
        pool._network_backend = GuardedBackend(settings.allowed_private_hosts, resolver)
    client = _Client(
        headers={"User-Agent": settings.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
        timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
        follow_redirects=False,
        transport=transport,
        limits=limits,
    )
    if guarded:
        _GUARDED.add(client)
    return client


def retry_after_seconds(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as seconds: either a number or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from datetime import datetime, timezone

        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def get(
    client: httpx.Client,
    url: str,
    *,
    etag: Optional[str] = None,
    last_modified: Optional[str] = None,
    max_bytes: int,
    allowed_private_hosts: list[str] | tuple[str, ...] = (),
    accept: str = "*/*",
    deadline: Optional[float] = None,
) -> FetchResult:
    """GET *url* following up to ``MAX_REDIRECTS`` checked redirects.  *max_bytes* caps the
    body both as received and as decompressed; *deadline* (seconds, None = none) bounds the
    whole request: connect, headers, body and every redirect hop.

    Raises ``BlockedURL``, ``TemporaryFetchError`` (network, deadline, 5xx, 429, 408) or
    ``PermanentFetchError`` (other 4xx, too large, undecodable, too many redirects)."""
    headers = {"Accept": accept}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    budget = _Budget(tuple(allowed_private_hosts), deadline,
                     None if deadline is None else time.monotonic() + deadline)
    token = _BUDGET.set(budget)   # read by GuardedBackend and _DeadlineStream in this context
    try:
        return _follow(client, url, headers, max_bytes, budget)
    finally:
        _BUDGET.reset(token)


def _follow(client: httpx.Client, url: str, headers: dict[str, str], max_bytes: int, budget: _Budget) -> FetchResult:
    guarded = client in _GUARDED
    current = url
    hops: list[tuple[int, str]] = []
    cookies: Optional[httpx.Cookies] = None      # set by a redirect: sent on this fetch's later hops
    for _ in range(MAX_REDIRECTS + 1):
        via = "" if current == url else f" (redirected to {current})"
        if budget.expired():
            raise TemporaryFetchError(url, budget.exceeded() + via)
        try:
            # A guarded client checks addresses as it connects; resolving here too would
            # only add a lookup whose answer the connection does not use.
            check_url(current, budget.allowed_private_hosts, resolve=not guarded)
            request = client.build_request("GET", current, headers=headers)
            if cookies:
                cookies.set_cookie_header(request)
            with contextlib.closing(client.send(request, stream=True)) as response:
                if response.status_code in REDIRECT_CODES:
                    location = response.headers.get("location")
                    if not location:
                        raise PermanentFetchError(url, f"HTTP {response.status_code} redirect without Location{via}")
                    if "set-cookie" in response.headers:    # e.g. a consent or cookie-check hop
                        cookies = cookies or httpx.Cookies()
                        cookies.extract_cookies(response)
                    current = str(response.url.join(location))
                    hops.append((response.status_code, current))
                    continue
                result = _read(url, current, response, max_bytes)
                result.redirects = hops
                return result
        except BlockedURL as exc:   # the connect path knows only host:port: name the URL
            raise BlockedURL(current, exc.reason + (f" (redirected from {url})" if via else "")) from None
        except httpx.TimeoutException as exc:
            if budget.expired():
                raise TemporaryFetchError(url, budget.exceeded() + via) from None
            raise TemporaryFetchError(url, f"timed out ({type(exc).__name__}){via}") from None
        except httpx.TransportError as exc:
            raise TemporaryFetchError(url, f"connection failed: {exc or type(exc).__name__}{via}") from None
    raise PermanentFetchError(url, f"more than {MAX_REDIRECTS} redirects (last: {current})")


# ---------------------------------------------------------------- bounded decoding

class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...     # pieces of at most ~DECODE_CHUNK
    def finish(self) -> Iterator[bytes]: ...


class _Zlib:
    """gzip or deflate, decompressed DECODE_CHUNK at a time: a small input that expands
    enormously is never expanded in one go (httpx's decoders have no output limit)."""

    def __init__(self, wbits: int, raw_fallback: bool = False) -> None:
        self._d = zlib.decompressobj(wbits)
        self._fallback = raw_fallback   # "deflate" should be zlib-wrapped; some servers send it raw

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            try:
                out = self._d.decompress(data, DECODE_CHUNK)
            except zlib.error:
                if not self._fallback:
                    raise
                self._d, self._fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                continue
            self._fallback = False
            data = self._d.unconsumed_tail
            if out:
                yield out
            # A full output buffer may leave output pending even with no input left.
            if not data and len(out) < DECODE_CHUNK:
                return

    def finish(self) -> Iterator[bytes]:
        out = self._d.flush()   # nothing is pending after feed(), so this is small
        if out:
            yield out


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        out = self._d.process(data, output_buffer_limit=DECODE_CHUNK)
        if out:
            yield out
        while not self._d.can_accept_more_data():   # more output pending: drain it a chunk at a time
            out = self._d.process(b"", output_buffer_limit=DECODE_CHUNK)
            if not out:
                raise brotli.error("decoder made no progress")
            yield out

    def finish(self) -> Iterator[bytes]:
        return iter(())


_DECODERS: dict[str, Callable[[], _Decoder]] = {
    "gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "x-gzip": lambda: _Zlib(16 + zlib.MAX_WBITS),
    "deflate": lambda: _Zlib(zlib.MAX_WBITS, raw_fallback=True),
}
_DECODE_ERRORS: tuple[type[Exception], ...] = (zlib.error,)
if BROTLI_BOUNDED:
    _DECODERS["br"] = _Brotli
    _DECODE_ERRORS += (brotli.error,)


def _through(decoder: _Decoder, pieces: Iterable[bytes], final: bool) -> Iterator[bytes]:
    for piece in pieces:
        yield from decoder.feed(piece)
    if final:
        yield from decoder.finish()


def _decode(decoders: list[_Decoder], data: bytes, final: bool = False) -> Iterator[bytes]:
    """Run *data* through the decoder chain lazily, so each stage holds one piece at a time."""
    pieces: Iterable[bytes] = [data] if data else []
    for decoder in decoders:
        pieces = _through(decoder, pieces, final)
    return iter(pieces)


def _read(url: str, final_url: str, response: httpx.Response, max_bytes: int) -> FetchResult:
    status = response.status_code
    headers = {k.lower(): v for k, v in response.headers.items()}
    if status == 304:
        return FetchResult(url, final_url, status, headers=headers, not_modified=True)
    if status == 429 or status == 408 or status >= 500:
        raise TemporaryFetchError(
            url, f"HTTP {status}", status=status, retry_after=retry_after_seconds(headers.get("retry-after"))
        )
    if status >= 400:
        raise PermanentFetchError(url, f"HTTP {status}", status=status)
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:   # compressed or not: both are capped
        raise PermanentFetchError(url, f"declared body of {declared} bytes exceeds the {max_bytes}-byte cap",
                                  status=status)
    encoding = headers.get("content-encoding", "")
    codings = [c for c in (t.strip().lower() for t in encoding.split(",")) if c and c != "identity"]
    unknown = [c for c in codings if c not in _DECODERS]
    if unknown or len(codings) > MAX_CODINGS:
        raise PermanentFetchError(url, f"unsupported Content-Encoding {encoding!r}; "
                                       f"only one or two of {', '.join(sorted(_DECODERS))} are decoded", status=status)
    decoders = [_DECODERS[c]() for c in reversed(codings)]   # listed in the order applied
    label = "+".join(codings)
    chunks: list[bytes] = []
    received = size = 0
    try:
        # iter_raw: the bytes as sent, so both caps are enforced here and decompression
        # is ours (bounded), not httpx's.
        for data in itertools.chain(response.iter_raw(), [None]):  # None: end of body, flush decoders
            if data is not None:
                received += len(data)
                if received > max_bytes:
                    what = f"{label}-compressed body" if codings else "body"
                    raise PermanentFetchError(url, f"{what} exceeds the {max_bytes}-byte cap as received",
                                              status=status)
            for piece in _decode(decoders, data or b"", final=data is None):
                size += len(piece)
                if size > max_bytes:
                    raise PermanentFetchError(url, f"{label} body decompresses to more than the {max_bytes}-byte "
                                                   f"cap (stopped after {size} bytes; likely a decompression bomb)",
                                              status=status)
                chunks.append(piece)
    except _DECODE_ERRORS as exc:
        raise PermanentFetchError(url, f"cannot decode the {label} body: {exc}", status=status) from None
    return FetchResult(url, final_url, status, b"".join(chunks), headers)
