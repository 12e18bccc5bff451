"""OPML import and export.  Parsed with defusedxml: entity expansion and external
entities in an untrusted OPML file stay inert.  Nested folders are groups joined with
"/" (``Feed.group_name``), and are written back as nested folders."""

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


GROUP_SEPARATOR = "/"      # nested folders Defence > Turkey are the group "Defence/Turkey"


def _attr(outline: Element, name: str) -> Optional[str]:
    """An attribute, its name matched case-insensitively (exporters write xmlUrl, xmlurl
    and XMLURL), stripped; None when absent or blank."""
    wanted = name.lower()
    for key, value in outline.attrib.items():
        if key.lower() == wanted:
            return value.strip() or None
    return None


def parse_opml(data: bytes, source: str = "OPML") -> list[OPMLFeed]:
    """Feeds in an OPML document, in document order; folders (outlines without xmlUrl)
    become groups, nested ones joined with "/" ("Defence/Turkey")."""
    try:
        root = SafeET.fromstring(data)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        raise ConfigError(f"{source}: not a valid OPML file: {exc}") from None
    body = root.find("body")
    if root.tag != "opml" or body is None:
        raise ConfigError(f"{source}: not an OPML file (no <opml><body>)")
    feeds: list[OPMLFeed] = []

    def walk(node: Element, group: Optional[str]) -> None:
        for outline in node.findall("outline"):
            url = _attr(outline, "xmlUrl")
            label = _attr(outline, "title") or _attr(outline, "text")
            if url:
                feeds.append(OPMLFeed(url, label, _attr(outline, "htmlUrl"), group))
            else:       # a folder; an unnamed one adds no level
                name = GROUP_SEPARATOR.join(p.strip() for p in (label or "").split(GROUP_SEPARATOR) if p.strip())
                walk(outline, f"{group}{GROUP_SEPARATOR}{name}" if group and name else name or group)

    walk(body, None)
    return feeds


def build_opml(feeds: Iterable[OPMLFeed], title: str = "newsworker feeds") -> bytes:
    """OPML 2.0 with one folder per group level, folders and feeds in order of first
    appearance: parsing the result gives the feeds back in the order a re-export
    writes them, so export -> import -> export is a fixed point."""
    root = Element("opml", version="2.0")
    SubElement(SubElement(root, "head"), "title").text = title
    body = SubElement(root, "body")
    folders: dict[tuple[str, ...], Element] = {(): body}

    def folder(path: tuple[str, ...]) -> Element:
        if path not in folders:
            folders[path] = SubElement(folder(path[:-1]), "outline", text=path[-1], title=path[-1])
        return folders[path]

    for f in feeds:
        path = tuple(p.strip() for p in (f.group or "").split(GROUP_SEPARATOR) if p.strip())
        attrs = {"type": "rss", "text": f.name or f.url, "title": f.name or f.url, "xmlUrl": f.url}
        if f.site_url:
            attrs["htmlUrl"] = f.site_url
        SubElement(folder(path), "outline", attrs)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(root, encoding="utf-8")
