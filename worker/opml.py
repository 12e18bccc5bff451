"""OPML import and export.  Parsed with defusedxml: entity expansion and external
entities in an untrusted OPML file stay inert."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional
from xml.etree.ElementTree import Element, SubElement, tostring

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from .errors import ConfigError


@dataclass
class OPMLFeed:
    url: str
    name: Optional[str] = None
    site_url: Optional[str] = None
    group: Optional[str] = None


def parse_opml(data: bytes, source: str = "OPML") -> list[OPMLFeed]:
    """Feeds in an OPML document; folders (outlines without xmlUrl) become groups."""
    try:
        root = SafeET.fromstring(data)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        raise ConfigError(f"{source}: not a valid OPML file: {exc}") from None
    body = root.find("body")
    if root.tag != "opml" or body is None:
        raise ConfigError(f"{source}: not an OPML file (no <opml><body>)")
    feeds: list[OPMLFeed] = []

    def walk(node, group: Optional[str]) -> None:  # noqa: ANN001
        for outline in node.findall("outline"):
            url = (outline.get("xmlUrl") or "").strip()
            label = outline.get("title") or outline.get("text")
            if url:
                feeds.append(OPMLFeed(url, label, outline.get("htmlUrl"), group))
            else:
                walk(outline, label or group)

    walk(body, None)
    return feeds


def build_opml(feeds: Iterable[OPMLFeed], title: str = "newsworker feeds") -> bytes:
    root = Element("opml", version="2.0")
    SubElement(SubElement(root, "head"), "title").text = title
    body = SubElement(root, "body")
    groups: dict[str, Element] = {}
    for f in feeds:
        parent = body
        if f.group:
            if f.group not in groups:
                groups[f.group] = SubElement(body, "outline", text=f.group, title=f.group)
            parent = groups[f.group]
        attrs = {"type": "rss", "text": f.name or f.url, "title": f.name or f.url, "xmlUrl": f.url}
        if f.site_url:
            attrs["htmlUrl"] = f.site_url
        SubElement(parent, "outline", attrs)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="utf-8")
