"""Many small news hosts on 127.0.0.1, one port each, for the polling-at-scale bench.

A plain asyncio HTTP/1.1 server (keep-alive, no framework) so that serving thousands of
requests a second costs the 2-core machine little next to the workers it measures.
The politeness limiter keys hosts by ``host:port``, so every port is a host of its own.

Feed ``/feed/<i>.xml`` behaves by ``i % 100`` (the bench stores each feed with the
validators of a previous poll):

    0-89  unchanged: 304 when If-None-Match matches (90%)
    90-94 new items: 200, two new entries linking to /page/<i>-<n>.html
    95    ignores conditional GET: 200 with the same bytes as last time (body-hash skip)
    96    500
    97    404
    98    429 with Retry-After: 120 (such feeds sit on hosts of their own, see ``host_of``)
    99    slow: 304 after 0.3 s

For every host it records requests, the most requests in flight at once and the
shortest gap between the starts of two requests; ``GET /stats`` on the control port
returns them as JSON.

    python bench/fakehosts.py --hosts 400 --feeds 10000    # prints the control port, then ports
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from email.utils import formatdate

KIND_UNCHANGED, KIND_NEW, KIND_SAME_BODY, KIND_500, KIND_404, KIND_429, KIND_SLOW = (
    "unchanged", "new", "same_body", "error_500", "gone_404", "throttled_429", "slow")


SLOW_SECONDS = 0.3      # how late a slow feed answers


def kind_of(i: int) -> str:
    r = i % 100
    if r < 90:
        return KIND_UNCHANGED
    return {90: KIND_NEW, 91: KIND_NEW, 92: KIND_NEW, 93: KIND_NEW, 94: KIND_NEW, 95: KIND_SAME_BODY,
            96: KIND_500, 97: KIND_404, 98: KIND_429, 99: KIND_SLOW}[r]


def etag_of(i: int) -> str:
    return f'"v1-{i}"'


def host_of(i: int, hosts: int, feeds: int) -> int:
    """The port index serving feed *i*: feeds that answer 429 get a host each (a 429 slows
    every feed of its host, which is the point, but would make the cycle wait on it).  The
    others are spread so that each host holds a mix of kinds: with ``i % hosts`` and 400
    hosts, every slow feed sat on the same 4 hosts, 25 each, and the per-host limit alone
    held the cycle to 25 x (1 s + 0.3 s)."""
    if kind_of(i) == KIND_429:
        return hosts + (i // 100)
    return (i + i // 100) % hosts


def port_count(hosts: int, feeds: int) -> int:
    return hosts + (feeds + 99) // 100


def feed_body(i: int, version: int) -> bytes:
    items = "".join(
        f"<item><title>Story {i}-{n}</title><link>http://{{host}}/page/{i}-{n}.html</link>"
        f"<guid>story-{i}-{n}</guid><pubDate>{formatdate(1_790_000_000 + n * 3600, usegmt=True)}</pubDate>"
        f"<description>Summary of story {i}-{n}.</description></item>"
        for n in range(version * 2, version * 2 + 2))
    return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>Feed {i}</title>'
            f"<link>http://example.org/{i}</link><description>bench feed</description>{items}</channel></rss>").encode()


class HostStats:
    __slots__ = ("requests", "in_flight", "max_in_flight", "last_start", "min_gap", "first", "last", "statuses")

    def __init__(self) -> None:
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.last_start: float | None = None
        self.min_gap: float | None = None
        self.first: float | None = None
        self.last: float | None = None
        self.statuses: dict[int, int] = {}


def _feed_number(path: str) -> int:
    return int(path[len("/feed/"):-len(".xml")])


class _Connection(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests without bodies, answered in order."""

    def __init__(self, hosts: "Hosts", port: int):
        self.hosts, self.port = hosts, port
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport      # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.hosts.request(self.port, head, self.transport)


class Hosts:
    def __init__(self, hosts: int, feeds: int):
        self.hosts, self.feeds = hosts, feeds
        self.stats: dict[int, HostStats] = {}
        self.ports: list[int] = []

    def request(self, port: int, head: bytes, transport: asyncio.Transport) -> None:
        stats = self.stats.setdefault(port, HostStats())
        lines = head.decode("latin-1").split("\r\n")
        _method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        now = time.monotonic()
        stats.requests += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if stats.last_start is not None:
            gap = now - stats.last_start
            stats.min_gap = gap if stats.min_gap is None else min(stats.min_gap, gap)
        stats.last_start = now
        stats.first = stats.first or now
        stats.last = now

        def send() -> None:
            stats.in_flight -= 1
            status, extra, body = self.respond(path, headers)
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            reason = {200: "OK", 304: "Not Modified", 404: "Not Found", 429: "Too Many Requests",
                      500: "Internal Server Error"}.get(status, "OK")
            out = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *extra, "", ""]
            if not transport.is_closing():
                transport.write("\r\n".join(out).encode() + body)

        if path.startswith("/feed/") and kind_of(_feed_number(path)) == KIND_SLOW:
            asyncio.get_running_loop().call_later(SLOW_SECONDS, send)
        else:
            send()

    def respond(self, path: str, headers: dict[str, str]) -> tuple[int, list[str], bytes]:
        if path.startswith("/page/"):
            slug = path[len("/page/"):].removesuffix(".html")
            html = (f"<html><head><title>Story {slug}</title></head><body><article><h1>Story {slug}</h1>"
                    + f"<p>Paragraph of story {slug}. " * 20 + "</p></article></body></html>")
            return 200, ["Content-Type: text/html; charset=utf-8"], html.encode()
        if not (path.startswith("/feed/") and path.endswith(".xml")):
            return 404, [], b""
        i = _feed_number(path)
        kind = kind_of(i)
        rss = ["Content-Type: application/rss+xml"]
        if kind in (KIND_UNCHANGED, KIND_SLOW):     # (slow ones are answered late by request())
            if headers.get("if-none-match") == etag_of(i):
                return 304, [f"ETag: {etag_of(i)}"], b""
            return 200, rss + [f"ETag: {etag_of(i)}"], feed_body(i, 0).replace(b"{host}", headers["host"].encode())
        if kind == KIND_NEW:
            return 200, rss + [f'ETag: "v2-{i}"'], feed_body(i, 1).replace(b"{host}", headers["host"].encode())
        if kind == KIND_SAME_BODY:
            return 200, rss, feed_body(i, 0).replace(b"{host}", headers["host"].encode())
        if kind == KIND_500:
            return 500, [], b"upstream broke"
        if kind == KIND_404:
            return 404, [], b"no such feed"
        return 429, ["Retry-After: 120"], b"slow down"

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = json.dumps({str(p): {"requests": s.requests, "max_in_flight": s.max_in_flight,
                                        "min_gap": s.min_gap, "first": s.first, "last": s.last,
                                        "statuses": s.statuses}
                               for p, s in self.stats.items()}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        finally:
            writer.close()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for _ in range(port_count(self.hosts, self.feeds)):
            holder: dict[str, int] = {}
            server = await loop.create_server(lambda h=holder: _Connection(self, h["port"]), "127.0.0.1", 0,
                                              backlog=512)
            holder["port"] = server.sockets[0].getsockname()[1]
            self.ports.append(holder["port"])
            servers.append(server)
        control = await asyncio.start_server(self.control, "127.0.0.1", 0)
        print(control.sockets[0].getsockname()[1], flush=True)
        print(" ".join(map(str, self.ports)), flush=True)
        await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=400)
    ap.add_argument("--feeds", type=int, default=10_000)
    args = ap.parse_args()
    try:
        asyncio.run(Hosts(args.hosts, args.feeds).serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
