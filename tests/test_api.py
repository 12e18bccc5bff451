"""`newsworker api`: every endpoint of the real server (uvicorn in its own process) on
real data in PostgreSQL — the sample site ingested by the real pipeline, the seed story
among it — and the manual fetch through a real Redis broker."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import redis
import sqlalchemy as sa
from openapi_spec_validator import validate

from tests.support.api import api_server, sample_site_database
from tests.support.services import drop_queued_tasks
from tests.support.proc import base_env, cli
from worker.db import session_scope
from worker.models import Article, ArticleFeed, Feed

pytestmark = pytest.mark.services

TOKEN = "test-token-not-secret-8f1c"
SEED_TITLE = "Azerbaijani Defence Minister meets Turkish delegation"


@pytest.fixture(scope="module")
def site(tmp_path_factory, redis_url):
    """The sample site and a feed that answers 404, ingested into a PostgreSQL database of
    this module's own, and the API serving it with a token, Redis as its broker."""
    tmp = tmp_path_factory.mktemp("api")
    with sample_site_database(tmp) as url, api_server(url, tmp, api_token=TOKEN, broker_url=redis_url) as api:
        yield {"api": api, "client": api.client, "db": url, "tmp": tmp, "redis_url": redis_url}
    drop_queued_tasks(redis_url)        # the polls POST /feeds/{id}/fetch queued


def get(site, path, status=200, **params):
    r = site["client"].get(path, params=params)
    assert r.status_code == status, (path, params, r.status_code, r.text)
    return r.json()


def feed_ids(site) -> dict[str, int]:
    """{last part of the feed URL: id}."""
    with session_scope(site["db"]) as s:
        return {u.rsplit("/", 1)[1]: i for i, u in s.execute(sa.select(Feed.id, Feed.url)).all()}


# ---------------------------------------------------------------- articles

def test_articles_newest_first_with_tags_evidence_and_entities(site):
    page = get(site, "/articles")
    items = page["items"]
    assert page["next_cursor"] is None and len(items) == 5
    assert [a["id"] for a in items] == sorted((a["id"] for a in items), reverse=True)
    with session_scope(site["db"]) as s:
        assert {a["id"] for a in items} == set(s.execute(sa.select(Article.id)).scalars())
    seed = next(a for a in items if a["title"] == SEED_TITLE)
    defence = next(t for t in seed["tags"] if t["name"] == "defence")
    assert defence["score"] >= 0.5 and "Colonel General" in defence["evidence"]
    assert {"AZ", "TR"} <= {c["code"] for c in seed["countries"]}
    assert any("Hasanov" in o["name"] and o["rank"] == "Colonel General" for o in seed["officials"])

    one = get(site, f"/articles/{seed['id']}")
    assert one == {**seed, "score": None}
    assert get(site, "/articles/999999", 404)["detail"].startswith("no article 999999")


def test_article_filters(site):
    defence = get(site, "/articles", tag="defence")["items"]
    assert len(defence) == 2 and SEED_TITLE in {a["title"] for a in defence}
    assert all("defence" in {t["name"] for t in a["tags"]} for a in defence)
    assert get(site, "/articles", tag="no-such-tag")["items"] == []

    az = get(site, "/articles", country="az")["items"]          # ISO code, any case
    assert SEED_TITLE in {a["title"] for a in az}
    assert all("AZ" in {c["code"] for c in a["countries"]} for a in az)
    assert get(site, "/articles", country="ZW")["items"] == []

    ids = feed_ids(site)
    with session_scope(site["db"]) as s:
        listed = set(s.execute(sa.select(ArticleFeed.article_id).where(ArticleFeed.feed_id == ids["world.rss"])).scalars())
    world = get(site, "/articles", feed=ids["world.rss"])["items"]
    assert {a["id"] for a in world} == listed and len(listed) >= 3
    assert get(site, "/articles", feed=ids["missing.xml"])["items"] == []

    languages = {a["language"] for a in get(site, "/articles")["items"]}
    for lang in languages:
        found = get(site, "/articles", language=lang)["items"]
        assert found and {a["language"] for a in found} == {lang}
    assert get(site, "/articles", language="xx")["items"] == []

    # Time range on the publication time: since is inclusive, until exclusive.
    seed = next(a for a in defence if a["title"] == SEED_TITLE)
    when = datetime.fromisoformat(seed["published_at"].replace("Z", "+00:00"))
    since = {a["id"] for a in get(site, "/articles", since=when.isoformat())["items"]}
    until = {a["id"] for a in get(site, "/articles", until=when.isoformat())["items"]}
    assert seed["id"] in since and seed["id"] not in until
    assert since | until == {a["id"] for a in get(site, "/articles")["items"]} and not since & until
    naive = when.replace(tzinfo=None).isoformat()              # no zone: UTC
    assert {a["id"] for a in get(site, "/articles", since=naive)["items"]} == since
    window = get(site, "/articles", since=when.isoformat(), until=(when + timedelta(seconds=1)).isoformat())["items"]
    assert [a["id"] for a in window] == [seed["id"]]

    found = get(site, "/articles", q="Hasanov Tüfekçi")["items"]
    assert found and found[0]["id"] == seed["id"] and found[0]["score"] > 0
    both = get(site, "/articles", q="defence", tag="defence", country="AZ", feed=ids["world.rss"])["items"]
    assert [a["id"] for a in both] == [seed["id"]]


def walk(site, **params):
    """Every page of a listing; returns the items in order and how many pages there were."""
    items, pages, cursor = [], 0, None
    while True:
        page = get(site, "/articles", **params, **({"cursor": cursor} if cursor else {}))
        pages += 1
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages
        assert pages < 20, "the cursor walk does not end"


def test_cursor_walks_every_page_without_gaps_or_repeats(site):
    everything = [a["id"] for a in get(site, "/articles", limit=200)["items"]]
    for limit in (1, 2, 4, 5):
        items, pages = walk(site, limit=limit)
        assert [a["id"] for a in items] == everything, limit
        assert pages == -(-len(everything) // limit), limit      # a full last page has no next cursor
    defence, pages = walk(site, tag="defence", limit=1)
    assert [a["id"] for a in defence] == [a["id"] for a in get(site, "/articles", tag="defence")["items"]]
    assert pages == 2
    # A search pages by rank, with its own kind of cursor.
    ranked = [a["id"] for a in get(site, "/articles", q="defence")["items"]]
    assert len(ranked) >= 2
    assert [a["id"] for a in walk(site, q="defence", limit=1)[0]] == ranked


def test_bad_requests_say_what_is_wrong(site):
    for cursor in ("garbage", "eyJrIjoiaWQifQ", "!!!"):
        detail = get(site, "/articles", 400, cursor=cursor)["detail"]
        assert "is not a cursor of this listing" in detail and "docs/api.md" in detail
    search_cursor = get(site, "/articles", q="defence", limit=1)["next_cursor"]
    assert search_cursor
    assert "not a cursor of this listing" in get(site, "/articles", 400, cursor=search_cursor)["detail"]
    assert "has no word to look for" in get(site, "/articles", 400, q="--- ...")["detail"]
    assert get(site, "/articles", 404, feed=99999)["detail"].startswith("no feed '99999'")
    for params in ({"limit": 0}, {"limit": 201}, {"country": "AZE"}, {"since": "yesterday"}, {"feed": "x"}):
        body = get(site, "/articles", 422, **params)
        assert body["detail"] and isinstance(body["detail"], list), params


# ---------------------------------------------------------------- stories, tags

def test_stories_with_evidence_and_every_outlet(site):
    stories = get(site, "/stories", tag="defence")["items"]
    assert len(stories) == 2
    seed = next(st for st in stories if st["title"] == SEED_TITLE)
    assert any(t["name"] == "defence" and t["evidence"] for t in seed["tags"])
    assert seed["outlets"] == ["Caspian Daily Monitor"]
    # The wire service re-published it word for word and the sport feed listed it too:
    # one article, carried by three feeds.
    assert seed["feeds"] == ["Caspian Daily Monitor — Sport and defence", "Caspian Daily Monitor — Top stories",
                             "Regional Wire Digest"]
    assert seed["articles"] and seed["articles"][0]["article_id"] == seed["representative_article_id"]

    everything = get(site, "/stories")["items"]
    assert len(everything) == 5 and {st["story_id"] for st in stories} <= {st["story_id"] for st in everything}
    assert [st["story_id"] for st in get(site, "/stories", limit=1)["items"]] == [everything[0]["story_id"]]
    walked, cursor = [], None                       # cursor pages: every story once, in order
    while True:
        page = get(site, "/stories", limit=2, **({"cursor": cursor} if cursor else {}))
        walked += [st["story_id"] for st in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == [st["story_id"] for st in everything]
    get(site, "/stories", 400, cursor="bad")
    assert get(site, "/stories")["next_cursor"] is None
    assert SEED_TITLE in {st["title"] for st in get(site, "/stories", country="TR")["items"]}
    assert get(site, "/stories", since="2030-01-01")["items"] == []
    get(site, "/stories", 422, limit=500)


def test_tags_with_counts(site):
    tags = {t["name"]: t["articles"] for t in get(site, "/tags")}
    assert tags["defence"] == 2
    assert set(tags) <= {"defence", "defence.diplomacy", "defence.industry", "defence.operations", "defence.policy"}


# ---------------------------------------------------------------- feeds

def test_feeds_and_their_health(site):
    feeds = get(site, "/feeds")
    assert feeds["next_cursor"] is None
    by_url = {f["url"].rsplit("/", 1)[1]: f for f in feeds["items"]}
    assert set(by_url) == {"sport.atom", "wire.json", "world.rss", "missing.xml"}

    broken = by_url["missing.xml"]
    assert broken["name"] == "Broken feed" and broken["enabled"]
    assert broken["last_status"] == "permanent" and broken["last_http_status"] == 404
    assert broken["error_count"] == 1 and "404" in broken["last_error"]
    assert broken["last_poll"]["outcome"] == "permanent" and broken["last_poll"]["http_status"] == 404
    assert broken["articles_24h"] == 0 and broken["last_success_at"] is None

    world = by_url["world.rss"]
    assert world["last_status"] == "ok" and world["error_count"] == 0 and world["last_error"] is None
    assert world["last_poll"]["items_new"] >= 3 and world["articles_24h"] >= 3
    assert world["title"] == "Caspian Daily Monitor — Top stories" and not world["queued"]
    assert datetime.fromisoformat(world["next_fetch_at"].replace("Z", "+00:00")) > \
        datetime.fromisoformat(world["last_fetch_at"].replace("Z", "+00:00"))

    # The CLI's row is the API's, plus the health extras.
    listed = {json.loads(line)["id"]: json.loads(line) for line in cli(
        base_env(site["tmp"], database_url=site["db"]), "feeds", "list", "--json").stdout.splitlines()}
    api_row = get(site, f"/feeds/{world['id']}")
    assert set(listed[world["id"]]) <= set(api_row)
    assert {k: api_row[k] for k in ("url", "title", "last_status", "error_count")} == \
        {k: listed[world["id"]][k] for k in ("url", "title", "last_status", "error_count")}

    assert get(site, "/feeds/99999", 404)["detail"] == "no feed '99999' (see `newsworker feeds list`)"
    walked, cursor = [], None
    while True:
        page = get(site, "/feeds", limit=1, **({"cursor": cursor} if cursor else {}))
        walked += [f["id"] for f in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert walked == [f["id"] for f in feeds["items"]] == sorted(walked)
    assert "not a cursor of this listing" in get(site, "/feeds", 400, cursor="bogus")["detail"]


# ---------------------------------------------------------------- the manual fetch

def queued_polls(redis_url: str) -> list[dict]:
    """The poll task messages waiting in the `feeds` queue (kombu's Redis list)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [json.loads(raw)["headers"] for raw in client.lrange("feeds", 0, -1)]
    finally:
        client.close()


def test_fetch_needs_the_token_and_queues_one_poll(site):
    client, fid = site["client"], feed_ids(site)["sport.atom"]
    path = f"/feeds/{fid}/fetch"
    before = queued_polls(site["redis_url"])

    r = client.post(path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "NEWSWORKER_API_TOKEN" in r.json()["detail"]
    for header in (f"Bearer {TOKEN}x", "Bearer", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
        assert client.post(path, headers={"Authorization": header}).status_code == 401, header
    assert queued_polls(site["redis_url"]) == before

    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.post(path, headers=auth)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    assert r.json() == {"feed_id": fid, "task_id": task_id}
    new = [h for h in queued_polls(site["redis_url"]) if h not in before]
    assert [(h["id"], h["task"], h["argsrepr"]) for h in new] == [(task_id, "worker.tasks.poll_feed", f"({fid},)")]
    assert get(site, f"/feeds/{fid}")["queued"] is True

    again = client.post(path, headers=auth)
    assert again.status_code == 409 and f"feed {fid} is already queued or being polled" in again.json()["detail"]
    assert len(queued_polls(site["redis_url"])) == len(before) + 1          # not queued twice

    assert client.post("/feeds/99999/fetch", headers=auth).status_code == 404
    assert client.post("/feeds/0/fetch", headers=auth).status_code == 422


def test_fetch_is_off_without_a_configured_token(site):
    with api_server(site["db"], site["tmp"], broker_url=site["redis_url"]) as api:
        r = api.client.post(f"/feeds/{feed_ids(site)['wire.json']}/fetch", headers={"Authorization": "Bearer x"})
        assert r.status_code == 503 and "set NEWSWORKER_API_TOKEN" in r.json()["detail"]
        assert api.client.get("/feeds").status_code == 200                   # reading needs no token


# ---------------------------------------------------------------- OpenAPI, metrics, health

def test_openapi_document_is_valid_and_complete(site):
    doc = get(site, "/openapi.json")
    validate(doc)                                   # raises on any violation of the OpenAPI spec
    paths = doc["paths"]
    for path, method in [("/articles", "get"), ("/articles/{article_id}", "get"), ("/stories", "get"),
                         ("/tags", "get"), ("/feeds", "get"), ("/feeds/{feed_id}", "get"),
                         ("/feeds/{feed_id}/fetch", "post"), ("/metrics", "get"), ("/healthz", "get")]:
        assert method in paths[path], path
    params = {p["name"] for p in paths["/articles"]["get"]["parameters"]}
    assert params == {"tag", "country", "feed", "language", "since", "until", "q", "cursor", "limit"}
    fetch = paths["/feeds/{feed_id}/fetch"]["post"]
    assert {"202", "401", "404", "409", "503"} <= set(fetch["responses"])
    assert fetch["security"] == [{"apiToken": []}]
    assert doc["components"]["securitySchemes"]["apiToken"] == {
        "type": "http", "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["apiToken"]["description"]}
    article = doc["components"]["schemas"]["ArticleOut"]["properties"]
    assert {"tags", "countries", "officials", "published_at", "score"} <= set(article)


def test_metrics_and_healthz_answer(site):
    r = site["client"].get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert get(site, "/healthz") == {"status": "ok", "database": "ok"}


def test_api_server_processes_keep_nagle_off_on_client_connections():
    """`newsworker api --workers N` binds its listener through uvicorn's Config.bind_socket;
    with the guard the listener states TCP, so asyncio sets TCP_NODELAY on every accepted
    connection (without it, each keep-alive request after the first waited for the
    client's delayed ACK: Kludex/uvicorn#3149)."""
    import asyncio
    import socket

    from uvicorn.config import Config

    from worker.api.nodelay import guard_listener_protocol

    guard_listener_protocol()
    listener = Config(app="worker.api:create_app", host="127.0.0.1", port=0).bind_socket()
    assert listener.proto == socket.IPPROTO_TCP

    async def accepted_nodelay() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Report(asyncio.Protocol):
            def connection_made(self, transport):  # noqa: ANN001
                sock = transport.get_extra_info("socket")
                seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Report, sock=listener)
        try:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()

    assert asyncio.run(accepted_nodelay()) == 1
