"""Hostile feeds and text end in a clear record, never a crash: entity bombs and
external entities stay inert (feeds and OPML), entry links other than http(s) are
refused and counted, and text comes out valid, NFC, without control characters.
Fixtures: tests/fixtures/hostile/ ({SECRET} and {BASE} are filled in here)."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import pytest
from sqlmodel import select

from worker import http, pipeline, store
from worker.db import session_scope
from worker.errors import ConfigError, FeedParseError
from worker.extract import clean_text, html_to_text
from worker.feeds import ParsedEntry, ParsedFeed, check_link, parse_feed
from worker.migrate import upgrade
from worker.models import Feed, FetchEvent
from worker.opml import parse_opml
from worker.schedule import OK
from worker.settings import Settings

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "hostile"
FEED_URL = "http://feed.example/dir/feed.xml"
SECRETS = ("TOPSECRET-FILE", "NETSECRET", "DTDSECRET")
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def texts(feed: ParsedFeed) -> list[str]:
    """Every string parse_feed hands on."""
    out = [feed.title or "", feed.site_url or "", feed.warning or ""]
    for e in feed.entries:
        out += [e.link, e.guid or "", e.title or "", e.summary or "", e.content or "", e.author or ""]
    return out


@pytest.fixture
def hostile_server(devserver, tmp_path):
    """The local server with a secret, a DTD defining an entity, and a fixture loader."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-FILE")
    devserver.add("/secret", b"NETSECRET", content_type="text/plain")
    devserver.add("/evil.dtd", b'<!ENTITY remote "DTDSECRET">', content_type="application/xml-dtd")

    def load(name: str) -> bytes:
        data = (HOSTILE / name).read_bytes()
        return data.replace(b"{SECRET}", str(secret).encode()).replace(b"{BASE}", devserver.base_url.encode())

    devserver.load = load
    return devserver


# ---------------------------------------------------------------- XML: entities, XXE, DTDs

@pytest.mark.parametrize("name", ["billion_laughs.xml", "billion_laughs_hidden.xml"])
def test_billion_laughs_is_not_expanded(name):
    feed = parse_feed((HOSTILE / name).read_bytes(), FEED_URL)
    (entry,) = feed.entries
    assert entry.title == "Before &lol9; after"          # the reference stays literal
    assert sum(map(len, texts(feed))) < 1000
    assert "lol" * 10 not in "".join(texts(feed))
    assert "entity declarations in the DOCTYPE ignored" in feed.warning


def test_quadratic_blowup_stays_small():
    # One 50 KB entity referenced 20,000 times: 130 KB of feed that feedparser's loose
    # parser turned into 1 GB of text before entity declarations were made inert.
    doc = (b'<?xml version="1.0"?>\n<!DOCTYPE rss [\n<!ENTITY a "' + b"x" * 50_000 + b'">\n]>\n'
           b'<rss version="2.0"><channel><title>t</title><item><title>T</title><link>http://feed.example/q</link>'
           b"<description>" + b"&a;" * 20_000 + b"</description></item></channel></rss>")
    feed = parse_feed(doc, FEED_URL)
    assert len(feed.entries) == 1
    assert sum(map(len, texts(feed))) < 2 * len(doc)
    assert "x" * 1000 not in "".join(texts(feed))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-7"])
def test_entity_declarations_are_found_whatever_the_encoding(encoding):
    # A byte search for "<!ENTITY" misses these: the bytes are decoded first.
    text = ('<?xml version="1.0" encoding="%s"?>\n<!DOCTYPE rss [\n<!ENTITY a "%s">\n]>\n'
            '<rss version="2.0"><channel><item><title>T &a; &a; &a;</title><link>http://feed.example/e</link>'
            '<description>%s</description></item></channel></rss>') % (encoding, "y" * 5000, "&a;" * 2000)
    data = text.encode(encoding)
    if encoding == "utf-7":     # Python writes "<" as is; a hostile feed need not
        data = data.replace(b"<!ENTITY", b"+ADw-!ENTITY")
    assert b"<!ENTITY" not in data
    feed = parse_feed(data, FEED_URL, content_type="application/rss+xml")
    assert feed.entries[0].title == "T &a; &a; &a;"
    assert sum(map(len, texts(feed))) < 20_000
    assert "entity declarations" in feed.warning


@pytest.mark.parametrize("name", ["xxe_file.xml", "xxe_network.xml", "xxe_parameter.xml", "external_dtd.xml"])
def test_external_entities_and_dtds_are_never_read(hostile_server, name):
    feed = parse_feed(hostile_server.load(name), FEED_URL)
    assert len(feed.entries) == 1 and "Leak &" in feed.entries[0].title
    for secret in SECRETS:
        assert secret not in "".join(texts(feed))
    assert not hostile_server.requests, [r.path for r in hostile_server.requests]


def test_poll_feed_records_a_hostile_feed_and_fetches_nothing_else(hostile_server, tmp_path):
    db = f"sqlite:///{tmp_path / 'h.db'}"
    upgrade(db)
    settings = Settings(database_url=db, var_dir=tmp_path, allowed_private_hosts=[hostile_server.host_port])
    hostile_server.add("/laughs.xml", hostile_server.load("billion_laughs_hidden.xml"), content_type="application/rss+xml")
    hostile_server.add("/xxe.xml", hostile_server.load("xxe_network.xml"), content_type="application/rss+xml")
    hostile_server.add("/bad-encoding.xml", b'<?xml version="1.0" encoding="\xff\xfe"?><rss version="2.0"/>',
                       content_type="application/xml")
    urls = [f"{hostile_server.base_url}/{n}" for n in ("laughs.xml", "xxe.xml", "bad-encoding.xml")]
    with session_scope(db) as s:
        ids = [store.add_feed(s, u)[0].id for u in urls]
    with http.make_client(settings) as client:
        results = []
        for fid in ids:
            with session_scope(db) as s:
                results.append(pipeline.poll_feed(s, client, fid, settings))
    assert [len(r.new_entries) for r in results] == [1, 1, 0]
    with session_scope(db) as s:
        events = {e.feed_id: e for e in s.exec(select(FetchEvent)).all()}
        titles = [s.get(Feed, i).title for i in ids]
    assert events[ids[0]].outcome == OK and "entity declarations in the DOCTYPE ignored" in events[ids[0]].error
    assert events[ids[1]].outcome == OK and "NETSECRET" not in (events[ids[1]].error or "")
    assert events[ids[2]].outcome == "permanent" and "not a feed" in events[ids[2]].error
    assert titles[:2] == ["Laughs", "Network"]
    assert {r.path for r in hostile_server.requests} == {"/laughs.xml", "/xxe.xml", "/bad-encoding.xml"}


def test_undecodable_encoding_declaration_is_a_parse_error_not_a_crash():
    # feedparser itself raises UnicodeDecodeError on this declaration.
    with pytest.raises(FeedParseError, match="not a feed"):
        parse_feed(b'<?xml version="1.0" encoding="\xff\xfe"?><rss version="2.0"><channel/></rss>', FEED_URL)


@pytest.mark.parametrize("body", [b"", b"   \n", b"[" * 100_000, b'{"version": "https://jsonfeed.org/version/1.1", "items": ' + b"[" * 100_000])
def test_empty_and_deeply_nested_bodies_are_parse_errors(body):
    with pytest.raises(FeedParseError, match="not a feed"):
        parse_feed(body, FEED_URL)


@pytest.mark.parametrize("name", ["opml_billion_laughs.opml", "opml_xxe.opml"])
def test_opml_entities_are_refused(hostile_server, name):
    with pytest.raises(ConfigError, match="EntitiesForbidden") as err:
        parse_opml(hostile_server.load(name))
    assert not any(secret in str(err.value) for secret in SECRETS)
    assert not hostile_server.requests


def test_opml_external_dtd_is_not_fetched(hostile_server):
    feeds = parse_opml(hostile_server.load("opml_external_dtd.opml"))
    assert [(f.url, f.name) for f in feeds] == [("http://feed.example/rss", "Plain")]
    assert not hostile_server.requests


# ---------------------------------------------------------------- links

def test_entry_links_other_than_http_are_refused_and_counted():
    feed = parse_feed((HOSTILE / "hostile_links.xml").read_bytes(), FEED_URL)
    assert [e.link for e in feed.entries] == [
        "http://feed.example/news/relative",            # resolved against the feed's URL
        "http://feed.example/dir/story.html",
        "http://other.example/story",
        "https://feed.example/plain",
        "http://feed.example/from-guid",                # no link: the permalink guid
    ]
    # javascript x2, data, file, ftp, mailto, no host, space in host, bad port
    assert feed.rejected_links == 9
    assert feed.skipped == 9 + 2                        # + no link at all + the duplicate
    assert feed.rejected_examples == [
        "javascript:alert(document.cookie) (scheme not allowed)",
        "Java%09Script:alert(1) (scheme not allowed)",      # odd characters shown escaped
        "data:text/html;base64,PHNjcmlwdD5hbGVyd… (scheme not allowed)",
    ]
    assert feed.site_url == "http://feed.example/home"


@pytest.mark.parametrize("link, base, expected, reason", [
    ("/a", FEED_URL, "http://feed.example/a", None),
    ("https://x.example/a b", "", "https://x.example/a b", None),
    ("HTTP://X.example/a", "", "HTTP://X.example/a", None),
    ("/a", "", "", "relative link"),
    ("java\tscript:alert(1)", FEED_URL, "", "scheme not allowed"),
    ("vbscript:x", FEED_URL, "", "scheme not allowed"),
    ("http://[::1", FEED_URL, "", "not a valid URL"),
    ("http://x.example:99999/", FEED_URL, "", "not a valid URL"),
    ("http://:80/", FEED_URL, "", "no valid host"),
    ("http://x.example/\x00a", FEED_URL, "", "control or invalid characters"),
    ("http://x.example/" + "a" * 2000, FEED_URL, "", "longer than 2000"),
])
def test_check_link(link, base, expected, reason):
    got, why = check_link(link, base)
    assert got == expected
    assert (why is None) if reason is None else (reason in why and len(why) < 100)


def test_entries_over_the_cap_are_counted_not_parsed():
    items = "".join(f"<item><title>{i}</title><link>http://feed.example/{i}</link></item>" for i in range(7))
    feed = parse_feed(f'<rss version="2.0"><channel>{items}</channel></rss>'.encode(), FEED_URL, max_entries=5)
    assert len(feed.entries) == 5 and feed.entries_over_cap == 2 and feed.skipped == 0
    js = {"version": "https://jsonfeed.org/version/1.1",
          "items": [{"id": str(i), "url": f"http://feed.example/{i}"} for i in range(4)]}
    feed = parse_feed(json.dumps(js).encode(), FEED_URL, max_entries=3)
    assert len(feed.entries) == 3 and feed.entries_over_cap == 1


# ---------------------------------------------------------------- text

HOSTILE_TEXTS = [
    "NUL\x00 byte", "lone \ud800 high and \udfff low surrogate", "bell\x07 escape\x1b[31m red",
    "C1\x85 next-line and \x9b CSI", "Cafe\u0301 decomposed", "zero\u200bwidth soft\u00adhyphen word\u2060joiner",
    "\ufeffBOM first", "bidi \u202eoverride\u202c and \u2066isolate\u2069", "nonchar \ufffe \uffff",
    "tabs\t\tand\u00a0\u00a0nbsp", "lines\r\nwith\rCR\n\n\n\nand blanks\u2028sep", "DÃ¼sseldorf",
    "x" * 300_000, ("word " * 100_000) + "\x00",
]


@pytest.mark.parametrize("text", HOSTILE_TEXTS, ids=range(len(HOSTILE_TEXTS)))
def test_clean_text_output_is_valid_nfc_without_controls(text):
    out = clean_text(text, max_chars=200_000)
    out.encode("utf-8")                                  # strict: PostgreSQL-safe
    assert unicodedata.is_normalized("NFC", out)
    assert not _CONTROL.search(out) and "\r" not in out
    assert not re.search("[\u200b\u00ad\u2060\ufeff\u202a-\u202e\u2066-\u2069\ufffe\uffff\ud800-\udfff]", out)
    assert len(out) <= 200_000
    assert clean_text(out) == out                        # idempotent


@pytest.mark.parametrize("broken, fixed", [
    ("DÃ¼sseldorf", "Düsseldorf"),                      # UTF-8 read as Latin-1/cp1252
    ("Itâ€™s â€œquotedâ€\x9d", "It’s “quoted”"),           # cp1252 punctuation, one byte lost to C1
    ("It\x92s", "It’s"),                                 # cp1252 read as Latin-1
    ("Ã©tÃ© Ã  Paris", "été à Paris"),
])
def test_clean_text_repairs_mojibake(broken, fixed):
    assert clean_text(broken) == fixed


@pytest.mark.parametrize("good", [
    "canción» — «también»", "Grüße aus Köln", "Україна і Польща", "日本語のテキスト", "naïve café", "a\u200db 👩\u200d💻",
    "Ein Über-Ä: ÄÖÜ äöü ß", "€5 – “quoted” … ‘single’",
])
def test_clean_text_leaves_correct_text_alone(good):
    assert clean_text(good) == unicodedata.normalize("NFC", good)


def test_html_to_text_survives_junk_and_decodes_references():
    assert html_to_text("<p>a\x00b</p><p>c\ud800d\ufffe</p>").split() == ["ab", "cd"]    # lxml, not the regex fallback
    assert html_to_text("Fish &amp; Chips") == "Fish & Chips"
    # libxml2 stops nesting at 256 levels and drops what is deeper: no crash, no hang.
    assert html_to_text("<p>x" + "<div>" * 50_000 + "y").split()[0] == "x"


def test_wrong_declared_charset_still_gives_readable_titles():
    cp1252 = parse_feed((HOSTILE / "cp1252_declared_utf8.xml").read_bytes(), FEED_URL)
    assert cp1252.title == "Café – Zürich"
    assert cp1252.entries[0].title == "“Smart quotes” and €5 in Düsseldorf"
    assert "declared as utf-8, but parsed as windows-1252" in cp1252.warning
    # feedparser itself re-decodes UTF-8 that was declared Latin-1 ...
    latin1 = parse_feed((HOSTILE / "utf8_declared_latin1.xml").read_bytes(), FEED_URL)
    assert latin1.title == "Nachrichten aus Düsseldorf"
    assert latin1.entries[0].title == "Grüße aus Köln – it’s “fine”"
    # ... but not text the publisher had already mis-decoded: clean_text (ftfy) does.
    mojibake = parse_feed((HOSTILE / "mojibake_in_feed.xml").read_bytes(), FEED_URL)
    assert mojibake.title == "Nachrichten aus Düsseldorf"
    assert mojibake.entries[0].title == "Grüße aus Köln – it’s “fine”"


def test_json_feed_with_junk_values():
    feed = parse_feed((HOSTILE / "junk.json").read_bytes(), FEED_URL)
    assert feed.title == "Junk feed" and feed.site_url is None          # javascript: home page dropped
    first, external, mojibake = feed.entries
    assert first.link == "http://feed.example/relative/one" and first.guid == "1"
    assert first.title == "NUL lone surrogate evil zerowidth bell"
    assert first.summary == "<p>ab \U0001F600 pair kept</p>" and first.author == "Ann"
    assert first.published_at is None
    assert external.link == "https://feed.example/external" and external.title is None
    assert external.author == "Solo" and external.published_at.isoformat() == "2024-02-29T11:00:00+00:00"
    assert mojibake.title == "Düsseldorf mojibake" and mojibake.published_at is None    # past year 9999 in UTC
    assert feed.rejected_links == 1 and feed.rejected_examples == ["javascript:alert(1) (scheme not allowed)"]
    assert feed.skipped == 3            # the refused link, the item without a usable url, the non-object
    for value in texts(feed):
        value.encode("utf-8")
        assert "\x00" not in value
    for e in feed.entries:              # what goes into a task message
        json.dumps(e.to_dict(), ensure_ascii=False).encode("utf-8")


def test_article_from_a_junk_entry_is_storable(tmp_path):
    entry = ParsedEntry(link="http://feed.example/a", title="Ti\x00tle \ud800 DÃ¼sseldorf",
                        summary="<p>Sum\x00mary \udc00 with enough words to count as the text here.</p>",
                        content="<p>Con\x07tent\u202e reversed</p><script>x()</script>")
    page = pipeline.Page(entry.link, error=FeedParseError(entry.link, "no page in this test"))
    draft = pipeline.make_article(entry, entry.link, page, Settings())
    assert draft.title == "Title Düsseldorf"
    assert draft.text == "Content reversed" and draft.summary.startswith("Summary with enough")
    for value in (draft.title, draft.text, draft.summary):
        value.encode("utf-8")
        assert not _CONTROL.search(value.replace("\n", ""))
