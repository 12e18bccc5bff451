"""A small local HTTP server for tests, ``make demo`` and the benchmarks.

Stdlib only.  HTTP/1.1 with keep-alive, ETag/Last-Modified conditional GETs, gzip
when asked for, and a record of every request so tests can assert on what a client
sent.  ``mount_zyte_corpus`` serves the Zyte article benchmark behind an RSS feed.

    python -m worker.devserver --port 8765 [--zyte CORPUS_DIR] [--dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import mimetypes
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

GZIP_MIN_BYTES = 1024
CONTENT_TYPES = {".rss": "application/rss+xml", ".atom": "application/atom+xml", ".xml": "application/xml",
                 ".json": "application/json", ".html": "text/html", ".htm": "text/html",
                 ".txt": "text/plain; charset=utf-8", ".opml": "text/x-opml"}
ZYTE_FEED_PATH = "/zyte/feed.xml"
ZYTE_PUB_DATE = datetime(2024, 1, 1, tzinfo=timezone.utc)  # fixed: runs must be reproducible


def content_type_for(name: str) -> str:
    name = name.removesuffix(".gz")
    suffix = Path(name).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def http_date(when: datetime | float) -> str:
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, timezone.utc)
    return format_datetime(when.astimezone(timezone.utc), usegmt=True)


@dataclass
class Route:
    """One response.  ``auto_etag`` (default) derives a strong ETag from the body so a
    plain ``add()`` already supports conditional GETs."""

    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    last_modified: str | None = None
    auto_etag: bool = True
    delay: float = 0.0  # seconds to wait before answering (timeouts, slow feeds)
    drip: float = 0.0   # seconds between body bytes (a server that drips its answer)
    fail_first: int = 0  # the first this many requests get 503 with Retry-After: 1 (a passing outage)
    _failed: int = field(default=0, init=False, repr=False)
    _gzipped: bytes | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.body, str):
            self.body = self.body.encode("utf-8")
        if self.etag is None and self.auto_etag:
            self.etag = '"%s"' % hashlib.sha1(self.body).hexdigest()

    def gzipped(self) -> bytes:
        if self._gzipped is None:  # cached: benchmarks fetch the same pages many times
            self._gzipped = gzip.compress(self.body, compresslevel=5, mtime=0)
        return self._gzipped

    def not_modified(self, request_headers) -> bool:
        if self.status != 200:
            return False
        inm = request_headers.get("If-None-Match")
        if inm is not None:  # RFC 9110: If-None-Match wins over If-Modified-Since
            if not self.etag:
                return False
            tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
            return "*" in tags or self.etag.removeprefix("W/") in tags
        ims = request_headers.get("If-Modified-Since")
        if ims and self.last_modified:
            try:
                return parsedate_to_datetime(ims) >= parsedate_to_datetime(self.last_modified)
            except (TypeError, ValueError):
                return False
        return False


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # without the query string
    query: str
    headers: dict[str, str]  # lower-case names
    status: int
    at: float = field(default_factory=time.monotonic)   # when the request arrived


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    server_version = "newsworker-devserver"
    timeout = 30  # idle keep-alive connections end eventually
    server: _HTTPServer

    def log_message(self, format, *args) -> None:  # quiet: tests and benchmarks read stdout/stderr
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and
        # the client's delayed ACK stall every keep-alive response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.dev.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.dev.track(self.connection, False)

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        dev = self.server.dev
        path, _, query = self.path.partition("?")  # not urlsplit: "//x" is a path here, not a host
        dev._begin(_norm(path))
        try:
            self._answer(dev, path, query, head)
        finally:
            dev._end(_norm(path))

    def _answer(self, dev: DevServer, path: str, query: str, head: bool) -> None:
        arrived = time.monotonic()
        route = dev.lookup(path)
        headers: dict[str, str] = {}
        if route is None:
            status, body, ctype = 404, b"not found\n", "text/plain; charset=utf-8"
        else:
            if route.delay:
                time.sleep(route.delay)
            with dev._lock:
                failing = route._failed < route.fail_first
                route._failed += failing
            if failing:
                status, body, ctype = 503, b"try again\n", "text/plain; charset=utf-8"
                headers["Retry-After"] = "1"
            else:
                status, body, ctype, headers = self._route_response(route)
        # Recorded before answering, so a client that has its response sees the record.
        dev._record(RequestRecord(self.command, _norm(path), query,
                                  {k.lower(): v for k, v in self.headers.items()}, status, arrived))
        self.send_response(status)
        if status != 304:  # a 304 has no body by definition; Content-Length would describe the 200
            headers["Content-Type"] = ctype
            headers["Content-Length"] = str(len(body))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head and status != 304:
            if route is not None and route.drip:
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(route.drip)
                except OSError:         # the client gave up: that is the point
                    self.close_connection = True
            else:
                self.wfile.write(body)

    def _route_response(self, route: Route) -> tuple[int, bytes, str, dict[str, str]]:
        """Status, body, content type and headers of *route* for this request: 304 when
        the request's validators match, gzip when it accepts it."""
        status, body, headers = route.status, route.body, dict(route.headers)
        if route.etag:
            headers["ETag"] = route.etag
        if route.last_modified:
            headers["Last-Modified"] = route.last_modified
        if route.not_modified(self.headers):
            status, body = 304, b""
        elif len(body) > GZIP_MIN_BYTES and "Content-Encoding" not in route.headers:   # pre-encoded: as is
            headers["Vary"] = "Accept-Encoding"
            if _accepts_gzip(self.headers.get("Accept-Encoding", "")):
                body = route.gzipped()
                headers["Content-Encoding"] = "gzip"
        return status, body, route.content_type, headers


def _accepts_gzip(value: str) -> bool:
    for item in value.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    dev: DevServer

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up (a killed worker, a deadline cut) is routine here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class DevServer:
    """``with DevServer() as server: server.add("/feed.xml", body, content_type=...)``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._routes: dict[str, Route] = {}
        self._dirs: list[tuple[str, Path]] = []
        self._requests: list[RequestRecord] = []
        self._in_flight: dict[str, int] = {}        # path -> requests being answered now ("" = any)
        self._max_in_flight: dict[str, int] = {}
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._httpd = _HTTPServer((host, port), _Handler, bind_and_activate=True)
        self._httpd.dev = self
        self._thread: threading.Thread | None = None

    # -- lifecycle
    @property
    def host_port(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    @property
    def base_url(self) -> str:
        return f"http://{self.host_port}"

    def start(self) -> DevServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"devserver-{self.host_port}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        with self._lock:  # close kept-alive connections so clients see the server go away
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.5)

    def __enter__(self) -> DevServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._connections.add if alive else self._connections.discard)(conn)

    # -- routes
    def add(self, path: str, body: bytes | str, content_type: str = "text/html; charset=utf-8", **kw) -> Route:
        """Serve *body* at *path*; ``kw`` goes to :class:`Route` (status, headers, etag,
        last_modified, auto_etag, delay).  Re-adding a path replaces it (new ETag)."""
        route = Route(body, content_type, **kw)
        with self._lock:
            self._routes[_norm(path)] = route
        return route

    def add_file(self, path: str, filepath: str | Path, content_type: str | None = None, **kw) -> Route:
        """Serve a file (a ``.gz`` one decompressed); Last-Modified is its mtime."""
        filepath = Path(filepath)
        kw.setdefault("last_modified", http_date(filepath.stat().st_mtime))
        return self.add(path, _read(filepath), content_type or content_type_for(filepath.name), **kw)

    def add_directory(self, root: str | Path, prefix: str = "/") -> None:
        """Serve files under *root* at *prefix*, read from disk on each request;
        ``/a.html`` is also found as ``a.html.gz`` (decompressed)."""
        with self._lock:
            self._dirs.append((_norm(prefix).rstrip("/") + "/", Path(root).resolve()))

    def remove(self, path: str) -> None:
        with self._lock:
            self._routes.pop(_norm(path), None)

    def lookup(self, path: str) -> Route | None:
        path = _norm(path)
        with self._lock:
            route = self._routes.get(path)
            dirs = list(self._dirs)
        if route is not None:
            return route
        for prefix, root in dirs:
            if path.startswith(prefix):
                target = (root / path[len(prefix):]).resolve()
                if not target.is_relative_to(root):  # no escaping the directory with ../
                    continue
                for candidate in (target, target.with_name(target.name + ".gz")):
                    if candidate.is_file():
                        return Route(_read(candidate), content_type_for(candidate.name),
                                     last_modified=http_date(candidate.stat().st_mtime))
        return None

    # -- request log
    def _begin(self, path: str) -> None:
        with self._lock:
            for key in ("", path):
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                self._max_in_flight[key] = max(self._max_in_flight.get(key, 0), self._in_flight[key])

    def _end(self, path: str) -> None:
        with self._lock:
            for key in ("", path):
                self._in_flight[key] -= 1

    def in_flight(self, path: str | None = None) -> int:
        """Requests (to *path*, or to any path) being answered right now."""
        with self._lock:
            return self._in_flight.get(_norm(path) if path else "", 0)

    def max_in_flight(self, path: str | None = None) -> int:
        """The most requests (to *path*, or to any path) this server was answering at once."""
        with self._lock:
            return self._max_in_flight.get(_norm(path) if path else "", 0)

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RequestRecord]:
        path = _norm(path)
        return [r for r in self.requests if r.path == path]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._max_in_flight = dict(self._in_flight)


def _norm(path: str) -> str:
    """Route key: the decoded path, so `/a%20b` and `/a b` are one route."""
    path = unquote(path.partition("?")[0].partition("#")[0])
    return path if path.startswith("/") else "/" + path


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


# ---------------------------------------------------------------- feeds

def _x(value: object) -> str:
    return escape(str(value), {'"': "&quot;"})


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def build_rss(items: list[dict], title: str, link: str, description: str = "") -> bytes:
    """RSS 2.0.  Items: title, link, guid, description, pub_date (datetime), and optional
    content_html (emitted as content:encoded)."""
    out = ['<?xml version="1.0" encoding="utf-8"?>',
           '<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/">',
           f"<channel><title>{_x(title)}</title><link>{_x(link)}</link>"
           f"<description>{_x(description or title)}</description>"]
    for item in items:
        out.append("<item>")
        out.append(f"<title>{_x(item.get('title', ''))}</title>")
        if item.get("link"):
            out.append(f"<link>{_x(item['link'])}</link>")
        if item.get("guid"):
            permalink = "true" if item["guid"] == item.get("link") else "false"
            out.append(f'<guid isPermaLink="{permalink}">{_x(item["guid"])}</guid>')
        if item.get("description"):
            out.append(f"<description>{_x(item['description'])}</description>")
        if item.get("pub_date"):
            out.append(f"<pubDate>{http_date(item['pub_date'])}</pubDate>")
        if item.get("content_html"):
            out.append(f"<content:encoded>{_cdata(item['content_html'])}</content:encoded>")
        out.append("</item>")
    out.append("</channel></rss>\n")
    return "\n".join(out).encode("utf-8")


def build_atom(items: list[dict], title: str, link: str, feed_id: str | None = None) -> bytes:
    """Atom 1.0, same item keys as :func:`build_rss` (guid becomes the entry id)."""
    def iso(when: datetime) -> str:
        return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    dates = [i["pub_date"] for i in items if i.get("pub_date")]
    updated = max(dates) if dates else ZYTE_PUB_DATE
    out = ['<?xml version="1.0" encoding="utf-8"?>', '<feed xmlns="http://www.w3.org/2005/Atom">',
           f"<title>{_x(title)}</title>", f'<link href="{_x(link)}"/>',
           f"<id>{_x(feed_id or link)}</id>", f"<updated>{iso(updated)}</updated>"]
    for item in items:
        out.append("<entry>")
        out.append(f"<title>{_x(item.get('title', ''))}</title>")
        if item.get("link"):
            out.append(f'<link rel="alternate" href="{_x(item["link"])}"/>')
        out.append(f"<id>{_x(item.get('guid') or item.get('link', ''))}</id>")
        when = item.get("pub_date") or updated
        out.append(f"<updated>{iso(when)}</updated><published>{iso(when)}</published>")
        if item.get("description"):
            out.append(f"<summary>{_x(item['description'])}</summary>")
        if item.get("content_html"):
            out.append(f'<content type="html">{_x(item["content_html"])}</content>')
        out.append("</entry>")
    out.append("</feed>\n")
    return "\n".join(out).encode("utf-8")


# ---------------------------------------------------------------- Zyte corpus

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.I | re.S)
_CHARSET = re.compile(rb"""charset=["']?([\w.:-]+)""", re.I)


def _page_title(page: bytes) -> str | None:
    """Best effort: the <title>, decoded with the page's declared charset."""
    found = _TITLE.search(page[:200_000])
    if not found:
        return None
    declared = _CHARSET.search(page[:4096])
    for encoding in ((declared.group(1).decode("ascii"),) if declared else ()) + ("utf-8",):
        try:
            text = found.group(1).decode(encoding)
            break
        except (LookupError, UnicodeDecodeError):
            continue
    else:
        text = found.group(1).decode("utf-8", "replace")
    text = " ".join(html.unescape(text).split())
    return text or None


def mount_zyte_corpus(server: DevServer, corpus_dir: str | Path) -> dict[str, dict]:
    """Serve the Zyte article benchmark (181 pages) at ``/<host><path>`` of each page's
    original URL, plus an RSS feed of all of them at ``/zyte/feed.xml`` whose guids are
    the benchmark hashes.  Returns {local url: {"hash", "url", "articleBody"}}."""
    base = Path(corpus_dir) / "articles" / "zyte"
    truth = json.loads((base / "ground-truth.json").read_text(encoding="utf-8"))
    paths = {h: "/" + (urlsplit(t["url"]).hostname or "unknown") + (urlsplit(t["url"]).path or "/")
             for h, t in truth.items()}
    taken: dict[str, int] = {}
    for path in paths.values():
        taken[path] = taken.get(path, 0) + 1
    mounted: dict[str, dict] = {}
    items = []
    for h in sorted(truth):
        # Colliding paths (same page, different query) all get the hash, so none depends on order.
        path = paths[h] if taken[paths[h]] == 1 else f"{paths[h]}-{h}"
        page = gzip.decompress((base / "html" / f"{h}.html.gz").read_bytes())
        # No charset: the pages declare their own, as on the real web.
        # Compressed now, as a static server serves pre-compressed files: a benchmark
        # run then measures the client, not this server compressing each page once.
        server.add(path, page, content_type="text/html").gzipped()
        local = server.base_url + quote(path, safe="/:@!$&'()*+,;=-._~%")
        mounted[local] = {"hash": h, "url": truth[h]["url"], "articleBody": truth[h]["articleBody"]}
        items.append({"title": _page_title(page) or h, "link": local, "guid": h, "pub_date": ZYTE_PUB_DATE})
    server.add(ZYTE_FEED_PATH, build_rss(items, "Zyte article benchmark (local)", server.base_url + "/zyte/"),
               content_type="application/rss+xml")
    return mounted


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.devserver",
                                     description="Serve local feeds and pages for tests, demos and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--zyte", metavar="CORPUS_DIR", help="mount the Zyte article benchmark and /zyte/feed.xml")
    parser.add_argument("--dir", metavar="DIR", help="serve the files under DIR by path (.gz decompressed)")
    args = parser.parse_args(argv)
    server = DevServer(args.host, args.port)
    if args.zyte:
        mount_zyte_corpus(server, args.zyte)
    if args.dir:
        server.add_directory(args.dir)
    print(server.base_url, flush=True)  # the first stdout line: callers wait for it
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
