"""The core steps called directly, as the tasks call them: a real local server,
a real SQLite database, a real httpx client."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlmodel import select

from worker import http, pipeline, store
from worker.db import session_scope
from worker.errors import BlockedURL, PermanentFetchError, TemporaryFetchError
from worker.feeds import ParsedEntry
from worker.migrate import upgrade
from worker.models import Article, Feed, FetchEvent
from worker.schedule import TEMPORARY
from worker.settings import Settings
from worker.tagging import load_tagger


@pytest.fixture
def setup(tmp_path, devserver):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    settings = Settings(database_url=url, var_dir=tmp_path, allowed_private_hosts=[devserver.host_port],
                        max_page_bytes=50_000)
    with http.make_client(settings) as client:
        yield settings, client, url


def get(client, url, settings, **kw):
    return http.get(client, url, max_bytes=settings.max_page_bytes,
                    allowed_private_hosts=settings.allowed_private_hosts, **kw)


def test_every_redirect_hop_is_checked(setup, devserver):
    settings, client, _ = setup
    devserver.add("/hop", b"", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    with pytest.raises(BlockedURL, match="169.254.169.254"):
        get(client, f"{devserver.base_url}/hop", settings)
    devserver.add("/ok", b"<p>fine</p>")
    devserver.add("/hop2", b"", status=301, headers={"Location": "/ok"})
    assert get(client, f"{devserver.base_url}/hop2", settings).final_url.endswith("/ok")


def test_status_codes_become_temporary_or_permanent_errors(setup, devserver):
    settings, client, _ = setup
    devserver.add("/busy", b"slow down", status=429, headers={"Retry-After": "120"})
    devserver.add("/gone", b"gone", status=410)
    devserver.add("/big", b"x" * 60_000)
    with pytest.raises(TemporaryFetchError) as busy:
        get(client, f"{devserver.base_url}/busy", settings)
    assert busy.value.retry_after == 120 and busy.value.status == 429
    with pytest.raises(PermanentFetchError, match="HTTP 410"):
        get(client, f"{devserver.base_url}/gone", settings)
    with pytest.raises(PermanentFetchError, match="cap"):
        get(client, f"{devserver.base_url}/big", settings)


def test_poll_outcome_429_backs_off_at_least_retry_after(setup, devserver):
    settings, client, url = setup
    devserver.add("/feed.xml", b"busy", status=429, headers={"Retry-After": "3600"})
    with session_scope(url) as s:
        feed, _ = store.add_feed(s, f"{devserver.base_url}/feed.xml")
        fid = feed.id
    with session_scope(url) as s:
        result = pipeline.poll_feed(s, client, fid, settings)
    assert result.outcome.status == TEMPORARY
    with session_scope(url) as s:
        feed = s.get(Feed, fid)
        assert feed.error_count == 1 and feed.queued_at is None
        assert feed.next_fetch_at - feed.last_fetch_at >= timedelta(seconds=3600)
        assert s.exec(select(FetchEvent.outcome, FetchEvent.http_status)).all() == [("temporary", 429)]


def test_redelivered_entry_is_stored_once_and_oversized_page_falls_back(setup, devserver):
    settings, client, url = setup
    devserver.add("/huge.html", b"<html><body>" + b"<p>word </p>" * 10_000 + b"</body></html>")
    with session_scope(url) as s:
        feed, _ = store.add_feed(s, f"{devserver.base_url}/feed.xml")
        fid = feed.id
    entry = ParsedEntry(link=f"{devserver.base_url}/huge.html", title="Huge", guid="g1",
                        summary="<p>The feed's own summary of the story, long enough to keep.</p>")
    tagger = load_tagger()
    results = []
    for _ in range(2):  # a task delivered twice
        with session_scope(url) as s:
            results.append(pipeline.process_entry(s, client, fid, entry, tagger, settings))
    assert results[0].created and not results[1].created
    assert results[0].article_id == results[1].article_id
    with session_scope(url) as s:
        (article,) = s.exec(select(Article)).all()
    assert article.text_source == "feed_summary"
    assert "cap" in article.fetch_error and "huge.html" in article.fetch_error
    assert len(devserver.requests_for("/huge.html")) == 1     # the second delivery fetched nothing


def test_temporary_page_error_is_raised_for_a_retry_when_asked(setup, devserver):
    settings, client, url = setup
    devserver.add("/flaky.html", b"oops", status=503)
    with session_scope(url) as s:
        feed, _ = store.add_feed(s, f"{devserver.base_url}/feed.xml")
        fid = feed.id
    entry = ParsedEntry(link=f"{devserver.base_url}/flaky.html", title="Flaky", summary="A summary of the story here.")
    with pytest.raises(TemporaryFetchError, match="HTTP 503"):
        with session_scope(url) as s:
            pipeline.process_entry(s, client, fid, entry, load_tagger(), settings, fallback_on_temporary=False)
    with session_scope(url) as s:
        r = pipeline.process_entry(s, client, fid, entry, load_tagger(), settings)
    assert r.created and r.text_source == "feed_summary" and "HTTP 503" in r.fetch_error


def test_refused_entry_links_are_counted_in_the_fetch_event(setup, devserver):
    settings, client, url = setup
    devserver.add("/mixed.xml", f"""<?xml version="1.0"?><rss version="2.0"><channel><title>mixed</title>
      <item><title>fine</title><link>{devserver.base_url}/fine.html</link></item>
      <item><title>script</title><link>javascript:alert(1)</link></item>
      <item><title>file</title><link>file:///etc/passwd</link></item></channel></rss>""",
                  content_type="application/rss+xml")
    with session_scope(url) as s:
        fid = store.add_feed(s, f"{devserver.base_url}/mixed.xml")[0].id
    with session_scope(url) as s:
        result = pipeline.poll_feed(s, client, fid, settings)
    assert [e.link for e in result.new_entries] == [f"{devserver.base_url}/fine.html"]
    with session_scope(url) as s:
        event = s.exec(select(FetchEvent)).one()
        feed = s.get(Feed, fid)
    assert (event.outcome, event.items_seen, event.items_rejected) == ("ok", 1, 2)
    assert "2 entries with links refused" in event.error and "javascript:" in event.error
    assert feed.last_error == event.error          # shown with the feed's health


def _poll(url, client, fid, settings):
    with session_scope(url) as s:
        return pipeline.poll_feed(s, client, fid, settings)


def test_unchanged_body_is_not_parsed_when_the_server_ignores_conditional_gets(setup, devserver):
    settings, client, url = setup
    body = f"""<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><ttl>30</ttl>
      <item><title>a</title><link>{devserver.base_url}/a.html</link></item></channel></rss>"""
    devserver.add("/plain.xml", body, content_type="application/rss+xml", auto_etag=False)   # no validators at all
    with session_scope(url) as s:
        fid = store.add_feed(s, f"{devserver.base_url}/plain.xml")[0].id
    assert _poll(url, client, fid, settings).outcome.items_new == 1
    second = _poll(url, client, fid, settings)
    assert second.outcome.status == "not_modified" and second.outcome.http_status == 200
    with session_scope(url) as s:
        events = s.exec(select(FetchEvent.outcome, FetchEvent.http_status).order_by(FetchEvent.id)).all()
        feed = s.get(Feed, fid)
    assert events == [("ok", 200), ("not_modified", 200)]
    assert feed.hint_interval == 1800 and feed.fetch_interval >= 1800      # <ttl> 30 minutes honoured
    # a changed body is parsed again
    devserver.add("/plain.xml", body.replace("</channel>", f"<item><title>b</title><link>{devserver.base_url}/b.html"
                                             "</link></item></channel>"), content_type="application/rss+xml",
                  auto_etag=False)
    third = _poll(url, client, fid, settings).outcome
    assert (third.status, third.items_seen) == ("ok", 2)


@pytest.mark.parametrize("code, moves", [(301, True), (308, True), (302, False), (307, False)])
def test_feed_url_follows_a_permanent_redirect_after_several_polls(setup, devserver, code, moves):
    settings, client, url = setup
    devserver.add("/new.xml", b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>',
                  content_type="application/rss+xml")
    devserver.add("/old.xml", b"", status=code, headers={"Location": "/new.xml"})
    with session_scope(url) as s:
        fid = store.add_feed(s, f"{devserver.base_url}/old.xml")[0].id
    for poll in range(settings.redirect_confirmations):
        with session_scope(url) as s:
            assert s.get(Feed, fid).url.endswith("/old.xml")     # not before the last confirmation
        assert _poll(url, client, fid, settings).outcome.status in ("ok", "not_modified")
    with session_scope(url) as s:
        assert s.get(Feed, fid).url.endswith("/new.xml" if moves else "/old.xml")


def test_disabled_feed_is_enabled_again_from_the_cli(tmp_path, devserver):
    from tests.support.proc import base_env, cli

    env = base_env(tmp_path, allowed_private_hosts=devserver.host_port, disable_after_failures="2")
    cli(env, "db", "upgrade")
    cli(env, "feeds", "add", "--no-discover", f"{devserver.base_url}/gone.xml")
    for _ in range(2):
        cli(env, "fetch", "--all", "--inline", check=False)
    listed = cli(env, "feeds", "list", "--json").stdout
    assert '"enabled": false' in listed and "disabled after 2 consecutive permanent failures" in listed
    assert '"permanent_failures": 2' in listed
    assert "enabled feed 1" in cli(env, "feeds", "enable", "1").stdout
    listed = cli(env, "feeds", "list", "--json").stdout
    assert '"enabled": true' in listed and '"permanent_failures": 0' in listed


def record_late(url, client, settings, pool, late):
    """What a worker process does with a batch's late fetches: its next batch records
    them once they finish (here a batch of no feeds of its own)."""
    from concurrent.futures import wait

    wait(late)
    with session_scope(url) as s:
        return pipeline.poll_feeds(s, client, [], settings, None, pool, finished=late).results


@pytest.mark.parametrize("min_delay, waited", [(0.3, True), (pipeline.SHORT_WAIT + 3, False)])
def test_a_batch_waits_briefly_on_its_threads_for_a_host_it_just_asked(setup, devserver, min_delay, waited):
    """Feeds of one host in one batch: a politeness delay within SHORT_WAIT is waited for
    on the fetch threads (every feed polled, the delay kept; one the batch stops waiting
    for is recorded late); a longer one leaves the feed to be deferred."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.politeness import make_politeness

    settings, client, url = setup
    settings = settings.model_copy(update={"polite_min_delay": min_delay, "polite_max_concurrent": 2})
    paths = [f"/same-host-{i}.xml" for i in range(3)]
    with session_scope(url) as s:
        ids = []
        for path in paths:
            devserver.add(path, b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>',
                          content_type="application/rss+xml")
            ids.append(store.add_feed(s, devserver.base_url + path)[0].id)
    devserver.clear_requests()
    polite = make_politeness(settings, client, None)
    with ThreadPoolExecutor(4) as pool:
        with session_scope(url) as s:
            batch = pipeline.poll_feeds(s, client, ids, settings, polite, pool, patience=100)
        late = record_late(url, client, settings, pool, batch.late)
    starts = sorted(r.at for r in devserver.requests if r.path in paths)
    if waited:
        assert batch.busy == []
        assert sorted(r.feed_id for r in batch.results + late) == ids
        assert len(starts) == 3 and min(b - a for a, b in zip(starts, starts[1:])) >= min_delay
        with session_scope(url) as s:
            assert sorted(s.exec(select(FetchEvent.feed_id)).all()) == ids
    else:
        assert len(batch.results) == 1 and len(starts) == 1
        assert [exc.wait.reason for _, exc in batch.busy] == ["delay", "delay"]
        assert all(exc.retry_after > pipeline.SHORT_WAIT for _, exc in batch.busy)


@contextmanager
def beside(tmp_path, devserver, **settings):
    """A SQLite database, a second local host beside *devserver*, and settings that let
    the client reach both: ``(database url, the second host, settings)``."""
    from worker.devserver import DevServer

    url = f"sqlite:///{tmp_path / 'p.db'}"
    upgrade(url)
    with DevServer() as other:
        yield url, other, Settings(database_url=url, var_dir=tmp_path,
                                   allowed_private_hosts=[devserver.host_port, other.host_port], **settings)


def test_a_slow_answer_does_not_hold_a_batch_that_waited_for_its_hosts_delay(tmp_path, devserver):
    """The batch's patience counts from each request's send, not from the batch's start:
    a batch that first waited 0.5 s for a host's delay still leaves a feed whose host is
    slow to answer (here after 1.5 s; the allowance is 0.1 s), and records it late.
    (It used to wait 3 times the batch's age, the delay included: 1.5 s more.)"""
    from concurrent.futures import ThreadPoolExecutor

    from worker.politeness import make_politeness

    feed = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    with beside(tmp_path, devserver, polite_min_delay=0.5) as (url, slow_host, settings):
        for path in ("/a.xml", "/b.xml"):
            devserver.add(path, feed, content_type="application/rss+xml")
        slow_host.add("/slow.xml", feed, content_type="application/rss+xml", delay=1.5)
        with http.make_client(settings) as client, ThreadPoolExecutor(4) as pool:
            with session_scope(url) as s:
                ids = [store.add_feed(s, devserver.base_url + "/a.xml")[0].id,
                       store.add_feed(s, devserver.base_url + "/b.xml")[0].id,      # waits 0.5 s for a's host
                       store.add_feed(s, slow_host.base_url + "/slow.xml")[0].id]
            polite = make_politeness(settings, client, None)
            with session_scope(url) as s:
                batch = pipeline.poll_feeds(s, client, ids, settings, polite, pool)
            assert sorted(r.feed_id for r in batch.results) == ids[:2]
            assert list(batch.late.values()) == [ids[2]]
            [late] = batch.late
            assert not late.done(), "the batch waited for the slow answer"
            [recorded] = record_late(url, client, settings, pool, batch.late)
    assert recorded.outcome.status == "ok"
    with session_scope(url) as s:
        assert sorted(s.exec(select(FetchEvent.feed_id)).all()) == ids


def test_once_half_have_answered_a_fetch_waiting_for_its_hosts_delay_does_not_hold_the_batch(tmp_path, devserver):
    """Two feeds of one host and one of another: the second waits 1.5 s on its thread for
    its host's delay (within SHORT_WAIT).  The batch records the other two and leaves it
    late, still waiting, instead of idling the worker process until its host is free
    (it used to wait for it); the process's next batch records it once it is done."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.politeness import make_politeness

    feed = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    with beside(tmp_path, devserver, polite_min_delay=1.5) as (url, other, settings):
        for path in ("/a.xml", "/b.xml"):
            devserver.add(path, feed, content_type="application/rss+xml")
        other.add("/c.xml", feed, content_type="application/rss+xml")
        assert settings.polite_min_delay < pipeline.SHORT_WAIT
        with http.make_client(settings) as client, ThreadPoolExecutor(4) as pool:
            with session_scope(url) as s:
                ids = [store.add_feed(s, devserver.base_url + "/a.xml")[0].id,
                       store.add_feed(s, devserver.base_url + "/b.xml")[0].id,
                       store.add_feed(s, other.base_url + "/c.xml")[0].id]
            polite = make_politeness(settings, client, None)
            with session_scope(url) as s:
                batch = pipeline.poll_feeds(s, client, ids, settings, polite, pool)
            assert sorted(r.feed_id for r in batch.results) == [ids[0], ids[2]]
            assert batch.busy == [] and list(batch.late.values()) == [ids[1]]
            assert not any(f.done() for f in batch.late), "the batch waited for the host's delay"
            [recorded] = record_late(url, client, settings, pool, batch.late)
        starts = sorted(r.at for r in devserver.requests)
    assert recorded.feed_id == ids[1] and recorded.outcome.status == "ok"
    assert len(starts) == 2 and starts[1] - starts[0] >= 1.5
    with session_scope(url) as s:
        assert sorted(s.exec(select(FetchEvent.feed_id)).all()) == ids


def test_a_fetch_stuck_behind_a_slow_answer_does_not_hold_its_batch_either(setup, devserver):
    """One thread: three quick feeds, then one whose host answers after 4 s, then one
    that cannot be sent until that thread is free.  The batch stops waiting SHORT_WAIT
    after its allowance, and both go late (the unsent one is sent and recorded later)."""
    from concurrent.futures import ThreadPoolExecutor

    settings, client, url = setup
    feed = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    paths = ["/q1.xml", "/q2.xml", "/q3.xml", "/hangs.xml", "/behind.xml"]
    with session_scope(url) as s:
        ids = []
        for path in paths:
            devserver.add(path, feed, content_type="application/rss+xml", delay=4.0 if path == "/hangs.xml" else 0)
            ids.append(store.add_feed(s, devserver.base_url + path)[0].id)
    with ThreadPoolExecutor(1) as pool:
        with session_scope(url) as s:
            batch = pipeline.poll_feeds(s, client, ids, settings, None, pool)
        assert sorted(r.feed_id for r in batch.results) == ids[:3]
        assert sorted(batch.late.values()) == ids[3:]
        assert not any(f.done() for f in batch.late), "the batch waited for the slow answer"
        late = record_late(url, client, settings, pool, batch.late)
    assert [r.outcome.status for r in late] == ["ok", "ok"]


@pytest.mark.parametrize("limiter", ["local", "redis"])
def test_a_feed_that_waited_for_a_thread_keeps_the_delay_to_a_request_granted_meanwhile(tmp_path, devserver,
                                                                                       request, limiter):
    """A batch takes its hosts' slots at once, but a fetch queued behind a slow one starts
    later than its grant.  Another worker's request to the same host, granted in between,
    must still be at least the delay apart from it (it used to be 0.4 s apart here)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from worker.politeness import make_politeness

    feed = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    redis_url = request.getfixturevalue("redis_url") if limiter == "redis" else None
    with beside(tmp_path, devserver, polite_min_delay=0.6, polite_max_concurrent=2) as (url, other, settings):
        devserver.add("/slow.xml", feed, content_type="application/rss+xml", delay=1.2)
        for path in ("/x.xml", "/y.xml"):
            other.add(path, feed, content_type="application/rss+xml")
        with http.make_client(settings) as client, ThreadPoolExecutor(1) as pool:    # x waits for the slow one
            with session_scope(url) as s:
                ids = [store.add_feed(s, devserver.base_url + "/slow.xml")[0].id,
                       store.add_feed(s, other.base_url + "/x.xml")[0].id]
            polite = make_politeness(settings, client, redis_url)

            def poll_batch() -> None:
                with session_scope(url) as s:
                    pipeline.poll_feeds(s, client, ids, settings, polite, pool, patience=100)

            batch = threading.Thread(target=poll_batch)
            batch.start()
            time.sleep(0.8)     # the batch took both slots at its start; x still waits for the thread
            with polite.gate(other.base_url + "/y.xml"):      # another worker asks the same host
                client.get(other.base_url + "/y.xml")
            batch.join()
        starts = sorted(r.at for r in other.requests)
    assert len(starts) == 2
    assert starts[1] - starts[0] >= 0.6


class _Boom(Exception):
    pass


@pytest.mark.parametrize("fails_in", ["process", "pages"])
def test_inline_groups_lose_no_entry_when_one_fails(tmp_path, fails_in):
    """`fetch --inline` commits its entries in groups; an entry that fails (or a page
    source that does: a busy host) keeps every article stored before it in its group."""
    from worker import runner

    url = f"sqlite:///{tmp_path}/groups.db"
    upgrade(url)
    links = [f"https://news.example/{i}" for i in range(5)]

    def pages():
        for i, link in enumerate(links):
            if fails_in == "pages" and i == 3:
                raise _Boom(link)
            yield link, pipeline.Page(link, tree=object())

    def process(s, link, page):
        assert (page.tree is None) == (link in seen), "stored again from its bytes, not from the pruned tree"
        if fails_in == "process" and link == links[3]:
            s.add(Feed(url=link + "/half-done"))        # written before the failure: must not be kept
            s.flush()
            raise _Boom(link)
        s.add(Feed(url=link))
        s.flush()
        seen.append(link)
        return pipeline.EntryResult(1, True)

    seen: list[str] = []
    with pytest.raises(_Boom), session_scope(url) as s:
        runner._store_entries(s, pages(), process, on_entry=lambda link: None)
    with session_scope(url) as s:
        stored = sorted(s.exec(select(Feed.url)).all())
    assert stored == links[:3]
    assert seen[:3] == links[:3] and len(seen) == (6 if fails_in == "process" else 3)   # the group, stored again


def test_a_batch_of_unchanged_feeds_leaves_nothing_for_the_orm_to_flush(setup, devserver):
    """Unchanged feeds are written by the batch's one UPDATE statement; their ORM objects
    stay clean (each used to be left modified, and flushed one by one at the commit)."""
    from concurrent.futures import ThreadPoolExecutor

    settings, client, url = setup
    feed = b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title></channel></rss>'
    with session_scope(url) as s:
        ids = []
        for i in range(5):
            devserver.add(f"/unchanged-{i}.xml", feed, content_type="application/rss+xml")
            ids.append(store.add_feed(s, f"{devserver.base_url}/unchanged-{i}.xml")[0].id)
    with ThreadPoolExecutor(4) as pool:
        for expected in ("ok", "not_modified"):
            with session_scope(url) as s:
                batch = pipeline.poll_feeds(s, client, ids, settings, None, pool)
                assert {r.outcome.status for r in batch.results} == {expected}
                dirty = len(s.dirty)
    assert dirty == 0
    with session_scope(url) as s:
        assert s.exec(select(FetchEvent.outcome)).all().count("not_modified") == 5
