"""The one-pass author finder gives what trafilatura's extract_author gives."""

from __future__ import annotations

from copy import deepcopy

import pytest
from trafilatura import metadata as tmeta
from trafilatura.utils import load_html

from bench.common import zyte_pages
from worker import authors
from worker.authors import author_from_page


def page(body: str) -> bytes:
    return (f"<html><head><title>A story</title></head><body><nav><a href='/'>Home</a></nav>{body}"
            "<p>Some text of the story, long enough to be a paragraph of a news article.</p></body></html>").encode()


def both(html: bytes) -> tuple:
    """(trafilatura's answer on a copy, ours on the tree itself)."""
    tree = load_html(html)
    return tmeta.extract_author(deepcopy(tree)), author_from_page(tree)


def test_the_installed_trafilatura_has_the_expressions_mirrored():
    # When this fails, trafilatura changed its author XPaths: update authors.py to match
    # (or the slower XPath path is used everywhere).
    assert authors.MATCHES_TRAFILATURA


@pytest.mark.parametrize("body, expected", [
    ('<div class="byline">By Jane Doe</div>', "Jane Doe"),
    ('<a rel="author" href="/j">Jane Doe</a>', "Jane Doe"),
    ('<span class="article__author-name">Ali Valiyev</span>', "Ali Valiyev"),
    ('<p itemprop="author">Rena Mammadova</p>', "Rena Mammadova"),
    ('<h3 id="post-author">Kamran Aliyev</h3>', "Kamran Aliyev"),
    ('<section class="Byline">Elena Petrova</section>', "Elena Petrova"),          # any element, last resort
    ("<author>Lale Hasanova</author>", "Lale Hasanova"),
    # Comment blocks, sidebars and quotes are pruned first, with the names in them.
    ('<div id="comments"><span class="author">A Troll</span></div><a rel="author">Jane Doe</a>', "Jane Doe"),
    ('<aside><div class="sidebar"><p class="author">Other Writer</p></div></aside><div class="byline">Jane Doe</div>',
     "Jane Doe"),
    # <time> inside the byline goes, its tail text stays (joined to the text before it).
    ('<div class="byline">By Jane Doe <time>12 May 2024</time> | Baku</div>', "Jane Doe; Baku"),
    ('<div class="byline">Jane<time>x</time>Doe</div>', "JaneDoe"),
    # Too long for a byline (120 characters): the next candidate is taken.
    (f'<div class="byline">{"word " * 40}</div><span class="writer">Jane Doe</span>', "Jane Doe"),
    ('<div class="byline"><!-- a comment --><time>12 May</time></div><p>No byline here.</p>', None),
    ('<p>No byline at all.</p>', None),
    # trafilatura's first expression also tests a child <rel> element: the XPath itself is used.
    ('<div><rel>me</rel>Jane Doe</div>', "Me Jane Doe"),
])
def test_same_author_as_trafilatura(body, expected):
    theirs, ours = both(page(body))
    assert ours == theirs == expected


@pytest.mark.corpus
def test_same_author_as_trafilatura_on_every_benchmark_page(corpus_dir):
    pages = zyte_pages(corpus_dir)
    answers = [both(html) for _, _, html, _ in pages]
    assert [ours for _, ours in answers] == [theirs for theirs, _ in answers]
    assert sum(ours is not None for _, ours in answers) > 100       # most pages name someone
