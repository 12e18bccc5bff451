"""Sitemaps as a second kind of source: ``<urlset>`` documents (plain, with
``<lastmod>``, or with Google News ``news:`` entries) become the same
:class:`~worker.feeds.ParsedFeed` values as feeds; a ``<sitemapindex>`` gives the
child sitemaps to fetch next (``ParsedFeed.sitemaps``, newest first).

Sitemaps are untrusted input, as feeds are.  lxml reads them with entity substitution,
DTD loading and network access off: entity references stay literal (``&name;``),
nothing external is ever read, and libxml2's amplification guard stops a bomb as a
syntax error.  gzip files (``.xml.gz``, sent without Content-Encoding) are
decompressed under a cap, ``<loc>`` links other than http(s) are refused and counted,
and at most *max_entries* are kept, newest first."""

from __future__ import annotations

import heapq
import time
import zlib
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Iterator, Optional

import httpx
from lxml import etree

from . import http
from .errors import FeedParseError, FetchError
# The feed module's own cleaning and link rules, so sitemap entries are held to the
# same standard as feed entries.
from .feeds import (MAX_REJECTED_EXAMPLES, ParsedEntry, ParsedFeed, _iso, _line, _str, _warning, check_link,
                    parse_feed)
from .settings import Settings

SITEMAP_NAMESPACES = frozenset({
    "http://www.sitemaps.org/schemas/sitemap/0.9",
    "https://www.sitemaps.org/schemas/sitemap/0.9",     # wrong but common
    "http://www.google.com/schemas/sitemap/0.84",       # the pre-sitemaps.org namespace
    "http://www.google.com/schemas/sitemap/0.9",
    "",                                                 # no namespace: <urlset> is still unambiguous
})
GZIP_MAGIC = b"\x1f\x8b"
MAX_UNCOMPRESSED_BYTES = 50 * 1024 * 1024    # the protocol's limit for one sitemap
MAX_CHILD_SITEMAPS = 20                       # of an index, the newest kept in ParsedFeed.sitemaps
FOLLOW_CHILDREN = 3                           # of those, fetched per poll by expand_index (politeness)
SITEMAP_ACCEPT = "application/xml, text/xml;q=0.9, application/x-gzip;q=0.8, */*;q=0.5"

# recover=False: a bad byte ends the read (what came before is kept) instead of
# libxml2 guessing, which could turn "a&b" in a <loc> into another URL.
_XML_OPTIONS: dict[str, Any] = dict(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                                    huge_tree=False, remove_comments=True, remove_pis=True, recover=False)
_CHUNK = 64 * 1024      # bytes fed to the parser at a time


def gunzip(data: bytes, url: str, max_bytes: int = MAX_UNCOMPRESSED_BYTES) -> bytes:
    """A gzip body decompressed, refused past *max_bytes* (a bomb) or when corrupt."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, max_bytes + 1)     # never more than the cap plus one byte in memory
    except zlib.error as exc:
        raise FeedParseError(url, f"not a feed: corrupt gzip body ({exc})") from None
    if len(out) > max_bytes:
        raise FeedParseError(url, f"not a feed: gzip body decompresses to more than {max_bytes} bytes "
                                  "(likely a decompression bomb)")
    if not d.eof:
        raise FeedParseError(url, "not a feed: truncated gzip body")
    return out


def _trim(content: bytes) -> bytes:
    """Without a UTF-8 BOM and blank lines before the XML declaration: generated
    sitemaps often start with them, and libxml2 refuses both in front of ``<?xml``."""
    return content.lstrip(b"\xef\xbb\xbf \t\r\n")


def _events(content: bytes, events: tuple[str, ...], tag: Optional[str] = None,
            problems: Optional[list[str]] = None) -> Iterator[Any]:
    """The elements of *content* as lxml reports them, fed to a pull parser in pieces.
    A syntax error ends the stream after the elements read before it (libxml2 2.14 reports
    an entity bomb before ``iterparse`` hands over anything) and is noted in *problems*,
    or raised when there is no list to note it in."""
    parser = etree.XMLPullParser(events=events, tag=tag, **_XML_OPTIONS)
    error: Optional[etree.LxmlError] = None
    try:
        for start in range(0, len(content), _CHUNK):
            parser.feed(content[start:start + _CHUNK])
            yield from (element for _, element in parser.read_events())
        parser.close()
    except etree.LxmlError as exc:     # XMLSyntaxError mostly; never a crash on hostile bytes
        error = exc
    yield from (element for _, element in parser.read_events())     # read before the end (or the error)
    if error is not None:
        if problems is None:
            raise error
        problems.append(_warning(error))


def root_name(content: bytes) -> Optional[tuple[str, str]]:
    """(namespace, local name) of the root element, parsing no further than its start
    tag; None when the bytes are not well-formed up to there (HTML, loose RSS)."""
    try:
        for element in _events(_trim(content), ("start",)):
            name = etree.QName(element)
            return name.namespace or "", name.localname
    except Exception:  # noqa: BLE001 - any failure here only means "not a sitemap"
        return None
    return None


def is_sitemap(content: bytes) -> bool:
    root = root_name(content)
    return root is not None and root[1] in ("urlset", "sitemapindex") and root[0] in SITEMAP_NAMESPACES


def _children(element: Any) -> dict[str, Any]:
    """Child elements by local name (the first of each): sitemaps mix namespaces freely."""
    out: dict[str, Any] = {}
    for child in element:
        if isinstance(child.tag, str):      # not an entity reference
            out.setdefault(etree.QName(child).localname, child)
    return out


def _text(element: Any) -> str:
    # itertext keeps an unresolved entity reference as its literal "&name;".
    return "".join(element.itertext()).strip() if element is not None else ""


def _date(value: str) -> Optional[datetime]:
    """A W3C datetime (the protocol's format) in UTC; RFC 822 as some news sitemaps send."""
    if not value:
        return None
    when = _iso(value)
    if when is None:
        try:
            when = _iso(parsedate_to_datetime(value).isoformat())
        except (TypeError, ValueError, IndexError):
            return None
    return when


def _items(content: bytes, tag: str, problems: list[str]) -> Iterator[dict[str, Any]]:
    """Each *tag* element's children by local name, streamed: memory stays flat however
    many URLs.  A syntax error ends the stream and is noted in *problems*."""
    for element in _events(content, ("end",), tag, problems):
        yield _children(element)
        element.clear()
        parent = element.getparent()
        while parent is not None and element.getprevious() is not None:
            del parent[0]


class _Newest:
    """The *cap* newest items seen (undated ones last, then in document order), and
    how many were left out."""

    def __init__(self, cap: int) -> None:
        self.cap, self.over, self._seq = cap, 0, 0
        self._heap: list[tuple[tuple[float, int], Any]] = []

    def add(self, when: Optional[datetime], item: Any) -> None:
        self._seq += 1
        key = (when.timestamp() if when else float("-inf"), -self._seq)
        if len(self._heap) < self.cap:
            heapq.heappush(self._heap, (key, item))
            return
        self.over += 1
        if self._heap and key > self._heap[0][0]:
            heapq.heapreplace(self._heap, (key, item))

    def items(self) -> list[Any]:
        return [item for _, item in sorted(self._heap, key=lambda pair: pair[0], reverse=True)]


def _refuse(feed: ParsedFeed, reason: str) -> None:
    feed.skipped += 1
    feed.rejected_links += 1
    if len(feed.rejected_examples) < MAX_REJECTED_EXAMPLES:
        feed.rejected_examples.append(reason)


def parse_sitemap(content: bytes, url: str, *, max_entries: int = 500) -> ParsedFeed:
    """Parse a sitemap (gzip or not; the body, never a URL).  Raises ``FeedParseError``
    when it is not one or nothing could be read."""
    if content[:2] == GZIP_MAGIC:
        content = gunzip(content, url)
    content = _trim(content)
    root = root_name(content)
    if root is None or root[1] not in ("urlset", "sitemapindex") or root[0] not in SITEMAP_NAMESPACES:
        raise FeedParseError(url, "not a feed: no <urlset> or <sitemapindex> in the sitemaps namespace")
    namespace, kind = root
    item = "url" if kind == "urlset" else "sitemap"
    tag = f"{{{namespace}}}{item}" if namespace else item
    feed = ParsedFeed(site_url=check_link("/", url)[0] or None)
    problems: list[str] = []
    newest = _Newest(max_entries if kind == "urlset" else MAX_CHILD_SITEMAPS)
    seen_any = False
    for fields in _items(content, tag, problems):
        seen_any = True
        loc = _str(_text(fields.get("loc"))) or ""
        if not loc:
            feed.skipped += 1
            continue
        link, reason = check_link(loc, url)
        if reason:
            _refuse(feed, reason)
            continue
        lastmod = _date(_text(fields.get("lastmod")))
        if kind == "sitemapindex":
            newest.add(lastmod, link)
            continue
        news = _children(fields["news"]) if fields.get("news") is not None else {}
        publication = _children(news["publication"]) if news.get("publication") is not None else {}
        if feed.title is None and publication.get("name") is not None:
            feed.title = _line(_text(publication["name"]))
        when = _date(_text(news.get("publication_date"))) or lastmod
        newest.add(when, ParsedEntry(link=link, guid=link, title=_line(_text(news.get("title"))), published_at=when))
    if problems and not seen_any:
        raise FeedParseError(url, f"not a feed: malformed sitemap ({problems[0]})")
    notes = [f"sitemap not well-formed, read up to the error: {problems[0]}"] if problems else []
    if kind == "sitemapindex":
        feed.sitemaps = list(dict.fromkeys(newest.items()))     # once each, newest first
        if newest.over:
            notes.append(f"sitemap index lists {newest.over + len(feed.sitemaps)} sitemaps; "
                         f"the {len(feed.sitemaps)} newest kept")
    else:
        feed.entries_over_cap = newest.over
        seen: set[str] = set()
        for entry in newest.items():
            if entry.link in seen:
                feed.skipped += 1
                continue
            seen.add(entry.link)
            feed.entries.append(entry)
    feed.warning = "; ".join(notes) or None
    return feed


def expand_index(client: httpx.Client, index: ParsedFeed, settings: Settings, *,
                 follow: int = FOLLOW_CHILDREN) -> ParsedFeed:
    """The entries of a sitemap index: its *follow* newest child sitemaps fetched (through
    :func:`http.get`, with the settings' caps, within one request deadline in all) and
    merged, newest first, capped at ``settings.max_entries_per_feed``.  Nested indexes
    are not followed.  Raises the first child's ``FetchError`` when no child could be read."""
    merged = ParsedFeed(title=index.title, site_url=index.site_url, skipped=index.skipped,
                        rejected_links=index.rejected_links, rejected_examples=list(index.rejected_examples))
    notes = [index.warning] if index.warning else []
    errors: list[FetchError] = []
    newest = _Newest(settings.max_entries_per_feed)
    started = time.monotonic()
    read = 0
    for child_url in index.sitemaps[:follow]:
        left = settings.request_deadline - (time.monotonic() - started)
        if left <= 0:
            notes.append(f"stopped after {read} child sitemaps: the {settings.request_deadline:g} s deadline")
            break
        try:
            result = http.get(client, child_url, max_bytes=settings.max_feed_bytes,
                              allowed_private_hosts=settings.allowed_private_hosts, accept=SITEMAP_ACCEPT,
                              deadline=left)
            child = parse_feed(result.content, result.final_url, content_type=result.content_type,
                               max_entries=settings.max_entries_per_feed)
        except FetchError as exc:
            errors.append(exc)
            notes.append(_warning(exc))
            continue
        read += 1
        merged.title = merged.title or child.title
        merged.skipped += child.skipped
        merged.rejected_links += child.rejected_links
        merged.entries_over_cap += child.entries_over_cap
        merged.rejected_examples += child.rejected_examples[:MAX_REJECTED_EXAMPLES - len(merged.rejected_examples)]
        if child.sitemaps:
            notes.append(f"{child_url}: a nested sitemap index, not followed")
        if child.warning:
            notes.append(f"{child_url}: {child.warning}")
        for entry in child.entries:
            newest.add(entry.published_at, entry)
    if errors and not read:
        raise errors[0]
    merged.entries_over_cap += newest.over
    seen: set[str] = set()
    for entry in newest.items():
        if entry.link in seen:          # the same URL in two child sitemaps
            merged.skipped += 1
            continue
        seen.add(entry.link)
        merged.entries.append(entry)
    merged.warning = "; ".join(notes)[:1000] or None
    return merged
