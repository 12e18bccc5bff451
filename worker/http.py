"""The one place that talks HTTP: timeouts, size caps, a User-Agent, conditional GET,
and the private-address rule.  Everything else receives an ``httpx.Client`` from here,
so tests can pass a client with another transport."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Optional
from urllib.parse import urlsplit

import httpx

from .errors import BlockedURL, PermanentFetchError, TemporaryFetchError
from .settings import Settings, get_settings

ALLOWED_SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
REDIRECT_CODES = (301, 302, 303, 307, 308)


@dataclass
class FetchResult:
    """What a GET gave back.  ``not_modified`` means 304: there is no content."""

    url: str                      # the URL asked for
    final_url: str                # after redirects
    status: int
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    not_modified: bool = False

    @property
    def etag(self) -> Optional[str]:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> Optional[str]:
        return self.headers.get("last-modified")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def _is_private(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, allowed_private_hosts: list[str] | tuple[str, ...] = ()) -> None:
    """Raise ``BlockedURL`` unless *url* is http(s) to a public address, or its
    ``host:port`` is explicitly allowed."""
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
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TemporaryFetchError(url, f"cannot resolve host {host!r}: {exc}") from None
    for info in infos:
        addr = str(info[4][0])
        if _is_private(addr):
            raise BlockedURL(url, f"host {host!r} resolves to non-public address {addr}")


def make_client(settings: Settings | None = None, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """An ``httpx.Client`` with the project's timeouts, User-Agent and address checks.
    Redirects are followed by :func:`get` itself so that every hop is checked."""
    settings = settings or get_settings()
    return httpx.Client(
        headers={"User-Agent": settings.user_agent, "Accept-Encoding": "gzip, deflate, br"},
        timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
        follow_redirects=False,
        transport=transport,
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
    )


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
) -> FetchResult:
    """GET *url* following up to ``MAX_REDIRECTS`` checked redirects.

    Raises ``BlockedURL``, ``TemporaryFetchError`` (network, 5xx, 429, 408) or
    ``PermanentFetchError`` (other 4xx, too large, too many redirects)."""
    headers = {"Accept": accept}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        check_url(current, allowed_private_hosts)
        try:
            with client.stream("GET", current, headers=headers) as response:
                if response.status_code in REDIRECT_CODES:
                    location = response.headers.get("location")
                    if not location:
                        raise PermanentFetchError(url, f"HTTP {response.status_code} redirect without Location")
                    current = str(response.url.join(location))
                    continue
                return _read(url, current, response, max_bytes)
        except httpx.TimeoutException as exc:
            raise TemporaryFetchError(url, f"timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TemporaryFetchError(url, f"connection failed: {exc or type(exc).__name__}") from None
    raise PermanentFetchError(url, f"more than {MAX_REDIRECTS} redirects")


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
    if declared and declared.isdigit() and int(declared) > max_bytes and "content-encoding" not in headers:
        raise PermanentFetchError(url, f"body of {declared} bytes exceeds the {max_bytes}-byte cap", status=status)
    chunks: list[bytes] = []
    size = 0
    # iter_bytes decompresses, so the cap applies to the decompressed size too.
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise PermanentFetchError(url, f"body exceeds the {max_bytes}-byte cap", status=status)
        chunks.append(chunk)
    return FetchResult(url, final_url, status, b"".join(chunks), headers)
