"""Full-text search and cursor pages over articles: PostgreSQL's tsvector + GIN index and
SQLite's FTS5 table give the same answers to the same web-search syntax, combined with
every filter, ranked, and paged by cursor without gaps or repeats."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from tests.support.proc import add_sample_site, base_env, cli, jsonl
from tests.support.services import create_database, drop_database, ensure_postgres
from worker import migrate
from worker.db import session_scope
from worker.errors import InvalidQuery
from worker.models import Article, ArticleEntity, ArticleFeed, Feed, Tag
from worker.search import fts5_query
from worker.store import query_articles

T0 = datetime(2026, 1, 10, tzinfo=timezone.utc)

# (title, text, language, tags, countries, feed index, days after T0)
ARTICLES = [
    ("Defence minister meets Turkish delegation", "Zakir Hasanov received the delegation in Baku.", "en",
     ["defence"], ["AZ", "TR"], 0, 0),
    ("Football results", "The defence minister attended the cup final as a guest.", "en", [], ["AZ"], 0, 1),
    ("Harvest report", "Farmers expect a record wheat harvest this year.", "en", [], [], 1, 2),
    ("Ministers discuss air defence", "Two ministers discussed air defence systems and drones.", "en",
     ["defence"], ["TR"], 1, 3),
    ("Министр обороны провёл встречу", "Министр обороны Азербайджана встретился с делегацией.", "ru",
     ["defence"], ["AZ"], 0, 4),
    ("Savunma bakanı Bakü'de", "Savunma Bakan Yardımcısı Tüfekçi Bakü'de görüştü.", "tr", ["defence"], ["TR"], 1, 5),
]


def make_db(url: str) -> None:
    """The schema by migration, then a handful of articles written as the pipeline would."""
    migrate.upgrade(url)
    with session_scope(url) as s:
        feeds = [Feed(url=f"https://feeds{i}.example/rss") for i in range(2)]
        s.add_all(feeds)
        s.flush()
        for i, (title, text, lang, tags, countries, feed, day) in enumerate(ARTICLES):
            a = Article(url=f"https://news.example/{i}", canonical_url=f"https://news.example/{i}", title=title,
                        text=text, language=lang, text_source="page", feed_id=feeds[feed].id,
                        published_at=T0 + timedelta(days=day))
            s.add(a)
            s.flush()
            s.add(ArticleFeed(article_id=a.id, feed_id=feeds[feed].id))
            s.add_all(Tag(article_id=a.id, name=t, score=1.0, evidence=["defence minister"], tagger_version="t")
                      for t in tags)
            s.add_all(ArticleEntity(article_id=a.id, kind="country", name=c, code=c, evidence=[c], mentions=1,
                                    tagger_version="t") for c in countries)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db(request, tmp_path_factory):
    """A database of this module's own (the session's shared one holds other tests' feeds)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('search')}/search.db"
        make_db(url)
        yield url
        return
    admin = ensure_postgres()
    url = create_database(admin)
    try:
        make_db(url)
        yield url
    finally:
        drop_database(admin, url)


def titles(url: str, **kw) -> list[str]:
    with session_scope(url) as s:
        rows, _ = query_articles(s, **kw)
    return [r["title"] for r in rows]


def test_words_must_all_match_and_title_hits_rank_first(db):
    found = titles(db, q="defence minister")
    # Both words in the title beat both words in the body only.
    assert set(found[:2]) == {"Defence minister meets Turkish delegation", "Ministers discuss air defence"}
    assert found[2:] == ["Football results"]


def test_stemming_finds_other_forms_of_a_word(db):
    assert "Ministers discuss air defence" in titles(db, q="minister")
    assert "Defence minister meets Turkish delegation" in titles(db, q="ministers")


def test_phrase_or_and_exclusion(db):
    assert titles(db, q='"air defence"') == ["Ministers discuss air defence"]
    assert set(titles(db, q="wheat or drones")) == {"Harvest report", "Ministers discuss air defence"}
    assert "Football results" not in titles(db, q="defence -football -cup")
    assert "Defence minister meets Turkish delegation" in titles(db, q="defence -football -cup")


def test_other_languages_are_searchable(db):
    assert titles(db, q="обороны") and all(t.startswith("Министр") for t in titles(db, q="обороны"))
    assert titles(db, q="Savunma") == ["Savunma bakanı Bakü'de"]


def test_search_combines_with_every_filter(db):
    assert set(titles(db, q="defence", tag="defence", language="en")) == \
        {"Defence minister meets Turkish delegation", "Ministers discuss air defence"}
    assert set(titles(db, q="defence", country="az", language="en")) == \
        {"Defence minister meets Turkish delegation", "Football results"}
    assert titles(db, q="drones", country="az") == []
    with session_scope(db) as s:
        feed0 = s.execute(sa.select(Feed.id).order_by(Feed.id)).scalars().first()
    assert set(titles(db, q="minister", feed=feed0)) == {"Defence minister meets Turkish delegation", "Football results"}
    assert titles(db, q="minister", since=T0 + timedelta(days=1), until=T0 + timedelta(days=2)) == ["Football results"]


@pytest.mark.parametrize("hostile", ['"', 'defence"', "NEAR(a b)", "title:defence", "defence*", "AND OR NOT",
                                     "') OR 1=1 --", "^defence", "{title}: x", "defence + - ( )"])
def test_hostile_queries_never_reach_the_query_language(db, hostile):
    """Any text is either searched for as words or refused with a clear error, never an SQL
    or FTS5 syntax error."""
    try:
        titles(db, q=hostile)
    except InvalidQuery as exc:
        assert "search" in str(exc)


def test_a_query_without_words_is_refused_clearly(db):
    for q in ("", "  ", "!!!", "-defence"):
        with pytest.raises(InvalidQuery, match="search"):
            titles(db, q=q)


@pytest.mark.parametrize("q", [None, "defence or minister or savunma or обороны or wheat"])
def test_cursor_pages_cover_every_row_once_in_order(db, q):
    with session_scope(db) as s:
        everything, end = query_articles(s, q=q, limit=100)
    assert end is None and len(everything) >= 5
    seen, cursor = [], None
    while True:
        with session_scope(db) as s:
            page, cursor = query_articles(s, q=q, limit=2, cursor=cursor)
        seen.extend(r["id"] for r in page)
        if cursor is None:
            break
    assert seen == [r["id"] for r in everything]
    if q is None:
        assert seen == sorted(seen, reverse=True)                    # newest stored first
    else:
        scores = [r["score"] for r in everything]
        assert scores == sorted(scores, reverse=True)


def test_only_the_newest_matches_are_ranked_and_the_rest_follow_newest_first(db, monkeypatch):
    """With a window of three, a search that matches six articles ranks the three newest by
    relevance and lists the older three after them, newest first; a cursor walk keeps the
    window its first page chose, even when a newer match is stored mid-walk."""
    import worker.search

    q = "defence or minister or savunma or обороны or wheat"
    with session_scope(db) as s:
        ranked_all, _ = query_articles(s, q=q, limit=100)
    monkeypatch.setattr(worker.search, "RANK_WINDOW", 3)
    with session_scope(db) as s:
        windowed, _ = query_articles(s, q=q, limit=100)
    ids = sorted((r["id"] for r in ranked_all), reverse=True)
    assert len(ids) == 6
    newest, older = ids[:3], ids[3:]
    assert [r["id"] for r in windowed[3:]] == older and all(r["score"] == 0 for r in windowed[3:])
    assert [r["id"] for r in windowed[:3]] == [r["id"] for r in ranked_all if r["id"] in newest]
    assert all(r["score"] > 0 for r in windowed[:3])

    with session_scope(db) as s:
        first, cursor = query_articles(s, q=q, limit=2)
        s.add(Article(url="https://news.example/newer", canonical_url="https://news.example/newer",
                      title="Defence minister again", text="The defence minister spoke again.", language="en",
                      text_source="page"))
    try:
        seen = [r["id"] for r in first]
        while cursor:
            with session_scope(db) as s:
                page, cursor = query_articles(s, q=q, limit=2, cursor=cursor)
            seen.extend(r["id"] for r in page)
        # The walk kept its window: every match once, in the window's order (the newer match,
        # ranked as it falls inside the window, may show up among them).
        before = [r["id"] for r in windowed]
        assert [i for i in seen if i in before] == before and len(set(seen)) == len(seen)
    finally:
        with session_scope(db) as s:
            s.execute(sa.delete(Article).where(Article.canonical_url == "https://news.example/newer"))


def test_rows_stored_after_a_page_do_not_shift_the_next_one(db):
    with session_scope(db) as s:
        first, cursor = query_articles(s, limit=2)
    with session_scope(db) as s:
        s.add(Article(url="https://news.example/late", canonical_url="https://news.example/late", title="Late",
                      text="stored between two pages", language="en", text_source="page"))
    try:
        with session_scope(db) as s:
            second, _ = query_articles(s, limit=2, cursor=cursor)
        assert second and max(r["id"] for r in second) < min(r["id"] for r in first)
    finally:
        with session_scope(db) as s:
            s.execute(sa.delete(Article).where(Article.canonical_url == "https://news.example/late"))


def test_a_cursor_from_elsewhere_is_refused(db):
    with session_scope(db) as s:
        _, plain = query_articles(s, limit=1)
        _, ranked = query_articles(s, q="defence", limit=1)
        for bad, kw in [("garbage!", {}), ("eyJrIjoiaWQifQ", {}), (ranked, {}), (plain, {"q": "defence"})]:
            with pytest.raises(InvalidQuery, match="cursor"):
                query_articles(s, cursor=bad, **kw)


def test_edited_text_is_searched_as_it_is_now(db):
    with session_scope(db) as s:
        s.execute(sa.update(Article).where(Article.title == "Harvest report")
                  .values(text="Farmers expect a record barley harvest."))
    try:
        assert titles(db, q="barley") == ["Harvest report"]
        assert titles(db, q="wheat") == []
    finally:
        with session_scope(db) as s:
            s.execute(sa.update(Article).where(Article.title == "Harvest report")
                      .values(text="Farmers expect a record wheat harvest this year."))


def test_fts5_translation():
    assert fts5_query("defence minister") == '"defence" AND "minister"'
    assert fts5_query('"air defence" or drones -football') == '"air defence" OR "drones" NOT "football"'
    assert fts5_query('NEAR(a') == '"NEAR(a"'
    assert fts5_query('say "it""s') == '"say" AND "it" AND "s"'


def test_articles_search_command_on_the_embedded_default(tmp_path, devserver):
    env = base_env(tmp_path, allowed_private_hosts=devserver.host_port)
    add_sample_site(env, devserver)
    rows = jsonl(cli(env, "articles", "search", "Hasanov Turkish", "--json").stdout)
    assert rows and any("Tüfekçi" in r["text"] for r in rows)
    assert all(r["score"] > 0 for r in rows)
    assert [t["name"] for t in rows[0]["tags"]][:1] == ["defence"]
    assert jsonl(cli(env, "articles", "search", "Hasanov", "--json", "--tag", "nosuchtag").stdout) == []
    bad = cli(env, "articles", "search", "!!!", check=False)
    assert bad.returncode != 0 and "no word to look for" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.services
def test_postgresql_keeps_the_search_vector_in_the_row():
    """Searching reads every candidate's tsvector: it stays in the heap row (migration
    0009), and the long text is what moves to the TOAST table."""
    import random

    admin = ensure_postgres()
    url = create_database(admin)
    try:
        migrate.upgrade(url)
        rng = random.Random(3)
        # ~4 kB of distinct words: a tsvector too wide for a row's 2 kB without TOAST
        text = " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8)) for _ in range(450))
        with session_scope(url) as s:
            toast = s.execute(sa.text("SELECT reltoastrelid::regclass::text FROM pg_class "
                                      "WHERE oid = 'articles'::regclass")).scalar_one()
            s.add(Article(url="https://news.example/long", canonical_url="https://news.example/long",
                          title="Long article", text=text, language="en", text_source="page"))
        with session_scope(url) as s:
            out_of_line = s.execute(sa.text(f"SELECT sum(length(chunk_data)) FROM {toast}")).scalar_one()
            vector, text_size = s.execute(sa.text("SELECT pg_column_size(search_vector), pg_column_size(text) "
                                                  "FROM articles")).one()
            assert vector > 2000 and text_size <= out_of_line < vector, (
                f"{out_of_line} bytes out of line for a {vector}-byte search vector and a {text_size}-byte text")
        assert titles(url, q=text.split()[200]) == ["Long article"]
    finally:
        drop_database(admin, url)
