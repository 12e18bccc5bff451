"""Find the feed behind a URL someone pastes: the URL itself when it already serves a
feed (RSS, Atom, RDF, JSON Feed or a sitemap), else the feeds an HTML page advertises
with ``<link rel="alternate">`` (or ``rel="feed"``), else a few common feed paths,
each checked to parse.  Every fetch goes through :func:`worker.http.get`."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urlsplit

import httpx
import lxml.html
from lxml import etree

from . import http, sitemaps
from .errors import BlockedURL, FeedParseError, FetchError, TemporaryFetchError
from .feeds import _line, check_link, parse_feed
from .settings import Settings

# type -> (kind, rank); lower ranks are offered first.  application/json is last: it is
# also what WordPress's REST API advertises as an "alternate" on every page.
FEED_TYPES: dict[str, tuple[str, int]] = {
    "application/rss+xml": ("rss", 0),
    "application/atom+xml": ("atom", 0),
    "application/rdf+xml": ("rdf", 1),
    "application/feed+json": ("json", 1),
    "application/json": ("json", 3),
}
UNTYPED_FEED = ("feed", 2)       # rel="feed" without a type
_COMMENTS = re.compile(r"\bcomments?\b", re.I)     # "Comments Feed", /comments/feed/; not "Commentary"
COMMON_PATHS = ("/feed", "/rss", "/rss.xml", "/atom.xml", "/feed.xml", "/index.xml")
MAX_LINK_ELEMENTS = 1000         # <link>s looked at on one page: hostile pages can hold millions
MAX_CANDIDATES = 20
MAX_VERIFY = 3                   # advertised feeds fetched by resolve_feed_url before giving up
DISCOVER_ACCEPT = ("text/html, application/xhtml+xml, application/rss+xml, application/atom+xml, "
                   "application/feed+json, application/xml;q=0.9, */*;q=0.8")


class NoFeedFound(FeedParseError):
    """A URL that neither is a feed nor leads to one; the message says what was tried."""

    hint = "give the feed's own URL (RSS, Atom, JSON Feed or news sitemap), e.g. from the site's RSS link"


@dataclass(frozen=True)
class Discovered:
    url: str
    title: Optional[str] = None
    kind: str = "feed"           # rss, atom, rdf, json, sitemap, or feed (not known which)
    verified: bool = False       # fetched and parsed as a feed during discovery


def _get(client: httpx.Client, url: str, settings: Settings) -> http.FetchResult:
    return http.get(client, url, max_bytes=settings.max_feed_bytes,
                    allowed_private_hosts=settings.allowed_private_hosts, accept=DISCOVER_ACCEPT,
                    deadline=settings.request_deadline)


def _as_feed(result: http.FetchResult, url: str) -> Discovered:
    """*result* as a verified feed, or ``FeedParseError``."""
    parsed = parse_feed(result.content, result.final_url, content_type=result.content_type, max_entries=1)
    body = result.content
    if body[:2] == sitemaps.GZIP_MAGIC:       # parse_feed read it, so it decompresses
        body = sitemaps.gunzip(body, url)
    if parsed.sitemaps or sitemaps.is_sitemap(body):
        kind = "sitemap"
    elif body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        kind = "json"
    else:
        kind = "feed"
    # A permanent redirect is where the feed lives now; a temporary one is not.
    return Discovered(result.moved_permanently_to or url, parsed.title, kind, True)


def _why(exc: FetchError) -> str:
    """The gist of a failure, for a one-line list of what was tried."""
    reason = exc.reason.split(": ", 1)[0] if isinstance(exc, FeedParseError) else exc.reason
    return reason if len(reason) <= 80 else reason[:79] + "…"


def _html(content: bytes) -> Any:
    """The page as an lxml tree, or None.  libxml2's HTML parser neither loads DTDs nor
    expands declared entities; network access stays off."""
    parser = lxml.html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True, huge_tree=False)
    try:
        return lxml.html.document_fromstring(content, parser=parser)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError, TypeError):
        return None


def advertised_feeds(content: bytes, page_url: str,
                     allowed_private_hosts: list[str] | tuple[str, ...] = ()) -> list[Discovered]:
    """The feeds an HTML page links to, best first: RSS and Atom, then RDF and JSON Feed,
    then untyped rel="feed", then application/json; comments feeds after all of those.
    Hrefs are resolved against ``<base href>`` or *page_url*; only http(s) is kept."""
    root = _html(content)
    if root is None:
        return []
    base = page_url
    for element in itertools.islice(root.iter("base"), 1):
        base = check_link(element.get("href") or "", page_url)[0] or page_url
    ranked: dict[str, tuple[tuple[bool, int, int], Discovered]] = {}
    for order, link in enumerate(itertools.islice(root.iter("link"), MAX_LINK_ELEMENTS)):
        rel = set((link.get("rel") or "").lower().split())
        mime = (link.get("type") or "").split(";")[0].strip().lower()
        if mime in FEED_TYPES and rel & {"alternate", "feed"}:
            kind, rank = FEED_TYPES[mime]
        elif "feed" in rel and not mime:
            kind, rank = UNTYPED_FEED
        else:
            continue
        href = (link.get("href") or "").strip()
        if not href or href.startswith("#"):    # would resolve to this page, which is not a feed
            continue
        url, refused = check_link(href, base)
        if refused or url == page_url:
            continue
        try:
            # Scheme, host and port, and literal private addresses; names are checked on fetch.
            http.check_url(url, allowed_private_hosts, resolve=False)
        except BlockedURL:
            continue
        title = _line(link.get("title"))
        comments = bool(_COMMENTS.search(f"{title or ''} {urlsplit(url).path}"))
        key = (comments, rank, order)
        if url not in ranked or key < ranked[url][0]:
            ranked[url] = (key, Discovered(url, title, kind))
    return [found for _, found in sorted(ranked.values(), key=lambda pair: pair[0])][:MAX_CANDIDATES]


def _probe(client: httpx.Client, page_url: str, settings: Settings) -> tuple[Optional[Discovered], list[str]]:
    """The first of the common feed paths on the page's site that serves a feed, and
    "path (why not)" for each tried before it.  A temporary failure (timeout, 429, 5xx)
    ends the probing: the site is busy or down, and more requests would not help."""
    parts = urlsplit(page_url)
    tried: list[str] = []
    for path in COMMON_PATHS:
        candidate = f"{parts.scheme}://{parts.netloc}{path}"
        try:
            return _as_feed(_get(client, candidate, settings), candidate), tried
        except FetchError as exc:
            tried.append(f"{path} ({_why(exc)})")
            if isinstance(exc, TemporaryFetchError):
                break
    return None, tried


def discover_feeds(client: httpx.Client, url: str, settings: Settings) -> list[Discovered]:
    """The feeds at or behind *url*, best first (never empty).  Raises a ``FetchError``
    when *url* itself cannot be fetched, ``NoFeedFound`` when nothing was found."""
    result = _get(client, url, settings)
    try:
        return [_as_feed(result, url)]
    except FeedParseError as exc:
        not_a_feed = _why(exc)
    found = advertised_feeds(result.content, result.final_url, settings.allowed_private_hosts)
    if found:
        return found
    probed, tried = _probe(client, result.final_url, settings)
    if probed is not None:
        return [probed]
    where = f" (redirected to {result.final_url})" if result.final_url != url else ""
    ctype = result.content_type.split(";")[0].strip() or "no Content-Type"
    if "html" in ctype:
        page = f"the page{where} ({ctype}) has no <link rel=\"alternate\"> to an RSS, Atom or JSON feed"
    else:
        page = f"the body{where} ({ctype}) is not a feed ({not_a_feed}) nor a page linking one"
    raise NoFeedFound(url, f"no feed found: {page}; common paths tried: {', '.join(tried) or 'none'}")


def resolve_feed_url(client: httpx.Client, url: str, settings: Settings) -> str:
    """The one feed URL to subscribe to for *url*: the first discovered feed that is
    fetched and parses as a feed (up to ``MAX_VERIFY`` are tried)."""
    found = discover_feeds(client, url, settings)
    tried: list[str] = []
    for candidate in found[:MAX_VERIFY]:
        if candidate.verified:
            return candidate.url
        try:
            return _as_feed(_get(client, candidate.url, settings), candidate.url).url
        except FetchError as exc:
            tried.append(f"{candidate.url} ({_why(exc)})")
    raise NoFeedFound(url, f"no working feed: the page links {len(found)} feeds, and of the first "
                           f"{len(tried)} none is one: {', '.join(tried)}")
