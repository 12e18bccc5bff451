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

from .authors import author_from_page
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
    """Valid, NFC-normalised text without control characters or runs of blank lines:
    encodable as strict UTF-8 (PostgreSQL refuses NUL and lone surrogates), UTF-8
    mojibake repaired, invisible junk removed, lines stripped, spaces collapsed.
    About 10 µs a KB on clean text (the Zyte pages' extracted texts)."""
    # Patterns are given as strings (the re module caches them compiled) so that this
    # function's changes stay inside it.  A pass over 5 KB costs ~13 µs.
    # Junk: C0 and C1 controls but \t \n \r (\t becomes a space, \r a line break,
    # below); lone surrogates and the noncharacters U+FFFE/U+FFFF; invisible characters
    # that only get in the way of search and dedupe: soft hyphen, zero-width space, word
    # joiner, BOM, and the bidi embedding/override/isolate controls (an unbalanced one
    # reorders whatever is displayed after it).  Kept: ZWJ/ZWNJ (emoji, Indic and
    # Persian scripts need them) and the LRM/RLM marks.
    junk = ("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b\u202a-\u202e\u2060\u2066-\u2069"
            "\ufeff\ufffe\uffff\ud800-\udfff]")
    ascii_only = text.isascii()     # most English text: then only the controls can apply
    c1 = False
    if re.search(junk, text):
        # C1 controls stay for now: they are cp1252 bytes read as Latin-1, for ftfy.
        c1 = not ascii_only and re.search("[\x80-\x9f]", text) is not None
        text = re.sub(junk.replace("\x7f-\x9f", "\x7f"), "", text)     # all the junk but C1
    if not ascii_only:
        text = unicodedata.normalize("NFC", text)
        # Mis-decoded UTF-8 ("DÃ¼sseldorf", "â€™"): a lead byte read as cp1252/Latin-1
        # then a continuation byte.  This test costs ~3 µs a KB, ftfy ~270 µs a KB, so
        # ftfy runs only here; it leaves alone text it cannot improve.
        if c1 or re.search("[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192"
                           "\u02c6\u02dc\u2013\u2014\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030"
                           "\u2039\u203a\u20ac\u2122]", text):
            import ftfy

            text = ftfy.fix_encoding(ftfy.fixes.fix_c1_controls(text))
            text = unicodedata.normalize("NFC", re.sub(junk, "", text))     # "â€‹" was a zero-width space
    # Tabs and no-break spaces become spaces, runs of spaces one: str.replace and the
    # guard are C-speed, where a regex over every space cost 110 µs per 5 KB.
    text = text.replace("\t", " ").replace("\u00a0", " ")
    if "  " in text:
        text = re.sub(" {2,}", " ", text)
    text = _BLANKS.sub("\n\n", "\n".join(line.strip() for line in text.splitlines())).strip()
    return text[:max_chars].rstrip() if max_chars else text     # rstrip: cleaning it again changes nothing


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
    licence, and the author when the tags name none (see :func:`authors.author_from_page`).
    Reads the tree without changing it."""
    meta = tmeta.examine_meta(tree)
    if meta.author and " " not in meta.author:      # a user name, not a person's name
        meta.author = None
    try:
        meta = tmeta.extract_meta_json(tree, meta)
    except Exception:  # noqa: BLE001 - trafilatura's JSON-LD reader trips over odd data
        pass
    meta.title = meta.title or tmeta.extract_title(tree)
    meta.url = meta.url or tmeta.extract_url(tree, url)
    meta.date = find_date(tree, url=meta.url, **_DATE_OPTIONS)
    meta.sitename = meta.sitename or tmeta.extract_sitename(tree)
    return meta


def extract_page(html: Any, url: str) -> Optional[Extracted]:
    """Main text and metadata of an article page (bytes, text or a parsed lxml tree),
    or ``None`` when nothing usable was found."""
    tree = html if isinstance(html, lxml.html.HtmlElement) else load_html(html)
    if tree is None:
        return None
    meta = _metadata(tree, url)
    doc = trafilatura.bare_extraction(tree, url=url, **_EXTRACT_OPTIONS)    # works on its own copy
    if doc is None or len((doc.text or "").split()) < MIN_WORDS:
        return None
    meta.author = meta.author or author_from_page(tree)     # prunes the tree: last
    meta.clean_and_trim()
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
    """Plain text of an HTML fragment (feed summaries and content), paragraphs kept,
    character references decoded."""
    from html import unescape

    if not html or not html.strip():
        return ""
    # lxml refuses NUL, other C0 controls, lone surrogates and U+FFFE/U+FFFF, which
    # would send the whole fragment to the crude fallback below; they are junk anyway.
    html = re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]", "", html)
    if "<" not in html:
        return unescape(html) if "&" in html else html
    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div")
    except (lxml.etree.LxmlError, ValueError):
        return unescape(re.sub(r"<[^>]+>", " ", html))
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
