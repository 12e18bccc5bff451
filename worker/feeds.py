"""Parse feed bytes (RSS, Atom, RDF, JSON Feed) into plain values with feedparser."""

from __future__ import annotations

import calendar
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
    seen: set[str] = set()
    for entry in parsed.entries[:max_entries]:
        link = (entry.get("link") or "").strip()
        if not link.startswith(("http://", "https://")):
            # Some feeds put the permalink only in the id.
            guid = (entry.get("id") or "").strip()
            link = guid if guid.startswith(("http://", "https://")) else ""
        if not link or link in seen:
            feed.skipped += 1
            continue
        seen.add(link)
        feed.entries.append(
            ParsedEntry(
                link=link,
                guid=entry.get("id") or None,
                title=entry.get("title") or None,
                summary=entry.get("summary") or None,
                content=_content(entry),
                author=entry.get("author") or None,
                published_at=_when(entry),
            )
        )
    return feed
