"""Article text and metadata from a page (trafilatura), with the feed's own content
as the fallback, and the language of the result."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

import lxml.html
import trafilatura
from dateutil import parser as dateparser
from htmldate import find_date
from trafilatura import metadata as tmeta
from trafilatura.utils import load_html

from .urls import same_site

# Chosen by measurement on the 181 Zyte benchmark pages (bench/run.py): fast mode,
# favour_recall and a non-extensive date search give token F1 0.966 at 61 pages/s,
# against 0.948 at 54 pages/s for plain trafilatura.extract() (favor_precision: 0.947).
# Metadata comes from _metadata() below, not with_metadata=True: trafilatura's own
# pass also looks for categories, tags and licences, which we don't store (2 ms a page).
_EXTRACT_OPTIONS = dict(
    fast=True,
    favor_recall=True,
    include_comments=False,
    include_tables=True,
)
_DATE_OPTIONS = {"extensive_search": False, "original_date": True}

_BLOCK_TAGS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "tr", "section", "article"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n+")


MIN_WORDS = 8          # less is a navigation scrap, not an article


@dataclass
class Extracted:
    text: str
    title: Optional[str] = None
    author: Optional[str] = None
    published_at: Optional[datetime] = None
    canonical_url: Optional[str] = None
    site_name: Optional[str] = None
    description: Optional[str] = None


def clean_text(text: str, max_chars: int | None = None) -> str:
    """Valid, NFC-normalised text without control characters or runs of blank lines."""
    text = unicodedata.normalize("NFC", _CONTROL.sub("", text))
    text = _SPACES.sub(" ", text)
    text = _BLANKS.sub("\n\n", "\n".join(line.strip() for line in text.splitlines())).strip()
    return text[:max_chars] if max_chars else text


def parse_date(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    try:
        when = dateparser.parse(value)
    except (ValueError, OverflowError):
        return None
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def parse_html(content: bytes) -> Any:
    """The page parsed as trafilatura parses it, so it can be parsed ahead (in a fetch
    thread) and handed to :func:`extract_page` later."""
    return load_html(content)


def _metadata(tree: Any, url: str) -> Any:
    """The metadata fields we store, found as trafilatura's extract_metadata finds them
    (meta tags, then JSON-LD, then the page itself), leaving out categories, tags and
    licence.  Reads the tree without changing it."""
    meta = tmeta.examine_meta(tree)
    if meta.author and " " not in meta.author:      # a user name, not a person's name
        meta.author = None
    try:
        meta = tmeta.extract_meta_json(tree, meta)
    except Exception:  # noqa: BLE001 - trafilatura's JSON-LD reader trips over odd data
        pass
    meta.title = meta.title or tmeta.extract_title(tree)
    meta.author = meta.author or tmeta.extract_author(tree)
    meta.url = meta.url or tmeta.extract_url(tree, url)
    meta.date = find_date(tree, url=meta.url, **_DATE_OPTIONS)
    meta.sitename = meta.sitename or tmeta.extract_sitename(tree)
    meta.clean_and_trim()
    return meta


def extract_page(html: Any, url: str) -> Optional[Extracted]:
    """Main text and metadata of an article page (bytes, text or a parsed lxml tree),
    or ``None`` when nothing usable was found."""
    tree = html if isinstance(html, lxml.html.HtmlElement) else load_html(html)
    if tree is None:
        return None
    meta = _metadata(tree, url)
    doc = trafilatura.bare_extraction(tree, url=url, **_EXTRACT_OPTIONS)
    if doc is None or len((doc.text or "").split()) < MIN_WORDS:
        return None
    text = strip_headline(doc.text, meta.title)
    canonical = meta.url if meta.url and meta.url != url and same_site(meta.url, url) else None
    return Extracted(
        text=text,
        title=meta.title or None,
        author=meta.author or None,
        published_at=parse_date(meta.date),
        canonical_url=canonical,
        site_name=(meta.sitename or "").lstrip("@") or None,
        description=meta.description or None,
    )


def strip_headline(text: str, *titles: Optional[str]) -> str:
    """Drop a first line that repeats the headline: the title is stored on its own,
    and syndicated copies differ mostly in headlines."""
    first, _, rest = text.partition("\n")
    fold = " ".join(first.split()).casefold()
    if fold and any(t and " ".join(t.split()).casefold() == fold for t in titles):
        return rest.lstrip("\n")
    return text


def html_to_text(html: Optional[str]) -> str:
    """Plain text of an HTML fragment (feed summaries and content), paragraphs kept."""
    if not html or not html.strip():
        return ""
    if "<" not in html:
        return html
    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div")
    except (lxml.etree.ParserError, ValueError):
        return re.sub(r"<[^>]+>", " ", html)
    for bad in root.xpath("//script|//style"):
        bad.drop_tree()
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.lower() in _BLOCK_TAGS:
            el.tail = "\n\n" + (el.tail or "")
    return root.text_content()


_langid = None


def detect_language(text: str) -> Optional[str]:
    """ISO 639-1 code of the text's language (py3langid), or None for too little text."""
    global _langid
    sample = text[:600]     # enough for a confident guess; longer costs time, not accuracy
    if len(sample.strip()) < 20:
        return None
    if _langid is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    lang, prob = _langid.classify(sample)
    return lang if prob >= 0.5 else None
