"""One story, many outlets: near copies join one story, different stories stay apart,
on SQLite inline and on PostgreSQL with concurrent worker processes."""

from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.proc import base_env, cli, fetch_through_worker, jsonl
from worker.devserver import build_rss

SEED = (Path(__file__).parent / "fixtures" / "seed_story.txt").read_text().strip().split("\n\n")
OTHER = [
    "The Ministry of Defence has signed a contract for twelve new armoured personnel carriers and a batch of "
    "air defence systems, officials said on Tuesday.",
    "The procurement deal, worth an estimated 300 million dollars, was concluded with a domestic defence industry "
    "consortium and follows joint military exercises held last autumn.",
    "Deputy Defence Minister and Chief of the General Staff attended the signing ceremony, where the armed forces' "
    "modernisation plan for 2024-2026 was presented to Azerbaijani and Turkish officials.",
    "Under the plan, the army will also receive military drones and upgraded artillery, and the first deliveries "
    "are expected before the end of the year.",
]


def page(title: str, paragraphs: list[str], site: str) -> bytes:
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return (f"<html><head><title>{html.escape(title)} | {site}</title></head><body>"
            f"<nav><a href='/'>{site} home</a> <a href='/world'>World</a></nav>"
            f"<article><h1>{html.escape(title)}</h1>{body}</article>"
            f"<footer>© {site}. Subscribe to our newsletter.</footer></body></html>").encode()


def variants() -> list[tuple[str, str, list[str]]]:
    """(path, headline, paragraphs): syndicated versions of the seed story."""
    return [
        ("/caspian/meeting.html", "Azerbaijani Defence Minister meets Turkish delegation", SEED),
        ("/wire/az-tr.html", "Hasanov, Tüfekçi discuss military cooperation",
         ["BAKU, January 17 (Regional Wire) - " + SEED[0]] + SEED[1:]),
        ("/daily/defence-talks.html", "Baku hosts Turkish deputy defence minister", SEED[:3] + SEED[4:]),
        ("/gazette/hasanov.html", "Turkish delegation in Baku", SEED + ["Read more: defence news from the region."]),
        ("/echo/talks.html", "Defence talks in Baku", SEED[:2] + [SEED[3], SEED[2]] + SEED[4:]),
    ]


def serve(devserver, items: list[tuple[str, str, list[str]]], base_time: datetime) -> str:
    rss_items = []
    for i, (path, title, paras) in enumerate(items):
        devserver.add(path, page(title, paras, path.split("/")[1].title()))
        rss_items.append({"title": title, "link": devserver.base_url + path, "guid": path,
                          "description": paras[0][:200], "pub_date": base_time + timedelta(minutes=10 * i)})
    devserver.add("/feed.xml", build_rss(rss_items, "Syndication test", devserver.base_url),
                  content_type="application/rss+xml")
    return devserver.base_url + "/feed.xml"


def test_near_copies_join_one_story_with_every_outlet(tmp_path, devserver):
    env = base_env(tmp_path, allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    t0 = datetime(2024, 1, 17, 12, 0, tzinfo=timezone.utc)
    items = variants()
    # The last-listed copy was published first: it must become the representative.
    items.append(("/early/scoop.html", "Scoop: Hasanov meets Tüfekçi", ["(Early Agency) " + SEED[0]] + SEED[1:]))
    items.append(("/industry/contract.html", "Defence Ministry signs armoured vehicle contract", OTHER))
    feed = serve(devserver, items, t0)
    devserver.add("/early/scoop.html", page("Scoop", ["(Early Agency) " + SEED[0]] + SEED[1:], "Early"))
    cli(env, "feeds", "add", feed)
    out = cli(env, "fetch", "--all", "--inline").stdout
    assert "articles new: 7" in out

    stories = jsonl(cli(env, "articles", "list", "--stories", "--json").stdout)
    assert len(stories) == 2
    seed_story = next(s for s in stories if len(s["articles"]) > 1)
    other = next(s for s in stories if len(s["articles"]) == 1)
    assert len(seed_story["articles"]) == 6
    assert set(seed_story["outlets"]) == {"127.0.0.1"} or len(seed_story["articles"]) == 6
    assert other["title"].startswith("Defence Ministry signs")
    # Representative: the earliest published copy (pubDates are 10 minutes apart, in feed order,
    # so the first listed is earliest).
    assert seed_story["url"].endswith("/caspian/meeting.html")

    with sa.create_engine(f"sqlite:///{tmp_path / 'newsworker.db'}").connect() as db:
        view = db.execute(sa.text("select story_id, articles, feeds from stories_view order by articles desc")).all()
        assert [(r.articles, r.feeds) for r in view] == [(6, 1), (1, 1)]
        assert db.execute(sa.text("select count(*) from story_bands")).scalar() > 0


@pytest.mark.services
def test_concurrent_workers_storing_copies_end_with_one_story(tmp_path, devserver, pg_url, redis_url):
    """Copies processed at the same moment by two worker processes on PostgreSQL."""
    env = base_env(tmp_path, database_url=pg_url, broker_url=redis_url, result_backend=redis_url,
                   allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    engine = sa.create_engine(pg_url)
    with engine.begin() as db:    # the session database is shared: start from a clean slate
        db.execute(sa.text("truncate feeds, articles, stories, story_bands, tags, entities, article_urls, "
                           "article_feeds, fetch_events restart identity cascade"))
    # Twenty near copies (each with its own agency line) and an exact copy, processed by
    # two worker processes at once (the forced race is the next test).
    items = [(f"/outlet{i}/story.html", f"Outlet {i}: Baku defence talks", [f"BAKU ({'Agency ' * (i % 3 + 1)}{i}) - " + SEED[0]] + SEED[1:])
             for i in range(20)]
    items += [("/copy" + path, title, paras) for path, title, paras in variants()[:1]]
    feed = serve(devserver, items, datetime(2024, 1, 17, 12, 0, tzinfo=timezone.utc))
    cli(env, "feeds", "add", feed)
    out, _ = fetch_through_worker(env, tmp_path / "worker.log")
    assert "failures: 0" in out, out
    with engine.connect() as db:
        # Exact copies (same text at two URLs) are one article; near copies one story.
        n_articles = db.execute(sa.text("select count(*) from articles")).scalar()
        stories = db.execute(sa.text("select count(distinct story_id) from articles")).scalar()
        empty = db.execute(sa.text(
            "select count(*) from stories s where not exists (select 1 from articles a where a.story_id = s.id)")).scalar()
    engine.dispose()
    assert n_articles == 21
    assert stories == 1
    assert empty == 0


@pytest.mark.services
def test_two_transactions_racing_on_postgres_end_with_one_story(pg_url, monkeypatch):
    """Both transactions look for the story before either has stored its copy: the
    band locks make the second wait and then join the first one's story."""
    import threading

    from worker import store
    from worker.db import session_scope
    from worker.dedupe import content_hash, fingerprint
    from worker.migrate import upgrade

    upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    with engine.begin() as db:
        db.execute(sa.text("truncate feeds, articles, stories, story_bands, tags, entities, article_urls, "
                           "article_feeds, fetch_events restart identity cascade"))
    with session_scope(pg_url) as s:
        feed_id = store.add_feed(s, "http://feeds.example.org/race.xml")[0].id

    barrier = threading.Barrier(2)
    find_story = store.find_story

    def find_then_wait(session, fp):
        found = find_story(session, fp)
        try:
            barrier.wait(timeout=3)        # hold the window open: the other transaction races now
        except threading.BrokenBarrierError:
            pass                           # it is blocked on the band locks, as it should be
        return found

    monkeypatch.setattr(store, "find_story", find_then_wait)
    texts = [f"BAKU ({agency}) - " + "\n\n".join(SEED) for agency in ("Agency One", "Another Agency")]
    errors = []

    def save(i: int) -> None:
        try:
            draft = store.ArticleDraft(url=f"http://outlet{i}.example.org/story", text=texts[i], text_source="page",
                                       canonical_url=f"http://outlet{i}.example.org/story",
                                       content_hash=content_hash(texts[i]), fingerprint=fingerprint(texts[i]))
            with session_scope(pg_url) as s:
                store.save_article(s, draft, feed_id, [], [], "test")
        except Exception as exc:  # surfaced below with the assertion
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    with engine.connect() as db:
        assert db.execute(sa.text("select count(*), count(distinct story_id) from articles")).one() == (2, 1)
        assert db.execute(sa.text("select count(*) from stories")).scalar() == 1
    engine.dispose()


@pytest.mark.services
def test_an_article_is_stored_alike_on_sqlite_and_postgres(pg_url, tmp_path):
    """PostgreSQL writes what a new article brings in one statement, SQLite in several:
    the same rows either way (tags with evidence and details, entities, URLs, the feed
    link, LSH bands, the story and its representative)."""
    import json

    from worker import store
    from worker.db import session_scope
    from worker.dedupe import content_hash, fingerprint
    from worker.entities import extract_entities
    from worker.migrate import upgrade
    from worker.tagging import TagResult, load_tagger

    tagger = load_tagger()
    texts = ["\n\n".join(SEED), "BAKU (Regional Wire) - " + "\n\n".join(SEED)]
    published = [datetime(2024, 1, 17, 12, 30, tzinfo=timezone.utc), datetime(2024, 1, 17, 12, 0, tzinfo=timezone.utc)]

    def store_both(url: str) -> dict:
        upgrade(url)
        engine = sa.create_engine(url)
        if url.startswith("postgresql"):
            with engine.begin() as db:
                db.execute(sa.text("truncate feeds, articles, stories, story_bands, tags, entities, article_urls, "
                                   "article_feeds, fetch_events restart identity cascade"))
        with session_scope(url) as s:
            feed_id = store.add_feed(s, "http://feeds.example.org/defence.xml")[0].id
        for i, text in enumerate(texts):
            title = "Azerbaijani Defence Minister meets Turkish delegation"
            draft = store.ArticleDraft(
                url=f"http://outlet{i}.example.org/story?utm_source=rss", canonical_url=f"http://outlet{i}.example.org/story",
                alias_urls=(f"http://outlet{i}.example.org/amp/story",), guid=f"story-{i}", title=title, text=text,
                text_source="page", language="en", published_at=published[i], content_hash=content_hash(text),
                fingerprint=fingerprint(text))
            with session_scope(url) as s:
                tags = [*tagger.tag(title, text, "en"), TagResult("region.caucasus", 0.5, ["Baku"], None, None)]   # no details
                assert store.save_article(s, draft, feed_id, tags, extract_entities(title, text, "en"), tagger.version)[1]
        queries = {
            "tags": "select a.guid, t.name, t.score, t.evidence, t.details, t.details is null, t.iptc_code, t.tagger_version "
                    "from tags t join articles a on a.id = t.article_id",
            "entities": "select a.guid, e.kind, e.name, e.code, e.role, e.rank, e.evidence, e.mentions "
                        "from entities e join articles a on a.id = e.article_id",
            "urls": "select a.guid, u.canonical_url, u.url from article_urls u join articles a on a.id = u.article_id",
            "feeds": "select a.guid, f.guid, f.entry_url from article_feeds f join articles a on a.id = f.article_id",
            "bands": "select a.guid, b.band_hash from story_bands b join articles a on a.id = b.article_id",
            "stories": "select count(distinct a.story_id), min(r.guid) from articles a "
                       "join stories s on s.id = a.story_id join articles r on r.id = s.representative_article_id",
        }
        with engine.connect() as db:
            out = {name: sorted(tuple(json.loads(v) if isinstance(v, str) and v[:1] in "[{n" else v for v in row)
                                for row in db.execute(sa.text(q)).all()) for name, q in queries.items()}
        engine.dispose()
        return out

    on_sqlite, on_postgres = store_both(f"sqlite:///{tmp_path / 'alike.db'}"), store_both(pg_url)
    assert on_postgres == on_sqlite
    assert any(t[1] == "defence" and t[3] and t[4] for t in on_sqlite["tags"])       # evidence and details
    assert len(on_sqlite["entities"]) >= 4 and len(on_sqlite["urls"]) == 4 and len(on_sqlite["feeds"]) == 2
    assert on_sqlite["stories"] == [(1, "story-1")]       # one story; the earlier published copy represents it
