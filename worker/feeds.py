"""Parse feed bytes (RSS, Atom, RDF with feedparser; JSON Feed, which the released
feedparser does not read, with the standard json module) into plain values."""

from __future__ import annotations

import calendar
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import feedparser

from .errors import FeedParseError

# feedparser resolves relative URIs and sanitises HTML by default; keep both on.


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
    skipped: int = 0                       # entries without a usable http(s) link
    warning: Optional[str] = None          # feedparser's bozo exception, when it still got entries


def _when(entry: Any) -> Optional[datetime]:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        st = entry.get(key)
        if st:
            try:
                return datetime.fromtimestamp(calendar.timegm(st), tz=timezone.utc)
            except (OverflowError, ValueError, TypeError):
                continue
    return None


def _content(entry: Any) -> Optional[str]:
    parts = [c.get("value") for c in entry.get("content") or [] if c.get("value")]
    return max(parts, key=len) if parts else None


def parse_feed(content: bytes, url: str, *, content_type: str = "", max_entries: int = 500) -> ParsedFeed:
    """Parse *content* (the response body, never a URL).  Raises ``FeedParseError``
    when the bytes are not a feed at all."""
    if content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return _parse_json_feed(content, url, max_entries)
    headers = {"content-location": url}
    if content_type:
        headers["content-type"] = content_type
    parsed = feedparser.parse(content, response_headers=headers)
    if not parsed.get("version") and not parsed.entries:
        reason = parsed.get("bozo_exception") or "no RSS, Atom or JSON Feed structure found"
        raise FeedParseError(url, f"not a feed: {reason}")
    feed = ParsedFeed(
        title=parsed.feed.get("title") or None,
        site_url=parsed.feed.get("link") or None,
        warning=str(parsed.get("bozo_exception")) if parsed.get("bozo") else None,
    )
    _add_entries(feed, (
        ParsedEntry(
            link=(entry.get("link") or "").strip(),
            guid=entry.get("id") or None,
            title=entry.get("title") or None,
            summary=entry.get("summary") or None,
            content=_content(entry),
            author=entry.get("author") or None,
            published_at=_when(entry),
        )
        for entry in parsed.entries[:max_entries]
    ))
    return feed


def _add_entries(feed: ParsedFeed, entries: Any) -> None:
    """Keep entries with an http(s) link, once each; count the rest as skipped."""
    seen: set[str] = set()
    for entry in entries:
        if not entry.link.startswith(("http://", "https://")):
            # Some feeds put the permalink only in the id.
            guid = (entry.guid or "").strip()
            entry.link = guid if guid.startswith(("http://", "https://")) else ""
        if not entry.link or entry.link in seen:
            feed.skipped += 1
            continue
        seen.add(entry.link)
        feed.entries.append(entry)


def _iso(value: Any) -> Optional[datetime]:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _parse_json_feed(content: bytes, url: str, max_entries: int) -> ParsedFeed:
    """JSON Feed 1.0/1.1 (https://jsonfeed.org/version/1.1)."""
    try:
        doc = json.loads(content.decode("utf-8-sig", errors="replace"))
    except ValueError as exc:
        raise FeedParseError(url, f"not a feed: invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or not str(doc.get("version", "")).startswith("https://jsonfeed.org/version/"):
        raise FeedParseError(url, "not a feed: JSON without a jsonfeed.org version")
    items = doc.get("items") if isinstance(doc.get("items"), list) else []
    feed = ParsedFeed(title=doc.get("title") or None, site_url=doc.get("home_page_url") or None)

    def author(item: dict[str, Any]) -> Optional[str]:
        authors = item.get("authors") or ([item["author"]] if isinstance(item.get("author"), dict) else [])
        names = [a.get("name") for a in authors if isinstance(a, dict) and a.get("name")]
        return ", ".join(names) or None

    _add_entries(feed, (
        ParsedEntry(
            link=str(item.get("url") or item.get("external_url") or "").strip(),
            guid=str(item["id"]) if item.get("id") is not None else None,
            title=item.get("title") or None,
            summary=item.get("summary") or None,
            content=item.get("content_html") or item.get("content_text") or None,
            author=author(item),
            published_at=_iso(item.get("date_published") or item.get("date_modified") or ""),
        )
        for item in items[:max_entries] if isinstance(item, dict)
    ))
    return feed
