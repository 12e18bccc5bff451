"""Unit tests of the pure pipeline steps, on the project's own sample files."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from worker.dedupe import content_hash
from worker.errors import BlockedURL, FeedParseError
from worker.extract import clean_text, detect_language, extract_page, html_to_text
from worker.feeds import ParsedEntry, parse_feed
from worker.http import check_url, retry_after_seconds
from worker.opml import build_opml, parse_opml
from worker.schedule import NOT_MODIFIED, OK, PERMANENT, TEMPORARY, PollOutcome, next_state
from worker.settings import Settings
from worker.urls import canonicalise, same_site

SITE = Path(__file__).resolve().parents[1] / "demo" / "site"
BASE = "http://news.example.org"


def feed_bytes(name: str) -> bytes:
    return (SITE / "feeds" / name).read_text().replace("{{BASE}}", BASE).encode()


# ---------------------------------------------------------------- parse

def test_rss_entries_with_dates_guids_and_content():
    feed = parse_feed(feed_bytes("world.rss"), f"{BASE}/feeds/world.rss")
    assert feed.title.startswith("Caspian Daily Monitor")
    assert len(feed.entries) == 4
    first = feed.entries[0]
    assert first.guid == "cdm-2024-0117-001"
    assert first.author == "Staff reporter"
    assert first.published_at == datetime(2024, 1, 17, 13, 21, tzinfo=timezone.utc)
    assert "Tüfekçi" in first.summary
    assert "120 million manat" in feed.entries[3].content


def test_atom_and_json_feed():
    atom = parse_feed(feed_bytes("sport.atom"), f"{BASE}/feeds/sport.atom")
    assert [e.title for e in atom.entries][0] == "Champions start title defence with late winner"
    js = parse_feed(feed_bytes("wire.json"), f"{BASE}/feeds/wire.json", content_type="application/feed+json")
    assert js.entries[0].link == f"{BASE}/mirror/az-tr-defence-talks.html"
    assert js.entries[0].published_at.year == 2024


def test_not_a_feed_is_a_clear_error():
    with pytest.raises(FeedParseError, match="not a feed"):
        parse_feed(b"<html><body><p>Hello</p></body></html>", "http://x.example/page")


def test_entries_without_http_links_are_skipped_and_counted():
    rss = b"""<rss version="2.0"><channel><title>t</title>
      <item><title>a</title><link>javascript:alert(1)</link></item>
      <item><title>b</title><link>http://x.example/b</link></item>
      <item><title>dup</title><link>http://x.example/b</link></item></channel></rss>"""
    feed = parse_feed(rss, "http://x.example/feed")
    assert [e.link for e in feed.entries] == ["http://x.example/b"]
    assert feed.skipped == 2


def test_entry_roundtrips_through_a_task_message():
    e = ParsedEntry(link="http://x/a", title="T", published_at=datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert ParsedEntry.from_dict(e.to_dict()) == e


# ---------------------------------------------------------------- urls

@pytest.mark.parametrize("url, expected", [
    # host case, default port, tracking parameters
    ("HTTP://News.Example.ORG:80/a/b.html?utm_source=rss&utm_medium=feed", "http://news.example.org/a/b.html"),
    # fragments, fbclid/gclid, other parameters kept
    ("https://news.example.org/a?id=3&fbclid=XYZ&gclid=1#comments", "https://news.example.org/a?id=3"),
    ("https://example.org:443/world/story-1/", "https://example.org/world/story-1"),         # trailing slash
    ("https://example.org/", "https://example.org/"),                                        # root kept
    ("https://www.example.org/world/story-1", "https://example.org/world/story-1"),          # www.
    ("https://m.example.org/world/story-1", "https://example.org/world/story-1"),            # mobile
    ("https://amp.example.org/world/story-1", "https://example.org/world/story-1"),          # AMP host
    ("https://example.org/world/story-1/amp/", "https://example.org/world/story-1"),         # WordPress AMP
    ("https://example.org/amp/world/story-1", "https://example.org/world/story-1"),          # AMP prefix
    ("https://example.org/world/story-1.amp.html", "https://example.org/world/story-1.html"),
    ("https://example.org/world/story-1?amp=1&page=2", "https://example.org/world/story-1?page=2"),
    ("https://example.org/world/story-1?outputType=amp", "https://example.org/world/story-1"),
    ("https://m.example.co.uk/news/ampere-record", "https://example.co.uk/news/ampere-record"),  # 'amp' inside a word stays
    # parameters that name the article are kept (sorted), trackers dropped: two videos stay two
    ("https://www.youtube.com/watch?v=abc&utm_source=rss", "https://youtube.com/watch?v=abc"),
    ("https://news.example.org/view?story=7&sid=2&ref=twitter", "https://news.example.org/view?sid=2&story=7"),
])
def test_canonicalise(url, expected):
    assert canonicalise(url) == expected


def test_same_site_ignores_www():
    assert same_site("https://www.example.org/a", "http://example.org/b")
    assert not same_site("https://example.org/a", "https://evil.example.net/a")


# ---------------------------------------------------------------- extract

def test_seed_page_extracts_clean_text_and_metadata():
    html = (SITE / "news" / "hasanov-tufekci-meeting.html").read_bytes()
    ex = extract_page(html, f"{BASE}/news/hasanov-tufekci-meeting.html")
    assert ex is not None
    assert "Colonel General Zakir Hasanov" in ex.text
    assert "military-technical" in ex.text
    for boilerplate in ("ADVERTISEMENT", "Subscribe now", "All rights reserved", "Cookie settings", "Most read"):
        assert boilerplate not in ex.text
    assert ex.title.startswith("Azerbaijani Defence Minister meets")
    assert ex.published_at.date().isoformat() == "2024-01-17"
    assert detect_language(ex.text) == "en"


def test_page_without_article_gives_none():
    assert extract_page(b"<html><body><nav><a href='/'>Home</a></nav></body></html>", "http://x.example/") is None


def test_html_to_text_keeps_paragraphs_and_drops_scripts():
    text = html_to_text("<p>One.</p><script>evil()</script><p>Two.</p>")
    assert "evil" not in text
    assert clean_text(text) == "One.\n\nTwo."


def test_clean_text_removes_controls_and_normalises():
    assert clean_text("Cafe\u0301\x00 and\t\ttea") == "Café and tea"


@pytest.mark.parametrize("text, lang", [
    ("Министр обороны Азербайджана встретился с делегацией Турции в Баку", "ru"),
    ("Milli Savunma Bakanlığı heyeti Azerbaycan'da resmi temaslarda bulundu", "tr"),
    ("The minister met the visiting delegation in the capital on Tuesday", "en"),
])
def test_language_detection(text, lang):
    assert detect_language(text) == lang


# ---------------------------------------------------------------- dedupe

def test_content_hash_folds_case_spacing_and_punctuation():
    a = "The Defence Minister met the delegation.  It was a long meeting about cooperation."
    b = "the defence minister met the delegation -- it was a long meeting about cooperation"
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(a + " More.")
    assert content_hash("short") is None


# ---------------------------------------------------------------- http

def test_private_addresses_refused_unless_allowed():
    for url in ("http://127.0.0.1:8000/feed", "http://10.0.0.5/feed", "http://169.254.169.254/latest/meta-data",
                "http://[::1]:8000/", "http://[::ffff:127.0.0.1]/", "http://localhost:9/x"):
        with pytest.raises(BlockedURL, match="non-public address"):
            check_url(url)
    check_url("http://127.0.0.1:8000/feed", ["127.0.0.1:8000"])  # allowed: no error
    with pytest.raises(BlockedURL, match="scheme"):
        check_url("file:///etc/passwd")


def test_retry_after_seconds_and_http_date():
    assert retry_after_seconds("120") == 120.0
    assert 0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None


# ---------------------------------------------------------------- schedule policy

def test_schedule_policy():
    s = Settings(default_interval=600, disable_after_failures=3, max_backoff=3600)
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rng = random.Random(1)
    ok = next_state(PollOutcome(OK, items_new=2), now=now, interval=None, error_count=4, settings=s, rng=rng)
    assert (ok.next_fetch_at - now, ok.error_count, ok.enabled) == (timedelta(seconds=450), 0, True)
    assert next_state(PollOutcome(NOT_MODIFIED), now=now, interval=120, error_count=0, settings=s).next_fetch_at == now + timedelta(seconds=120)
    t1 = next_state(PollOutcome(TEMPORARY), now=now, interval=None, error_count=0, settings=s, rng=rng)
    t3 = next_state(PollOutcome(TEMPORARY), now=now, interval=None, error_count=2, settings=s, rng=rng)
    assert t1.next_fetch_at - now < t3.next_fetch_at - now <= timedelta(seconds=3600 * 1.25)
    ra = next_state(PollOutcome(TEMPORARY, retry_after=3000), now=now, interval=None, error_count=0, settings=s, rng=rng)
    assert ra.next_fetch_at - now >= timedelta(seconds=3000)
    p = next_state(PollOutcome(PERMANENT, error="HTTP 404"), now=now, interval=None, error_count=2, settings=s,
                   rng=rng, permanent_failures=2)
    assert not p.enabled and "HTTP 404" in p.disabled_reason and p.permanent_failures == 3
    # a run of temporary failures followed by one permanent is not a run of permanent ones
    assert next_state(PollOutcome(PERMANENT), now=now, interval=None, error_count=9, settings=s, rng=rng).enabled
    t = next_state(PollOutcome(TEMPORARY), now=now, interval=None, error_count=50, settings=s, rng=rng)
    assert t.enabled   # temporary failures never disable a feed


def test_interval_adapts_to_publishing_rate_hints_and_override():
    s = Settings(default_interval=900, min_interval=60, max_interval=86_400)
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    hourly = [now - timedelta(hours=h) for h in range(10)]
    st = next_state(PollOutcome(OK, published=hourly), now=now, interval=None, error_count=0, settings=s)
    assert st.fetch_interval == 1800 and st.next_fetch_at == now + timedelta(seconds=1800)   # half the gap
    busy = [now - timedelta(minutes=m) for m in range(0, 20, 2)]
    assert next_state(PollOutcome(OK, published=busy), now=now, interval=None, error_count=0,
                      settings=s).fetch_interval == 60                                        # the minimum
    # the feed's own hint is a floor: ttl 2 h beats the hourly rate
    hinted = next_state(PollOutcome(OK, published=hourly, hint_seconds=7200), now=now, interval=None, error_count=0,
                        settings=s)
    assert hinted.fetch_interval == 7200
    # no dates: quiet polls stretch the interval, new items shorten it, within the bounds
    quiet = next_state(PollOutcome(NOT_MODIFIED), now=now, interval=None, error_count=0, settings=s,
                       fetch_interval=80_000)
    assert quiet.fetch_interval == 86_400
    # the operator's per-feed override wins for the next fetch; the learned value is still kept
    fixed = next_state(PollOutcome(OK, published=hourly), now=now, interval=300, error_count=0, settings=s)
    assert fixed.next_fetch_at == now + timedelta(seconds=300) and fixed.fetch_interval == 1800


@pytest.mark.parametrize("body, headers, expected", [
    (b"<rss><channel><ttl>90</ttl></channel></rss>", {}, 5400),
    (b'<rss xmlns:sy="http://purl.org/rss/1.0/modules/syndication/"><channel><sy:updatePeriod>hourly'
     b"</sy:updatePeriod><sy:updateFrequency>4</sy:updateFrequency></channel></rss>", {}, 900),
    (b"<rss><channel><sy:updatePeriod>daily</sy:updatePeriod></channel></rss>", {}, 86_400),
    (b"<rss/>", {"cache-control": "public, max-age=600"}, 600),
    (b"<rss><channel><ttl>5</ttl></channel></rss>", {"cache-control": "max-age=600"}, 600),  # the larger
    (b"<rss/>", {"cache-control": "no-cache, max-age=600"}, None),
    (b"<rss/>", {"expires": "Mon, 01 Jan 2024 01:00:00 GMT"}, 3600),
    (b"<rss/>", {}, None),
])
def test_poll_hints(body, headers, expected):
    from worker.hints import poll_hint

    assert poll_hint(body, headers, now=datetime(2024, 1, 1, tzinfo=timezone.utc)) == expected


@pytest.mark.parametrize("url, hops, moved", [
    ("http://a.example/f", [(301, "https://a.example/feed")], "https://a.example/feed"),
    ("http://a.example/f", [(308, "http://b.example/f"), (301, "http://c.example/f")], "http://c.example/f"),
    ("http://a.example/f", [(301, "http://b.example/f"), (302, "http://c.example/f")], None),   # not all permanent
    ("http://a.example/f", [(307, "http://b.example/f")], None),
    ("https://a.example/f", [(301, "http://a.example/f")], None),                               # never to http
    ("http://a.example/f", [], None),
])
def test_permanent_redirect_target(url, hops, moved):
    from worker.http import FetchResult

    r = FetchResult(url, hops[-1][1] if hops else url, 200, redirects=hops)
    assert r.moved_permanently_to == moved


# ---------------------------------------------------------------- opml

def test_opml_roundtrip_keeps_groups():
    root = Path(__file__).resolve().parents[1]
    feeds = parse_opml((root / "config" / "feeds.opml").read_bytes())
    assert len(feeds) >= 8 and {f.group for f in feeds} >= {"Defence", "International"}
    again = parse_opml(build_opml(feeds))
    assert again == feeds


def test_opml_entity_expansion_is_refused():
    bomb = b"""<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>
    <opml version="2.0"><body><outline text="&b;" xmlUrl="http://x.example/feed"/></body></opml>"""
    from worker.errors import ConfigError
    with pytest.raises(ConfigError, match="not a valid OPML"):
        parse_opml(bomb)
