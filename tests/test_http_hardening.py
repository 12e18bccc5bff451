"""worker.http against hostile servers: real sockets on 127.0.0.x, a real httpx client.

Covers refused addresses and schemes at every redirect hop, DNS rebinding, decompression
bombs and size caps, the total request deadline, TLS hostname checks, and that ordinary
compressed pages still decode."""

from __future__ import annotations

import gzip
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
import tracemalloc
import zlib
from typing import Callable, Iterator

import brotli
import pytest

from worker import http
from worker.errors import BlockedURL, PermanentFetchError, TemporaryFetchError
from worker.settings import Settings

Handler = Callable[[socket.socket], None]
PAGE = b"<html><body><p>" + b"hello, world " * 500 + b"</p></body></html>"


# ---------------------------------------------------------------- a raw local server

def response(body: bytes = b"", status: int = 200, headers: dict[str, str] | None = None,
             length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Connection: close"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def send(data: bytes) -> Handler:
    return lambda conn: conn.sendall(data)


class Server:
    """One thread per connection; each route writes whatever bytes it likes.  Records
    every connection and request path so tests can assert what was (not) reached."""

    def __init__(self, routes: dict[str, Handler] | None = None, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.routes = dict(routes or {})
        self.tls = tls
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(32)
        self.sock.settimeout(0.1)
        self.host, self.port = self.sock.getsockname()[:2]
        self.connections = 0
        self.requests: list[str] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(30)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(path)
            handler = self.routes.get(path, send(response(b"not found", 404)))
            handler(conn)
        except (OSError, ssl.SSLError):
            pass  # the client hung up (cap, deadline, refused certificate): expected here
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def client_for(*allowed: str, resolver: http.Resolver | None = None, **kw):
    settings = Settings(allowed_private_hosts=list(allowed), read_timeout=10.0, connect_timeout=5.0, **kw)
    return http.make_client(settings, resolver=resolver)


def fetch(client, url: str, allowed: tuple[str, ...], max_bytes: int = 1_000_000, **kw) -> http.FetchResult:
    return http.get(client, url, max_bytes=max_bytes, allowed_private_hosts=allowed, **kw)


# ---------------------------------------------------------------- the address predicate

@pytest.mark.parametrize("addr, public", [
    ("93.184.215.14", True),
    ("2606:4700:4700::1111", True),
    ("127.0.0.1", False),                     # loopback
    ("127.8.9.10", False),
    ("::1", False),
    ("10.1.2.3", False),                      # RFC 1918
    ("172.16.0.1", False),
    ("192.168.1.1", False),
    ("fd12:3456::1", False),                  # ULA fc00::/7
    ("fc00::1", False),
    ("169.254.169.254", False),               # link-local, cloud metadata
    ("169.254.0.1", False),
    ("fd00:ec2::254", False),                 # AWS metadata over IPv6
    ("fe80::1", False),
    ("fe80::1%eth0", False),
    ("100.64.0.1", False),                    # CGNAT
    ("100.127.255.254", False),
    ("64:ff9b::a00:1", False),                # NAT64 of 10.0.0.1 (Python calls this is_global)
    ("64:ff9b::7f00:1", False),               # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", False),            # NAT64 of 169.254.169.254
    ("64:ff9b::808:808", True),               # NAT64 of 8.8.8.8
    ("64:ff9b:1::808:808", False),            # local-use NAT64
    ("::ffff:127.0.0.1", False),              # IPv4-mapped
    ("::ffff:10.0.0.1", False),
    ("::ffff:169.254.169.254", False),
    ("::ffff:8.8.8.8", True),
    ("::ffff:0:a00:1", False),                # IPv4-translated (SIIT)
    ("::127.0.0.1", False),                   # deprecated IPv4-compatible
    ("2002:a00:1::1", False),                 # 6to4 of 10.0.0.1
    ("2002:7f00:1::1", False),                # 6to4 of 127.0.0.1
    ("2002:808:808::1", True),                # 6to4 of 8.8.8.8
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ("0.0.0.0", False),                       # unspecified
    ("::", False),
    ("224.0.0.1", False),                     # multicast (Python calls 224.0.0.1 is_global)
    ("233.252.0.1", False),
    ("ff0e::1", False),
    ("ff02::1", False),
    ("240.0.0.1", False),                     # reserved
    ("255.255.255.255", False),               # broadcast
    ("198.18.0.1", False),                    # benchmarking
    ("192.0.2.1", False),                     # documentation
    ("2001:db8::1", False),
    ("fec0::1", False),                       # site-local (Python calls it is_global)
    ("100::1", False),                        # discard-only
])
def test_address_classes(addr, public):
    assert http.is_public_address(addr) is public


# ---------------------------------------------------------------- schemes, hops, redirects

def test_allowed_private_host_is_fetched_and_others_are_refused_before_connecting(server):
    server.routes["/page"] = send(response(PAGE, headers={"Content-Type": "text/html"}))
    with client_for(server.host_port) as client:
        result = fetch(client, f"{server.base}/page", (server.host_port,))
        assert result.content == PAGE and result.status == 200 and result.content_type == "text/html"
        connections = server.connections
        # get()'s own list decides: the same client refuses the host when not listed.
        with pytest.raises(BlockedURL, match=r"non-public address 127\.0\.0\.1"):
            fetch(client, f"{server.base}/page", ())
    with client_for() as client, pytest.raises(BlockedURL, match="127.0.0.1"):
        fetch(client, f"{server.base}/page", ())
    assert server.connections == connections


def test_kept_alive_connection_is_not_reused_for_a_refused_request(devserver):
    devserver.add("/a", b"<p>a</p>")             # the project's keep-alive server
    with client_for(devserver.host_port) as client:
        assert fetch(client, f"{devserver.base_url}/a", (devserver.host_port,)).content == b"<p>a</p>"
        with pytest.raises(BlockedURL, match="non-public address 127.0.0.1"):
            fetch(client, f"{devserver.base_url}/a", ())
    assert len(devserver.requests_for("/a")) == 1


def test_redirect_to_private_address_is_refused_at_the_hop(server):
    other = Server({"/secret": send(response(b"secret"))})
    try:
        server.routes["/to-meta"] = send(response(status=302, headers={"Location": "http://169.254.169.254/latest/"}))
        server.routes["/to-meta6"] = send(response(status=302, headers={"Location": "http://[fd00:ec2::254]/"}))
        server.routes["/to-local"] = send(response(status=301, headers={
            "Location": f"http://localhost:{other.port}/secret"}))
        with client_for(server.host_port) as client:
            with pytest.raises(BlockedURL, match=r"169\.254\.169\.254.*non-public address 169\.254\.169\.254") as e:
                fetch(client, f"{server.base}/to-meta", (server.host_port,))
            assert e.value.url == "http://169.254.169.254/latest/" and "redirected from" in str(e.value)
            with pytest.raises(BlockedURL, match="fd00:ec2::254"):
                fetch(client, f"{server.base}/to-meta6", (server.host_port,))
            with pytest.raises(BlockedURL, match="'localhost' resolves to non-public address"):
                fetch(client, f"{server.base}/to-local", (server.host_port,))
        assert other.connections == 0
    finally:
        other.close()


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://example.org/", "ftp://example.org/f"])
def test_redirect_to_other_scheme_is_refused(server, location):
    server.routes["/r"] = send(response(status=307, headers={"Location": location}))
    with client_for(server.host_port) as client, pytest.raises(BlockedURL, match="scheme .* only http and https"):
        fetch(client, f"{server.base}/r", (server.host_port,))


def test_too_many_redirects(server):
    server.routes["/loop"] = send(response(status=302, headers={"Location": "/loop"}))
    with client_for(server.host_port) as client, pytest.raises(PermanentFetchError, match="more than 5 redirects"):
        fetch(client, f"{server.base}/loop", (server.host_port,))
    assert server.requests == ["/loop"] * (http.MAX_REDIRECTS + 1)


# ---------------------------------------------------------------- DNS rebinding

@pytest.fixture
def twin_servers(monkeypatch):
    """A "public" server on 127.0.0.2 and a "metadata" server on 127.0.0.1, same port.
    127.0.0.2 counts as public for these tests."""
    for _ in range(20):
        public = Server({"/page": send(response(b"public page"))}, host="127.0.0.2")
        try:
            private = Server({"/page": send(response(b"metadata"))}, host="127.0.0.1", port=public.port)
            break
        except OSError:  # that port is taken on 127.0.0.1: try another
            public.close()
    else:
        pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
    real = http.is_public_address
    monkeypatch.setattr(http, "is_public_address", lambda addr: addr == "127.0.0.2" or real(addr))
    yield public, private
    public.close()
    private.close()


def test_rebinding_resolver_cannot_redirect_the_connection(twin_servers):
    public, private = twin_servers
    calls: list[tuple[str, int]] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return ["127.0.0.2"] if len(calls) == 1 else ["127.0.0.1"]   # public first, then private

    url = f"http://rebind.test:{public.port}/page"
    with client_for(resolver=rebinding) as client:
        assert fetch(client, url, ()).content == b"public page"
    assert calls == [("rebind.test", public.port)]          # one lookup, and it was the one checked
    with client_for(resolver=rebinding) as client, pytest.raises(BlockedURL, match="non-public address 127.0.0.1"):
        fetch(client, url, ())                               # a new connection: the new answer is checked
    assert private.connections == 0 and public.requests == ["/page"]


def test_any_private_answer_refuses_the_host(twin_servers):
    public, private = twin_servers
    with client_for(resolver=lambda h, p: ["127.0.0.2", "127.0.0.1"]) as client:
        with pytest.raises(BlockedURL, match=r"http://mixed\.test:\d+/page: host 'mixed.test' resolves to non-public "
                                             r"address 127\.0\.0\.1"):
            fetch(client, f"http://mixed.test:{public.port}/page", ())
    assert public.connections == 0 and private.connections == 0


def test_check_url_uses_the_same_resolver(monkeypatch):
    monkeypatch.setattr(http, "resolve_host", lambda host, port: ["10.9.8.7"])
    with pytest.raises(BlockedURL, match="non-public address 10.9.8.7"):
        http.check_url("https://news.example.org/feed")
    http.check_url("https://news.example.org/feed", ["news.example.org:443"])


# ---------------------------------------------------------------- TLS: hostname checked, never skipped

def test_tls_checks_the_hostname_not_the_ip(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=feed.test",
                    "-addext", "subjectAltName=DNS:feed.test"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    ctx.sni_callback = lambda sock, name, _ctx: sni.append(name)
    tls = Server({"/": send(response(b"over tls"))}, tls=ctx)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))    # trust this one certificate
    try:
        port = tls.port
        with client_for(f"feed.test:{port}", f"other.test:{port}", resolver=lambda h, p: ["127.0.0.1"]) as client:
            allowed = (f"feed.test:{port}", f"other.test:{port}")
            assert fetch(client, f"https://feed.test:{port}/", allowed).content == b"over tls"
            # Same IP, other name: the certificate does not match and there is no unverified retry.
            with pytest.raises(TemporaryFetchError, match="CERTIFICATE_VERIFY_FAILED|[Hh]ostname mismatch"):
                fetch(client, f"https://other.test:{port}/", allowed)
        assert sni == ["feed.test", "other.test"] and tls.requests == ["/"]
    finally:
        tls.close()


# ---------------------------------------------------------------- decoding and size caps

def _deflate_raw(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize("encoding, encode", [
    ("gzip", lambda b: gzip.compress(b)),
    ("x-gzip", lambda b: gzip.compress(b)),
    ("deflate", zlib.compress),                        # zlib-wrapped, as the RFC says
    ("deflate", _deflate_raw),                         # raw deflate, as some servers send
    ("br", brotli.compress),
    ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),   # applied in the order listed
    ("identity", lambda b: b),
])
def test_compressed_pages_decode(server, encoding, encode):
    body = encode(PAGE)
    server.routes["/p"] = send(response(body, headers={"Content-Encoding": encoding}))
    server.routes["/chunked"] = send(response(body, headers={"Content-Encoding": encoding}, length=False))
    with client_for(server.host_port) as client:
        for path in ("/p", "/chunked"):
            assert fetch(client, f"{server.base}{path}", (server.host_port,), max_bytes=len(PAGE)).content == PAGE
        with pytest.raises(PermanentFetchError, match="cap"):       # the decoded size is what is capped
            fetch(client, f"{server.base}/chunked", (server.host_port,), max_bytes=len(PAGE) - 1)


def test_unknown_or_broken_content_encoding_is_permanent(server):
    server.routes["/zstd"] = send(response(b"(zstd bytes)", headers={"Content-Encoding": "zstd"}))
    server.routes["/many"] = send(response(b"x", headers={"Content-Encoding": "gzip, gzip, gzip"}))
    server.routes["/bad"] = send(response(b"not gzip at all", headers={"Content-Encoding": "gzip"}))
    with client_for(server.host_port) as client:
        with pytest.raises(PermanentFetchError, match="unsupported Content-Encoding 'zstd'"):
            fetch(client, f"{server.base}/zstd", (server.host_port,))
        with pytest.raises(PermanentFetchError, match="unsupported Content-Encoding 'gzip, gzip, gzip'"):
            fetch(client, f"{server.base}/many", (server.host_port,))
        with pytest.raises(PermanentFetchError, match="cannot decode the gzip body"):
            fetch(client, f"{server.base}/bad", (server.host_port,))


ONE_GB = 1 << 30


def _bomb(compressor) -> bytes:
    """1 GiB of zeros, compressed a MiB at a time: never held in memory."""
    zeros = bytes(1 << 20)
    out = [compressor.compress(zeros) for _ in range(ONE_GB // len(zeros))]
    out.append(compressor.flush())
    return b"".join(out)


class _Br:
    def __init__(self) -> None:
        self.c = brotli.Compressor(quality=5)

    def compress(self, data: bytes) -> bytes:
        return self.c.process(data)

    def flush(self) -> bytes:
        return self.c.finish()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {
        "gzip": _bomb(zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)),
        "deflate": _bomb(zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS)),
        "br": _bomb(_Br()),
    }


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_decompression_bomb_is_stopped_within_one_chunk_of_the_cap(server, bombs, encoding):
    cap = 1 << 20
    bomb = bombs[encoding]
    assert len(bomb) < cap   # the declared and received sizes pass: only decoding can catch it
    server.routes["/bomb"] = send(response(bomb, headers={"Content-Encoding": encoding}))
    with client_for(server.host_port) as client:
        tracemalloc.start()
        try:
            with pytest.raises(PermanentFetchError, match="decompresses to more than the 1048576-byte cap") as e:
                fetch(client, f"{server.base}/bomb", (server.host_port,), max_bytes=cap)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    stopped = int(re.search(r"stopped after (\d+) bytes", str(e.value)).group(1))
    assert cap < stopped <= cap + http.DECODE_CHUNK
    # Decoding a whole 64 KiB network read at once would allocate ~64 MB here.
    assert peak < 4 * cap, f"peak traced memory {peak} bytes"


def _padded_gzip(content: bytes, padding: int) -> bytes:
    """A valid gzip body that is mostly empty stored blocks: large on the wire, tiny decoded."""
    empty_block = b"\x00\x00\x00\xff\xff"          # BFINAL=0, stored, LEN=0, NLEN=0xffff
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    trailer = struct.pack("<II", zlib.crc32(content), len(content))
    return header + empty_block * (padding // len(empty_block)) + _deflate_raw(content) + trailer


def test_compressed_body_over_the_received_cap(server):
    body = _padded_gzip(b"<p>hi</p>", 200_000)
    assert gzip.decompress(body) == b"<p>hi</p>"
    server.routes["/padded"] = send(response(body, headers={"Content-Encoding": "gzip"}, length=False))
    server.routes["/declared"] = send(response(body, headers={"Content-Encoding": "gzip"}))
    with client_for(server.host_port) as client:
        assert fetch(client, f"{server.base}/padded", (server.host_port,), max_bytes=len(body)).content == b"<p>hi</p>"
        with pytest.raises(PermanentFetchError, match="gzip-compressed body exceeds the 50000-byte cap as received"):
            fetch(client, f"{server.base}/padded", (server.host_port,), max_bytes=50_000)
        with pytest.raises(PermanentFetchError, match=f"declared body of {len(body)} bytes exceeds the 50000-byte"):
            fetch(client, f"{server.base}/declared", (server.host_port,), max_bytes=50_000)


# ---------------------------------------------------------------- the total deadline

def drip(prefix: bytes, data: bytes, every: float = 0.1) -> Handler:
    """Send *prefix*, then *data* one byte at a time: each read succeeds, none times out."""
    def handler(conn: socket.socket) -> None:
        conn.sendall(prefix)
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            time.sleep(every)
    return handler


def test_server_dripping_headers_is_cut_off_at_the_deadline(server):
    # 20 s of header bytes, then a complete answer: without a deadline this would succeed.
    server.routes["/h"] = drip(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a" * 200 + b"\r\nContent-Length: 2\r\n\r\nok")
    with client_for(server.host_port) as client, pytest.raises(TemporaryFetchError) as e:
        fetch(client, f"{server.base}/h", (server.host_port,), deadline=1.5)
    assert "exceeded the 1.5 s deadline" in str(e.value) and e.value.url == f"{server.base}/h"


def test_server_dripping_the_body_is_cut_off_at_the_deadline(server):
    server.routes["/b"] = drip(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n", b"x" * 200)
    with client_for(server.host_port) as client:
        with pytest.raises(TemporaryFetchError, match=r"exceeded the 1\.5 s deadline"):
            fetch(client, f"{server.base}/b", (server.host_port,), deadline=1.5)
        server.routes["/quick"] = send(response(b"fine"))
        assert fetch(client, f"{server.base}/quick", (server.host_port,), deadline=1.5).content == b"fine"


def test_silent_server_is_cut_off_at_the_deadline_not_the_read_timeout(server):
    def stall(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        time.sleep(6)              # under the 10 s read timeout, far over the deadline
        conn.sendall(b"Content-Length: 2\r\n\r\nok")
    server.routes["/stall"] = stall
    with client_for(server.host_port) as client, pytest.raises(TemporaryFetchError, match=r"exceeded the 1\.5 s"):
        fetch(client, f"{server.base}/stall", (server.host_port,), deadline=1.5)


def test_deadline_covers_all_redirect_hops(server):
    def slow_hop(n: int) -> Handler:
        def handler(conn: socket.socket) -> None:
            time.sleep(0.6)
            conn.sendall(response(status=302, headers={"Location": f"/hop{n + 1}"}))
        return handler
    for n in range(10):
        server.routes[f"/hop{n}"] = slow_hop(n)
    with client_for(server.host_port) as client, pytest.raises(TemporaryFetchError) as e:
        fetch(client, f"{server.base}/hop0", (server.host_port,), deadline=1.5)
    assert "exceeded the 1.5 s deadline" in str(e.value) and "redirected to" in str(e.value)
    assert len(server.requests) < http.MAX_REDIRECTS + 1   # stopped by the deadline, not the redirect limit


def test_cookies_last_one_fetch_only(devserver):
    """A cookie a redirect sets (a cookie-check or consent hop) is sent on the later hops
    of that fetch; the client remembers none, so no later fetch carries one (httpx would
    otherwise keep every host's cookies for the worker's life and scan them all on each
    request)."""
    devserver.add("/start", b"", status=302, headers={"Location": "/feed", "Set-Cookie": "consent=yes; Path=/"})
    devserver.add("/feed", b"<rss/>", content_type="application/rss+xml", headers={"Set-Cookie": "visit=1; Path=/"})
    settings = Settings(allowed_private_hosts=[devserver.host_port])
    with http.make_client(settings) as client:
        for path in ("/start", "/feed", "/start"):
            result = http.get(client, devserver.base_url + path, max_bytes=10_000,
                              allowed_private_hosts=settings.allowed_private_hosts)
            assert result.status == 200 and result.final_url.endswith("/feed")
        assert len(client.cookies.jar) == 0
        with pytest.raises(ValueError, match="no cookies"):
            client.cookies = {"session": "x"}
    sent = [(r.path, r.headers.get("cookie")) for r in devserver.requests]
    assert sent == [("/start", None), ("/feed", "consent=yes"), ("/feed", None), ("/start", None),
                    ("/feed", "consent=yes")]
