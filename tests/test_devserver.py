"""The local HTTP server the other tests, the demo and the benchmarks stand on."""

from __future__ import annotations

import gzip
import http.client
import subprocess
import sys
from datetime import datetime, timezone

import feedparser
import httpx
import pytest

from worker.devserver import DevServer, build_atom, build_rss, http_date, mount_zyte_corpus

BIG = b"<p>" + b"news " * 1000 + b"</p>"


def test_get_head_404_and_request_log(devserver):
    devserver.add("/a.html", b"<p>hi</p>")
    with httpx.Client(base_url=devserver.base_url) as client:
        got = client.get("/a.html?x=1", headers={"X-Probe": "yes"})
        assert (got.status_code, got.content, got.headers["content-type"]) == (200, b"<p>hi</p>",
                                                                               "text/html; charset=utf-8")
        head = client.head("/a.html")
        assert head.status_code == 200 and head.content == b"" and head.headers["content-length"] == "9"
        assert client.get("/missing").status_code == 404
    assert [(r.method, r.path, r.status) for r in devserver.requests] == [
        ("GET", "/a.html", 200), ("HEAD", "/a.html", 200), ("GET", "/missing", 404)]
    first = devserver.requests_for("/a.html")[0]
    assert first.query == "x=1" and first.headers["x-probe"] == "yes"
    devserver.clear_requests()
    assert devserver.requests == []
    devserver.remove("/a.html")
    assert httpx.get(devserver.base_url + "/a.html").status_code == 404


def test_keep_alive_serves_several_requests_on_one_connection(devserver):
    devserver.add("/one", b"1")
    devserver.add("/two", b"22")
    conn = http.client.HTTPConnection(devserver.host_port.split(":")[0], int(devserver.host_port.split(":")[1]))
    try:
        for path, body in (("/one", b"1"), ("/two", b"22"), ("/one", b"1")):
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.read() == body and not resp.will_close
        assert conn.sock is not None  # still the first socket
    finally:
        conn.close()


def test_conditional_get_by_etag_and_by_date(devserver):
    route = devserver.add("/feed.xml", b"<rss/>", content_type="application/rss+xml",
                          last_modified="Mon, 01 Jan 2024 00:00:00 GMT")
    url = devserver.base_url + "/feed.xml"
    first = httpx.get(url)
    assert first.headers["etag"] == route.etag and route.etag.startswith('"')
    assert httpx.get(url, headers={"If-None-Match": route.etag}).status_code == 304
    again = httpx.get(url, headers={"If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"})
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(url, headers={"If-Modified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"}).status_code == 200
    # The feed changes: the old validator no longer matches.
    devserver.add("/feed.xml", b"<rss>new</rss>", content_type="application/rss+xml")
    changed = httpx.get(url, headers={"If-None-Match": route.etag})
    assert changed.status_code == 200 and changed.content == b"<rss>new</rss>"
    assert [r.status for r in devserver.requests_for("/feed.xml")] == [200, 304, 304, 200, 200]


def test_gzip_only_when_asked_and_worth_it(devserver):
    devserver.add("/big", BIG)
    devserver.add("/small", b"tiny")
    with httpx.Client(base_url=devserver.base_url) as client:  # httpx asks for gzip by default
        big = client.get("/big")
        assert big.headers["content-encoding"] == "gzip" and big.headers["vary"] == "Accept-Encoding"
        assert big.content == BIG and int(big.headers["content-length"]) < len(BIG)
        assert "content-encoding" not in client.get("/small").headers
        plain = client.get("/big", headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.content == BIG


def test_routes_with_status_headers_and_files(devserver, tmp_path):
    devserver.add("/moved", b"", status=301, headers={"Location": "/here"})
    (tmp_path / "page.html.gz").write_bytes(gzip.compress(b"<h1>zipped</h1>"))
    devserver.add_file("/page.html", tmp_path / "page.html.gz")
    (tmp_path / "site" / "feeds").mkdir(parents=True)
    (tmp_path / "site" / "feeds" / "a.atom").write_bytes(b"<feed/>")
    (tmp_path / "site" / "b.json.gz").write_bytes(gzip.compress(b"{}"))
    devserver.add_directory(tmp_path / "site", prefix="/static")
    with httpx.Client(base_url=devserver.base_url) as client:
        moved = client.get("/moved")
        assert moved.status_code == 301 and moved.headers["location"] == "/here"
        page = client.get("/page.html")
        assert page.content == b"<h1>zipped</h1>" and page.headers["content-type"] == "text/html"
        assert "last-modified" in page.headers
        atom = client.get("/static/feeds/a.atom")
        assert atom.headers["content-type"] == "application/atom+xml" and atom.content == b"<feed/>"
        assert client.get("/static/b.json").content == b"{}"
        assert client.get("/static/../site/b.json").status_code == 404


def test_feed_builders_escape_and_parse():
    when = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    items = [{"title": "Tanks & <drones>", "link": "http://x.test/a?b=1&c=2", "guid": "g-1",
              "description": "A < B", "pub_date": when, "content_html": "<p>body ]]> end</p>"}]
    rss = feedparser.parse(build_rss(items, "T & T", "http://x.test/"))
    atom = feedparser.parse(build_atom(items, "T & T", "http://x.test/"))
    for parsed in (rss, atom):
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert parsed.feed.title == "T & T"
        entry = parsed.entries[0]
        assert (entry.title, entry.link, entry.id) == ("Tanks & <drones>", "http://x.test/a?b=1&c=2", "g-1")
        assert entry.published_parsed[:5] == (2024, 3, 1, 12, 0)
        assert entry.content[0].value == "<p>body ]]> end</p>"
    assert http_date(when) == "Fri, 01 Mar 2024 12:00:00 GMT"


def test_command_line_serves_a_directory(tmp_path):
    (tmp_path / "f.rss").write_bytes(b"<rss/>")
    proc = subprocess.Popen([sys.executable, "-m", "worker.devserver", "--port", "0", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        base = proc.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:")
        got = httpx.get(base + "/f.rss")
        assert got.content == b"<rss/>" and got.headers["content-type"] == "application/rss+xml"
    finally:
        proc.terminate()
        proc.wait(10)


def test_stop_closes_the_port():
    server = DevServer().start()
    server.add("/x", b"x")
    url = server.base_url + "/x"
    assert httpx.get(url).status_code == 200
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)


@pytest.mark.corpus
def test_zyte_corpus_behind_a_feed(devserver, corpus_dir):
    pages = mount_zyte_corpus(devserver, corpus_dir)
    assert len(pages) == 181
    feed = feedparser.parse(httpx.get(devserver.base_url + "/zyte/feed.xml").content)
    assert not feed.bozo, feed.get("bozo_exception")
    assert len(feed.entries) == 181
    assert {e.link for e in feed.entries} == set(pages)
    assert {e.id for e in feed.entries} == {p["hash"] for p in pages.values()}
    entry = next(e for e in feed.entries if "wsj.com" in e.link)
    assert entry.title != pages[entry.link]["hash"]  # the page's own <title>
    with httpx.Client() as client:
        for local, page in list(pages.items())[:20]:
            got = client.get(local)
            assert got.status_code == 200 and got.headers["content-type"] == "text/html"
            assert local.startswith(f"{devserver.base_url}/{httpx.URL(page['url']).host}/")
    collided = [u for u, p in pages.items() if "entermedia.co.kr" in p["url"]]
    assert len(collided) == 2 and all(u.endswith(pages[u]["hash"]) for u in collided)
