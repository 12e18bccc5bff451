"""Parse feed bytes (RSS, Atom, RDF with feedparser; JSON Feed, which the released
feedparser does not read, with the standard json module) into plain values.

Feeds are untrusted input.  Whatever the bytes, :func:`parse_feed` returns a
:class:`ParsedFeed` or raises ``FeedParseError``: entity declarations are made inert
before parsing, entry links other than absolute http(s) are refused and counted, and
every string handed on is valid Unicode (no NUL, no lone surrogates), titles cleaned."""

from __future__ import annotations

import calendar
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit

import feedparser
from feedparser.encodings import convert_to_utf8

from .errors import FeedParseError
from .extract import clean_text

# feedparser resolves relative URIs and sanitises HTML by default; keep both on.

# What no database column or JSON task message can carry (PostgreSQL refuses NUL and
# surrogates).  C1 controls stay: they are usually cp1252 mojibake, which clean_text
# repairs later and could not repair once they are gone.
_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
# Anything in a link that a browser or HTTP client would not send as is.
_BAD_LINK_CHARS = re.compile("[\x00-\x20\x7f-\x9f\ud800-\udfff]")
MAX_REJECTED_EXAMPLES = 3
MAX_LINE_CHARS = 1000       # a title or author name longer than this is abuse, not news
MAX_LINK_CHARS = 2000       # the common URL limit; PostgreSQL's unique index on URLs holds ~2,700 bytes


@dataclass
class ParsedEntry:
    link: str
    guid: Optional[str] = None
    title: Optional[str] = None
    summary: Optional[str] = None        # HTML or text, as the feed gave it
    content: Optional[str] = None        # full content (content:encoded, atom:content), HTML
    author: Optional[str] = None
    published_at: Optional[datetime] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for task messages."""
        d = asdict(self)
        d["published_at"] = self.published_at.isoformat() if self.published_at else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParsedEntry":
        d = dict(d)
        if d.get("published_at"):
            d["published_at"] = datetime.fromisoformat(d["published_at"])
        return cls(**d)


@dataclass
class ParsedFeed:
    title: Optional[str] = None
    site_url: Optional[str] = None
    entries: list[ParsedEntry] = field(default_factory=list)
    skipped: int = 0                       # entries dropped: no usable link, a refused link, or a duplicate
    warning: Optional[str] = None          # feedparser's bozo exception (or our note), when it still got entries
    rejected_links: int = 0                # of the skipped: a link that is not http(s) or cannot be resolved
    rejected_examples: list[str] = field(default_factory=list)   # up to 3, e.g. "javascript:… (scheme not allowed)"
    entries_over_cap: int = 0              # entries past max_entries, not looked at
    sitemaps: list[str] = field(default_factory=list)   # a sitemap index: child sitemaps to fetch next, newest first


def _str(value: Any) -> Optional[str]:
    """A string field as valid Unicode, or None (JSON Feed values can be of any type)."""
    if not isinstance(value, str):
        return None
    return _INVALID.sub("", value) or None


def _line(value: Any) -> Optional[str]:
    """A one-line text field (titles, authors): cleaned as article text is, capped."""
    text = _str(value)
    if not text:
        return None
    return clean_text(" ".join(text[:4 * MAX_LINE_CHARS].split()), MAX_LINE_CHARS) or None


def _id(value: Any) -> Optional[str]:
    """A JSON Feed item id: a string, though some feeds give a number."""
    return _str(str(value) if isinstance(value, int) and not isinstance(value, bool) else value)


def _short(link: str, limit: int = 40) -> str:
    """The start of a link for a record, its odd characters percent-escaped."""
    link = _BAD_LINK_CHARS.sub(lambda m: "%%%02X" % ord(m[0]) if m[0] < "\u0100" else "\ufffd", link)
    return link if len(link) <= limit else link[:limit - 1] + "…"


def check_link(link: str, base: str) -> tuple[str, Optional[str]]:
    """(absolute http(s) URL, None), or ("", why it is refused).  Relative links are
    resolved against *base* (the feed's URL) first."""
    link = link.strip()
    try:
        absolute = urljoin(base, link) if base else link
        parts = urlsplit(absolute)
        parts.port          # raises ValueError for a port that is not a number
    except ValueError:
        return "", f"{_short(link)} (not a valid URL)"
    if not parts.scheme:
        return "", f"{_short(link)} (relative link without a base to resolve it)"
    if parts.scheme.lower() not in ("http", "https"):
        return "", f"{_short(link)} (scheme not allowed)"
    if not parts.hostname or _BAD_LINK_CHARS.search(parts.netloc):
        return "", f"{_short(link)} (no valid host)"
    if _BAD_LINK_CHARS.search(absolute.replace(" ", "")):     # spaces in paths are common and harmless
        return "", f"{_short(link)} (control or invalid characters)"
    if len(absolute) > MAX_LINK_CHARS:
        return "", f"{_short(link)} (longer than {MAX_LINK_CHARS} characters)"
    return absolute, None


def _when(entry: Any) -> Optional[datetime]:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        st = dict.get(entry, key)       # not entry.get: feedparser maps a missing updated_parsed, with a warning
        if st:
            try:
                return datetime.fromtimestamp(calendar.timegm(st), tz=timezone.utc)
            except (OverflowError, ValueError, TypeError, OSError):
                continue
    return None


def _content(entry: Any) -> Optional[str]:
    parts = [c.get("value") for c in entry.get("content") or [] if c.get("value")]
    return max(parts, key=len) if parts else None


def parse_feed(content: bytes, url: str, *, content_type: str = "", max_entries: int = 500) -> ParsedFeed:
    """Parse *content* (the response body, never a URL).  Raises ``FeedParseError``
    when the bytes are not a feed at all."""
    from . import sitemaps      # here: sitemaps builds on this module

    if content[:2] == sitemaps.GZIP_MAGIC:      # a .xml.gz file: compressed as a file, not as Content-Encoding
        content = sitemaps.gunzip(content, url)
    if not content.strip():
        raise FeedParseError(url, "not a feed: empty body")
    if content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return _parse_json_feed(content, url, max_entries)
    if sitemaps.is_sitemap(content):            # <urlset> or <sitemapindex>: not for feedparser
        return sitemaps.parse_sitemap(content, url, max_entries=max_entries)
    try:
        parsed, note = _feedparser(content, url, content_type)
    except Exception as exc:  # noqa: BLE001 - hostile bytes can trip the third-party parser anywhere
        raise FeedParseError(url, f"not a feed: the parser failed ({type(exc).__name__}: {_warning(exc)})") from None
    if not parsed.get("version") and not parsed.entries:
        reason = parsed.get("bozo_exception") or "no RSS, Atom or JSON Feed structure found"
        raise FeedParseError(url, f"not a feed: {_warning(reason)}")
    bozo = parsed.get("bozo_exception") if parsed.get("bozo") else None
    feed = ParsedFeed(
        title=_line(parsed.feed.get("title")),
        site_url=check_link(_str(parsed.feed.get("link")) or "", url)[0] or None,
        warning="; ".join(w for w in (note, _warning(bozo) if bozo else None) if w) or None,
        entries_over_cap=max(0, len(parsed.entries) - max_entries),
    )
    _add_entries(feed, url, (
        ParsedEntry(
            # An entry without a link gets its id (often a urn: or tag:) as the link from
            # feedparser: that is no link given, not a refused one.
            link="" if entry.get("guidislink") and entry.get("link") == entry.get("id")
            else _str(entry.get("link")) or "",
            guid=_str(entry.get("id")),
            title=_line(entry.get("title")),
            summary=_str(entry.get("summary")),
            content=_str(_content(entry)),
            author=_line(entry.get("author")),
            published_at=_when(entry),
        )
        for entry in parsed.entries[:max_entries]
    ))
    return feed


def _feedparser(content: bytes, url: str, content_type: str) -> tuple[Any, Optional[str]]:
    """feedparser's result, with entity declarations made inert first.

    feedparser strips the DOCTYPE with a regular expression but puts back the entities
    it deems safe, which its loose parser then expands without limit (a 130 KB feed
    declaring one 50 KB entity used 20,000 times gave 1 GB of text), and a DOCTYPE that
    fools the expression reaches expat whole (whose amplification limit still allows
    100x).  A feed has no business declaring entities: every declaration is turned into
    text, references to them stay literal ``&name;``.  External entities and DTDs are
    never fetched either way (expat runs with external general entities off).

    The declarations must be found in the text the parser reads, so the bytes are
    decoded first with feedparser's own rules (BOM, HTTP charset, XML declaration,
    fallbacks): a byte search would miss them in UTF-16, UTF-7 or EBCDIC."""
    headers = {"content-location": url}
    if content_type:
        headers["content-type"] = content_type
    probe: dict[str, Any] = {}
    data = convert_to_utf8(headers, content, probe)
    if probe.get("encoding"):
        headers["content-type"] = "application/xml; charset=utf-8"     # what it now is
    note = None
    if b"<!ENTITY" in data and b"<!DOCTYPE" in data:
        note = f"entity declarations in the DOCTYPE ignored ({data.count(b'<!ENTITY')})"
        data = data.replace(b"<!ENTITY", b"&lt;!ENTITY")
    parsed = feedparser.parse(data, response_headers=headers)
    parsed["encoding"] = probe.get("encoding") or parsed.get("encoding")    # the feed's, not "utf-8"
    if not parsed.get("bozo") and probe.get("bozo"):    # a wrong charset or media type, noted on decoding
        parsed["bozo"], parsed["bozo_exception"] = True, probe["bozo_exception"]
    return parsed, note


def _warning(exc: Any) -> str:
    """A parser message fit for a log line and a database column."""
    return " ".join((_INVALID.sub("", str(exc)) or type(exc).__name__).split())[:300]


def _add_entries(feed: ParsedFeed, url: str, entries: Any) -> None:
    """Keep entries with an absolute http(s) link, once each; count the rest as skipped
    and, of those, the ones whose link was refused as rejected."""
    seen: set[str] = set()
    for entry in entries:
        if entry.link:
            entry.link, reason = check_link(entry.link, url)
            if reason:
                feed.skipped += 1
                feed.rejected_links += 1
                if len(feed.rejected_examples) < MAX_REJECTED_EXAMPLES:
                    feed.rejected_examples.append(reason)
                continue
        elif (entry.guid or "").strip().startswith(("http://", "https://")):
            entry.link = check_link(entry.guid, url)[0]     # some feeds put the permalink only in the id
        if not entry.link or entry.link in seen:
            feed.skipped += 1
            continue
        seen.add(entry.link)
        feed.entries.append(entry)


def _iso(value: Any) -> Optional[datetime]:
    """An RFC 3339 date in UTC, as feedparser's dates are (offsets stored as given
    sort wrongly as text; year 9999 with a negative offset overflows)."""
    try:
        when = datetime.fromisoformat(str(value))
        return when.astimezone(timezone.utc) if when.tzinfo else when.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        return None


def _parse_json_feed(content: bytes, url: str, max_entries: int) -> ParsedFeed:
    """JSON Feed 1.0/1.1 (https://jsonfeed.org/version/1.1).  Values of the wrong type
    count as absent."""
    try:
        doc = json.loads(content.decode("utf-8-sig", errors="replace"))
    except (ValueError, RecursionError) as exc:     # RecursionError: arrays nested thousands deep
        raise FeedParseError(url, f"not a feed: invalid JSON ({_warning(exc)})") from None
    if not isinstance(doc, dict) or not str(doc.get("version", "")).startswith("https://jsonfeed.org/version/"):
        raise FeedParseError(url, "not a feed: JSON without a jsonfeed.org version")
    items = doc.get("items") if isinstance(doc.get("items"), list) else []
    feed = ParsedFeed(title=_line(doc.get("title")),
                      site_url=check_link(_str(doc.get("home_page_url")) or "", url)[0] or None,
                      entries_over_cap=max(0, len(items) - max_entries))

    def author(item: dict[str, Any]) -> Optional[str]:
        authors = item.get("authors") if isinstance(item.get("authors"), list) else [item.get("author")]
        return _line(", ".join(n for a in authors if isinstance(a, dict) and (n := _str(a.get("name")))))

    _add_entries(feed, url, (
        ParsedEntry(
            link=_str(item.get("url")) or _str(item.get("external_url")) or "",
            guid=_id(item.get("id")),
            title=_line(item.get("title")),
            summary=_str(item.get("summary")),
            content=_str(item.get("content_html")) or _str(item.get("content_text")),
            author=author(item),
            published_at=_iso(_str(item.get("date_published")) or _str(item.get("date_modified")) or ""),
        )
        for item in (i if isinstance(i, dict) else {} for i in items[:max_entries])   # a non-object: skipped
    ))
    return feed
