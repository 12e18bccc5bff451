"""Feed discovery, sitemaps as sources, and OPML folders, against the real local
server (DevServer) and a real SQLite database: no mocks.  Fixtures:
tests/fixtures/sitemaps/ ({BASE} and {SECRET} are filled in here)."""

from __future__ import annotations

import gzip
import random
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest
from sqlmodel import select

from worker import http, pipeline, sitemaps, store
from worker.db import session_scope
from worker.devserver import build_atom, build_rss
from worker.discover import Discovered, NoFeedFound, advertised_feeds, discover_feeds, resolve_feed_url
from worker.errors import FeedParseError, PermanentFetchError
from worker.feeds import ParsedFeed, parse_feed
from worker.migrate import upgrade
from worker.models import Feed
from worker.opml import OPMLFeed, build_opml, parse_opml
from worker.schedule import OK
from worker.settings import Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sitemaps"
WHEN = datetime(2024, 1, 17, 12, 0, tzinfo=timezone.utc)
RSS, ATOM, XML = "application/rss+xml", "application/atom+xml", "application/xml"


@pytest.fixture
def env(devserver, tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'd.db'}", var_dir=tmp_path,
                        allowed_private_hosts=[devserver.host_port], request_deadline=20)
    with http.make_client(settings) as client:
        yield settings, client


def load(devserver, name: str, secret: str = "") -> bytes:
    data = (FIXTURES / name).read_bytes().replace(b"{BASE}", devserver.base_url.encode())
    return data.replace(b"{SECRET}", secret.encode())


def fetch_and_parse(devserver, env, path: str, max_entries: int = 500) -> ParsedFeed:
    settings, client = env
    result = http.get(client, devserver.base_url + path, max_bytes=settings.max_feed_bytes,
                      allowed_private_hosts=settings.allowed_private_hosts, deadline=settings.request_deadline)
    return parse_feed(result.content, result.final_url, content_type=result.content_type, max_entries=max_entries)


def rss(base: str, title: str, n: int = 1) -> bytes:
    return build_rss([{"title": f"{title} {i}", "link": f"{base}/a/{title}-{i}", "guid": f"{title}-{i}",
                       "pub_date": WHEN} for i in range(n)], title, base)


def paths(devserver) -> list[str]:
    return [r.path for r in devserver.requests]


# ---------------------------------------------------------------- discovery

PAGE = """<!DOCTYPE html [<!ENTITY xxe SYSTEM "{base}/secret">]>
<html><head><title>Blog</title>
<link rel="stylesheet" href="/style.css">
<link rel="alternate" hreflang="fr" href="/fr/">
<link rel="alternate" type="application/rss+xml" title="Blog &raquo; Comments Feed" href="/blog/comments/feed/">
<link rel="alternate" type="application/json" href="/wp-json/wp/v2/pages/2">
<link rel="alternate" type="application/rss+xml" title="Script" href="javascript:alert(1)">
<link rel="alternate" type="application/atom+xml" title="Blog (Atom)" href="atom.xml">
<link rel="alternate" type="application/rss+xml; charset=utf-8" title="Blog &raquo; Feed" href="feed/">
<link rel="alternate" type="application/rss+xml" title="Data" href="data:application/rss+xml,&lt;rss/&gt;">
<link rel="alternate" type="application/rss+xml" title="Metadata" href="http://169.254.169.254/latest/">
<link rel="feed" title="Untyped" href="//{host}/stream">
<link rel="alternate" type="application/rss+xml" title="&xxe;" href="feed/">
</head><body><p>Posts</p></body></html>"""


def test_discovery_lists_a_pages_alternates_best_first(devserver, env):
    settings, client = env
    base = devserver.base_url
    devserver.add("/secret", b"NETSECRET", content_type="text/plain")
    devserver.add("/blog/", PAGE.format(base=base, host=devserver.host_port))
    found = discover_feeds(client, f"{base}/blog/", settings)
    assert [(d.url, d.title, d.kind) for d in found] == [
        (f"{base}/blog/atom.xml", "Blog (Atom)", "atom"),               # RSS and Atom: in the page's order
        (f"{base}/blog/feed/", "Blog » Feed", "rss"),                   # relative, resolved; listed twice, once
        (f"{base}/stream", "Untyped", "feed"),                          # rel="feed", scheme-relative
        (f"{base}/wp-json/wp/v2/pages/2", None, "json"),                # application/json: last of the feeds
        (f"{base}/blog/comments/feed/", "Blog » Comments Feed", "rss"),  # comments after everything
    ]
    assert not any(d.verified for d in found)
    assert paths(devserver) == ["/blog/"]       # listing fetches nothing else: no entity, no candidate

    # resolve_feed_url verifies in that order: the Atom feed is gone, the RSS one works.
    devserver.add("/blog/atom.xml", b"gone", status=404)
    devserver.add("/blog/feed/", rss(base, "Blog"), content_type=RSS)
    assert resolve_feed_url(client, f"{base}/blog/", settings) == f"{base}/blog/feed/"
    assert paths(devserver)[-3:] == ["/blog/", "/blog/atom.xml", "/blog/feed/"]

    # <base href> moves relative links; only http(s) survives.
    page = b'<head><base href="https://cdn.example/site/"><link rel="alternate" type="application/atom+xml" href="a.xml">' \
           b'<link rel="alternate" type="application/rss+xml" href="ftp://x.example/f"></head>'
    assert advertised_feeds(page, "http://x.example/") == [Discovered("https://cdn.example/site/a.xml", None, "atom")]


def test_discovery_probes_common_paths_only_when_the_page_lists_none(devserver, env):
    settings, client = env
    base = devserver.base_url
    devserver.add("/news/home", "<html><head><title>No links</title></head><body>hi</body></html>")
    devserver.add("/feed", "<html><body>a single-page app answers every path</body></html>")
    devserver.add("/feed.xml", build_atom([], "Site feed", base), content_type=ATOM)
    devserver.add("/index.xml", rss(base, "never-asked"), content_type=RSS)
    assert discover_feeds(client, f"{base}/news/home", settings) == [
        Discovered(f"{base}/feed.xml", "Site feed", "feed", verified=True)]
    # In order, at the site's root, stopping at the first feed.
    assert paths(devserver) == ["/news/home", "/feed", "/rss", "/rss.xml", "/atom.xml", "/feed.xml"]

    devserver.clear_requests()
    devserver.add("/listed", f'<link rel="alternate" type="application/rss+xml" href="{base}/listed.rss">')
    assert [d.url for d in discover_feeds(client, f"{base}/listed", settings)] == [f"{base}/listed.rss"]
    assert paths(devserver) == ["/listed"]      # listed: no probing


def test_a_page_leading_to_no_feed_is_a_clear_error(devserver, env):
    settings, client = env
    base = devserver.base_url
    devserver.add("/plain", "<html><head><title>Nothing</title></head><body>no feeds</body></html>")
    with pytest.raises(NoFeedFound) as caught:
        discover_feeds(client, f"{base}/plain", settings)
    message = str(caught.value)
    assert message.startswith(f"{base}/plain: no feed found: the page (text/html)")
    assert "/feed (HTTP 404)" in message and "/index.xml (HTTP 404)" in message
    assert isinstance(caught.value, FeedParseError) and caught.value.url == f"{base}/plain"

    devserver.add("/data.json", b'{"not": "a feed"}', content_type="application/json")
    with pytest.raises(NoFeedFound, match=r"\(application/json\) is not a feed \(not a feed\)"):
        resolve_feed_url(client, f"{base}/data.json", settings)

    # A URL that cannot be fetched at all says so, not "no feed".
    with pytest.raises(PermanentFetchError, match="HTTP 404"):
        discover_feeds(client, f"{base}/missing", settings)


def test_a_url_that_is_already_a_feed_is_returned_as_is(devserver, env):
    settings, client = env
    base = devserver.base_url
    devserver.add("/world.rss", rss(base, "World"), content_type="text/html")    # a wrong type changes nothing
    devserver.add("/old.rss", b"", status=301, headers={"Location": "/world.rss"})
    devserver.add("/news-sitemap.xml", load(devserver, "news.xml"), content_type=XML)
    assert discover_feeds(client, f"{base}/world.rss", settings) == [
        Discovered(f"{base}/world.rss", "World", "feed", verified=True)]
    assert resolve_feed_url(client, f"{base}/old.rss", settings) == f"{base}/world.rss"   # moved for good
    assert discover_feeds(client, f"{base}/news-sitemap.xml", settings) == [
        Discovered(f"{base}/news-sitemap.xml", "Caspian Daily", "sitemap", verified=True)]
    assert paths(devserver) == ["/world.rss", "/old.rss", "/world.rss", "/news-sitemap.xml"]


# ---------------------------------------------------------------- sitemaps

def test_news_sitemap_entries(devserver, env):
    base = devserver.base_url
    devserver.add("/news-sitemap.xml", load(devserver, "news.xml"), content_type=XML)
    feed = fetch_and_parse(devserver, env, "/news-sitemap.xml")
    assert feed.title == "Caspian Daily" and feed.site_url == f"{base}/"
    assert [(e.link, e.title, e.published_at) for e in feed.entries] == [
        (f"{base}/2024/01/18/drone-order.html", "Navy orders new drones & radars",
         datetime(2024, 1, 18, 8, 0, tzinfo=timezone.utc)),
        (f"{base}/2024/01/17/defence-talks.html", "Azerbaijan and Türkiye hold defence talks",
         datetime(2024, 1, 17, 11, 30, tzinfo=timezone.utc)),                   # +03:00, in UTC
        (f"{base}/2024/01/16/relative-loc.html", "Relative locations resolve against the sitemap",
         datetime(2024, 1, 16, tzinfo=timezone.utc)),
    ]
    assert all(e.guid == e.link and e.published_at.utcoffset().total_seconds() == 0 for e in feed.entries)
    assert (feed.skipped, feed.rejected_links, feed.warning, feed.sitemaps) == (0, 0, None, [])


def test_plain_urlset_newest_first_and_capped(devserver, env):
    base = devserver.base_url
    devserver.add("/sitemap.xml", load(devserver, "plain.xml"), content_type=XML)
    feed = fetch_and_parse(devserver, env, "/sitemap.xml")
    assert [(e.link.removeprefix(base), e.published_at) for e in feed.entries] == [
        ("/news/newest.html", datetime(2024, 2, 1, 14, 15, tzinfo=timezone.utc)),
        ("/news/middle.html", datetime(2024, 1, 10, tzinfo=timezone.utc)),
        ("/news/old.html", datetime(2023, 5, 1, 10, 0, tzinfo=timezone.utc)),
        ("/about.html", None),                                                  # undated: last
    ]
    assert feed.title is None and all(e.title is None for e in feed.entries)
    assert feed.skipped == 1 and feed.rejected_links == 0                       # the duplicate
    capped = fetch_and_parse(devserver, env, "/sitemap.xml", max_entries=2)
    assert [e.link.removeprefix(base) for e in capped.entries] == ["/news/newest.html", "/news/middle.html"]
    assert capped.entries_over_cap == 3
    # A BOM and blank lines before the XML declaration, as generated sitemaps often have.
    lax = parse_feed(b"\xef\xbb\xbf\n  " + load(devserver, "plain.xml"), f"{base}/sitemap.xml")
    assert [e.link for e in lax.entries] == [e.link for e in feed.entries]


def test_gzip_sitemap_and_gzip_bomb(devserver, env):
    base = devserver.base_url
    devserver.add("/sitemap.xml.gz", gzip.compress(load(devserver, "plain.xml")), content_type="application/x-gzip")
    feed = fetch_and_parse(devserver, env, "/sitemap.xml.gz")
    assert feed.entries[0].link == f"{base}/news/newest.html" and len(feed.entries) == 4
    # 60 MB of blanks compress to ~60 KB: refused at the cap, not held whole.
    bomb = gzip.compress(b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">' + b" " * 60_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(FeedParseError, match="decompression bomb"):
        parse_feed(bomb, f"{base}/bomb.xml.gz")
    with pytest.raises(FeedParseError, match="truncated gzip"):
        parse_feed(gzip.compress(load(devserver, "plain.xml"))[:-20], f"{base}/cut.xml.gz")


def test_sitemap_index_children_newest_first_capped_and_followed(devserver, env):
    settings, client = env
    base = devserver.base_url
    days = list(range(1, 26))
    random.Random(7).shuffle(days)
    children = "".join(f"<sitemap><loc>{base}/sm/{d:02d}.xml</loc><lastmod>2024-01-{d:02d}T00:00:00Z</lastmod></sitemap>"
                       for d in days)
    devserver.add("/sitemap_index.xml", f'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/'
                  f'schemas/sitemap/0.9">{children}<sitemap><loc>javascript:alert(1)</loc></sitemap>'
                  f'<sitemap><loc>{base}/sm/undated.xml</loc></sitemap></sitemapindex>', content_type=XML)
    index = fetch_and_parse(devserver, env, "/sitemap_index.xml")
    assert index.entries == [] and len(index.sitemaps) == sitemaps.MAX_CHILD_SITEMAPS == 20
    assert index.sitemaps == [f"{base}/sm/{d:02d}.xml" for d in range(25, 5, -1)]
    assert index.rejected_links == 1 and "26 sitemaps; the 20 newest kept" in index.warning

    def urlset(*locs: str) -> str:
        return ('<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                + "".join(f"<url><loc>{base}{loc}</loc><lastmod>{when}</lastmod></url>" for loc, when in locs)
                + "</urlset>")

    devserver.add("/sm/25.xml", urlset(("/a/new", "2024-01-25"), ("/a/shared", "2024-01-24")), content_type=XML)
    devserver.add("/sm/24.xml", gzip.compress(urlset(("/a/shared", "2024-01-24"), ("/a/older", "2024-01-20")).encode()),
                  content_type="application/x-gzip")
    devserver.add("/sm/23.xml", f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap>'
                  f'<loc>{base}/sm/deeper.xml</loc></sitemap></sitemapindex>', content_type=XML)
    devserver.clear_requests()
    merged = sitemaps.expand_index(client, index, settings)
    assert [e.link.removeprefix(base) for e in merged.entries] == ["/a/new", "/a/shared", "/a/older"]
    assert merged.skipped == 1 + 1                      # the index's refused child, the shared URL
    assert merged.rejected_links == 1 and "nested sitemap index, not followed" in merged.warning
    assert paths(devserver) == ["/sm/25.xml", "/sm/24.xml", "/sm/23.xml"]     # the 3 newest only

    devserver.clear_requests()
    with pytest.raises(PermanentFetchError, match="HTTP 404"):      # no child readable: the poll fails
        sitemaps.expand_index(client, ParsedFeed(sitemaps=[f"{base}/sm/01.xml", f"{base}/sm/02.xml"]), settings)
    assert paths(devserver) == ["/sm/01.xml", "/sm/02.xml"]


def test_hostile_sitemap_reads_nothing_external_and_expands_nothing(devserver, env, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-FILE")
    devserver.add("/secret", b"NETSECRET", content_type="text/plain")
    devserver.add("/evil.dtd", b'<!ENTITY remote "DTDSECRET">', content_type="application/xml-dtd")
    devserver.add("/hostile.xml", load(devserver, "hostile_entities.xml", str(secret)), content_type=XML)
    feed = fetch_and_parse(devserver, env, "/hostile.xml")
    text = repr(feed)
    assert feed.entries[0].title == "Leak &file; &net; &remote; here"          # references stay literal
    assert not any(s in text for s in ("TOPSECRET-FILE", "NETSECRET", "DTDSECRET"))
    assert "lol" * 10 not in text and len(text) < 3000
    # The bomb ends the read (libxml2's amplification guard); what came before is kept.
    assert [e.link for e in feed.entries] == ["http://feed.example/leak", "http://feed.example/&net"]
    assert "not well-formed" in feed.warning and "amplification" in feed.warning
    assert paths(devserver) == ["/hostile.xml"]         # no DTD, no entity fetched


def test_bad_links_in_a_sitemap_are_refused_and_counted(devserver, env):
    base = devserver.base_url
    locs = ["javascript:alert(1)", "data:text/html,hi", "ftp://files.example/x", "http://[::1", f"{base}/nel\u0085.html",
            f"{base}/" + "x" * 2100, "", f"{base}/good.html"]
    body = ('<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            + "".join(f"<url><loc>{loc}</loc></url>" for loc in locs) + "</urlset>")
    devserver.add("/bad.xml", body, content_type=XML)
    feed = fetch_and_parse(devserver, env, "/bad.xml")
    assert [e.link for e in feed.entries] == [f"{base}/good.html"]
    assert feed.rejected_links == 6 and feed.skipped == 7                      # + the empty <loc>
    assert feed.rejected_examples == ["javascript:alert(1) (scheme not allowed)",
                                      "data:text/html,hi (scheme not allowed)",
                                      "ftp://files.example/x (scheme not allowed)"]


def test_poll_feed_reads_a_news_sitemap_as_a_feed(devserver, env, tmp_path):
    settings, client = env
    upgrade(settings.database_url)
    devserver.add("/news-sitemap.xml.gz", gzip.compress(load(devserver, "news.xml")), content_type="application/x-gzip")
    with session_scope(settings.database_url) as s:
        fid = store.add_feed(s, f"{devserver.base_url}/news-sitemap.xml.gz")[0].id
    with session_scope(settings.database_url) as s:
        result = pipeline.poll_feed(s, client, fid, settings)
    assert result.outcome.status == OK and len(result.new_entries) == 3
    with session_scope(settings.database_url) as s:
        assert s.get(Feed, fid).title == "Caspian Daily"


# ---------------------------------------------------------------- OPML

def test_opml_nested_folders_round_trip_through_the_database(tmp_path):
    feeds = parse_opml((FIXTURES / "nested.opml").read_bytes())
    assert [(f.name, f.group) for f in feeds] == [
        ("Defense News", "Defence"),
        ("Daily Sabah — Defence", "Defence/Turkey"),
        ("SSB", "Defence/Turkey/Procurement"),              # xmlurl in lower case still read
        ("Breaking Defense", "Defence"),
        ("BBC World", None),
        ("In an unnamed folder", None),                     # an unnamed folder adds no level
        ("Azernews", "South Caucasus"),
    ]
    first = build_opml(feeds)
    tree = ElementTree.fromstring(first)
    defence = tree.find("body/outline[@text='Defence']")
    assert defence.find("outline[@text='Turkey']/outline[@text='Procurement']/outline").get("xmlUrl") \
        == "https://www.ssb.gov.tr/rss.xml"
    assert [o.get("text") for o in tree.find("body")] == ["Defence", "BBC World", "In an unnamed folder", "South Caucasus"]

    # What `feeds import-opml` then `feeds export-opml` do, on an empty database.
    db = f"sqlite:///{tmp_path / 'o.db'}"
    upgrade(db)
    with session_scope(db) as s:
        for f in parse_opml(first):
            store.add_feed(s, f.url, name=f.name, group=f.group, site_url=f.site_url)
    with session_scope(db) as s:
        stored = [OPMLFeed(f.url, f.name or f.title, f.site_url, f.group_name)
                  for f in s.exec(select(Feed).order_by(Feed.id)).all()]
    assert [f.group for f in stored] == [f.group for f in parse_opml(first)]
    assert build_opml(stored) == first
