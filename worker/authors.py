"""An article's author from the page itself, when its meta tags and JSON-LD name none:
trafilatura's ``extract_author``, found in one pass over the page.

trafilatura prunes comment blocks, sidebars, ``<time>`` and ``<figure>`` from a copy
of the page, then tries three XPath expressions in turn.  Each is a walk of the whole
tree testing a dozen attributes, through Python callbacks for its ``re:test`` calls:
about 11 ms on a news page without a byline (41% of the Zyte benchmark's pages), more
than anything else in the pipeline outside extraction.  Here one walk in Python tests
the same conditions with the same regular expressions (lxml's ``re:test`` is Python's
``re.search``), trafilatura's own ``delete_element`` prunes the tree in place, and its
``extract_metainfo`` picks the author from the three candidate lists: 3.3 ms.

The expressions are trafilatura's as of 2.3; when the installed trafilatura's differ
(:data:`MATCHES_TRAFILATURA` is false) its own XPaths are used, on the tree in place.
``tests/test_authors.py`` compares both on crafted pages and on all 181 benchmark pages."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Callable, Optional

from trafilatura import metadata as tmeta
from trafilatura.xml import delete_element

# sha256 of trafilatura's AUTHOR_XPATHS + AUTHOR_DISCARD_XPATHS sources this module mirrors.
_MIRRORED = "bd5f280624916a83"
MATCHES_TRAFILATURA = hashlib.sha256(
    "\n".join(x.path for x in tmeta.AUTHOR_XPATHS + tmeta.AUTHOR_DISCARD_XPATHS).encode()).hexdigest()[:16] == _MIRRORED

# AUTHOR_DISCARD_XPATHS: .//*[self::a|div|section|span][...] then //time|//figure
_DISCARD_TAGS = frozenset(("a", "div", "section", "span"))
_DISCARD_ID = re.compile("^comments|comment-?list|ProductReviews")
_DISCARD_CLASS = re.compile("^[Cc]omments|commentlist|comments-list|sidebar|is-hidden|quote|embedly-instagram|"
                            "article-(?:share|support)|print|category|meta-date|meta-reviewer")
# AUTHOR_XPATHS[0]: specific
_TAGS_0 = frozenset(("a", "address", "div", "link", "p", "span", "strong"))
_CLASS_0 = re.compile("author-?name|AuthorName|authorName")
# AUTHOR_XPATHS[1]: almost generic
_TAGS_1 = frozenset(("a", "div", "h3", "h4", "p", "span"))
_ID_1 = re.compile("author|zuozhe|bianji|xiaobian")
_CLASS_1 = re.compile("author|channel-name|zuozhe|bianji|xiaobian|submitted-by|posted-by|journalist-name")
# AUTHOR_XPATHS[2]: last resort, any element
_ID_2 = re.compile("[Aa]uthor")
_CLASS_2 = re.compile("[Aa]uthor|screenname|writer|[Bb]yline")


def author_from_page(tree: Any) -> Optional[str]:
    """The author as trafilatura's ``extract_author(tree)`` finds it, normalised.  Prunes
    *tree* in place (no copy of the page), so call it when nothing else reads the tree."""
    root = tree.getroottree().getroot()
    if MATCHES_TRAFILATURA and tree is root:
        author = tmeta.extract_metainfo(tree, _candidates(root), len_limit=120)
    else:
        author = tmeta.extract_metainfo(tmeta.prune_unwanted_nodes(tree, tmeta.AUTHOR_DISCARD_XPATHS),
                                        tmeta.AUTHOR_XPATHS, len_limit=120)
    return tmeta.normalize_authors(None, author) if author else None


def _candidates(root: Any) -> list[Callable[[Any], list[Any]]]:
    """Prune *root* as AUTHOR_DISCARD_XPATHS would; return the three AUTHOR_XPATHS as
    functions giving their matches (in document order) on the pruned page."""
    discard: list[Any] = []
    time_figure: list[Any] = []
    rel_children = False
    found: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    for el in root.iter():
        tag = el.tag
        if not isinstance(tag, str):        # a comment or processing instruction
            continue
        cls, ident = el.get("class") or "", el.get("id") or ""
        itemprop, component = el.get("itemprop") or "", el.get("data-component") or ""
        if tag == "time" or tag == "figure":
            time_figure.append(el)
        rel_children = rel_children or tag == "rel"
        if tag in _DISCARD_TAGS and el is not root and (
                ident == "comments" or cls in ("comments", "title", "date") or "Figure" in component
                or _DISCARD_ID.search(ident) or _DISCARD_CLASS.search(cls)):
            discard.append(el)
        if tag == "author" or tag in _TAGS_0 and (
                cls == "author" or ident == "author" or itemprop == "author name" or el.get("rel") == "author"
                or el.get("data-testid") in ("AuthorCard", "AuthorURL") or _CLASS_0.search(cls)):
            found[0].append(el)
        if tag in _TAGS_1 and (cls in ("byline", "username", "byl", "BBL") or "author" in itemprop
                               or _ID_1.search(ident) or _CLASS_1.search(cls)):
            found[1].append(el)
        if "Byline" in component or "author" in itemprop or _ID_2.search(ident) or _CLASS_2.search(cls):
            found[2].append(el)
    # The same deletions in the same order as prune_unwanted_nodes (an element already cut
    # off with an ancestor is deleted from that detached subtree: no change to the page).
    for el in discard + time_figure:
        delete_element(el)

    def kept(candidates: list[Any]) -> Callable[[Any], list[Any]]:
        return lambda _tree: [el for el in candidates if _attached(el, root)]

    # The first expression also matches an element with a child <rel> whose text is "me"
    # (trafilatura's "rel='me'"): no page has one, so such a page takes the XPath itself.
    return [tmeta.AUTHOR_XPATHS[0] if rel_children else kept(found[0]), kept(found[1]), kept(found[2])]


def _attached(el: Any, root: Any) -> bool:
    """Still in the page (not inside a pruned subtree)."""
    while (parent := el.getparent()) is not None:
        el = parent
    return el is root
