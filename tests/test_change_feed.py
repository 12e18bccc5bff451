"""The consumer change feed (worker/changes.py, migration 0008) and its notifications,
on real PostgreSQL, SQLite, Redis and a Celery worker."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time

import psycopg
import pytest
import redis
import sqlalchemy as sa
from alembic import command
from sqlmodel import Session

from tests.support.proc import ROOT, WorkerProcess, base_env, cli, jsonl
from tests.support.services import _conninfo
from worker.changes import read_changes, start_cursor, with_articles
from worker.errors import InvalidCursor
from worker.demo import mount_site
from worker.migrate import alembic_config, upgrade
from worker.models import Article, ArticleEntity, Tag, utcnow

ARTICLES = Article.__table__
TAGS = Tag.__table__


# ---------------------------------------------------------------- helpers

def _engine(url: str, **kw) -> sa.Engine:
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _rec):  # noqa: ANN001 - as worker.db: WAL, writers queue
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=60000")

        return engine
    return sa.create_engine(url, **kw)


def _insert_article(conn: sa.Connection, n: object, text: str = "text", title: str | None = None) -> int:
    now = utcnow()
    return conn.execute(ARTICLES.insert().values(
        url=f"https://example.org/{n}", canonical_url=f"https://example.org/{n}", title=title or f"article {n}",
        text=text, text_source="page", fetched_at=now, created_at=now).returning(ARTICLES.c.id)).scalar_one()


def _tag(conn: sa.Connection, article_id: int, *names: str) -> None:
    conn.execute(TAGS.insert(), [{"article_id": article_id, "name": n, "score": 0.5, "evidence": [],
                                  "tagger_version": "test", "created_at": utcnow()} for n in names])


def _read_all(engine: sa.Engine, cursor: str | None = None, limit: int = 1000):
    out = []
    while True:
        with Session(engine) as s:
            batch, cursor = read_changes(s, cursor, limit)
        out += batch
        if len(batch) < limit:
            return out, cursor


def _kinds(changes) -> list[tuple[int, str]]:
    return [(c.article_id, c.kind) for c in changes]


@pytest.fixture
def pg_db(own_db):
    upgrade(own_db)
    engine = _engine(own_db, pool_size=20, max_overflow=10)
    yield own_db, engine
    engine.dispose()


@pytest.fixture
def sqlite_db(tmp_path):
    url = f"sqlite:///{tmp_path / 'newsworker.db'}"
    upgrade(url)
    engine = _engine(url)
    yield url, engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request):
    """Each test that takes *db* runs on both dialects."""
    yield request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "pg_db")


# ---------------------------------------------------------------- what is recorded, and the cursor

def test_stores_updates_and_retags_are_recorded_once_per_transaction(db):
    url, engine = db
    with engine.begin() as conn:
        a = _insert_article(conn, "a")
        _tag(conn, a, "defence", "defence.policy", "defence.industry")
        b = _insert_article(conn, "b")          # no tags: no `tagged` row
    changes, cursor = _read_all(engine)
    assert _kinds(changes) == [(a, "stored"), (a, "tagged"), (b, "stored")]
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)

    with engine.begin() as conn:
        conn.execute(ARTICLES.update().where(ARTICLES.c.id == a).values(feed_id=None, raw_page_id=None))
    assert _read_all(engine, cursor)[0] == []           # bookkeeping updates are no change

    with engine.begin() as conn:                        # re-extraction: text and tags rewritten
        conn.execute(ARTICLES.update().where(ARTICLES.c.id == a).values(text="new text", extracted_at=utcnow()))
        conn.execute(TAGS.delete().where(TAGS.c.article_id == a))
        _tag(conn, a, "defence")
    changes, cursor = _read_all(engine, cursor)
    assert _kinds(changes) == [(a, "updated"), (a, "tagged")]

    # The next transaction retags `a` again: its row must come after the cursor although the
    # last row already says (a, tagged) -- a consumer that read that row must still hear of it.
    with engine.begin() as conn:
        conn.execute(TAGS.delete().where(TAGS.c.article_id == a))
        _tag(conn, a, "defence.operations", "defence")
        conn.execute(ArticleEntity.__table__.insert().values(
            article_id=b, kind="country", name="Azerbaijan", code="AZ", evidence=["Azerbaijani"], mentions=1,
            tagger_version="test", created_at=utcnow()))
    changes, cursor = _read_all(engine, cursor)
    assert _kinds(changes) == [(a, "tagged"), (b, "tagged")]
    assert _read_all(engine, cursor) == ([], cursor)

    # Reading one row at a time gives the same feed as reading it whole.
    whole, _ = _read_all(engine)
    paged, _ = _read_all(engine, None, limit=1)
    assert [c.seq for c in paged] == [c.seq for c in whole]
    with Session(engine) as s:
        pairs = with_articles(s, whole)
    assert {ch.article_id: art["title"] for ch, art in pairs} == {a: "article a", b: "article b"}


def test_start_cursor_skips_history_and_sees_what_comes_next(db):
    _, engine = db
    with engine.begin() as conn:
        old = _insert_article(conn, "old")
    with Session(engine) as s:
        cursor = start_cursor(s)
    with engine.begin() as conn:
        new = _insert_article(conn, "new")
    changes, _ = _read_all(engine, cursor)
    assert _kinds(changes) == [(new, "stored")] and old != new


def test_malformed_cursor_is_a_clear_error(db, tmp_path):
    url, engine = db
    pg = url.startswith("postgresql")
    with Session(engine) as s:
        huge = "pg:1:9999999999999999999" if pg else "sqlite:9999999999999999999"     # above bigint
        for bad in ("garbage", "pg:1", "sqlite:", "sqlite:-1", "pg:x:1", "sqlite:1 or 1=1", huge):
            with pytest.raises(InvalidCursor, match="not a change-feed cursor"):
                read_changes(s, bad)
        other = "sqlite:5" if pg else "pg:10:5"
        with pytest.raises(InvalidCursor, match="belongs to a (SQLite|PostgreSQL) database"):
            read_changes(s, other)
    done = cli(base_env(tmp_path, database_url=url), "changes", "--cursor", "garbage", check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: cursor 'garbage' is not a change-feed cursor")
    assert "printed" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- PostgreSQL: commits out of order

def test_pg_transaction_committing_late_is_not_skipped(pg_db):
    """A takes its transaction id and the lower article id first but commits last; a
    reader polls in between.  An `id > last` cursor would skip A's row for good."""
    _, engine = pg_db
    with engine.begin() as conn:
        first = _insert_article(conn, "before")
    seen, cursor = _read_all(engine)
    assert _kinds(seen) == [(first, "stored")]

    a_conn, b_conn = engine.connect(), engine.connect()
    try:
        a_tx = a_conn.begin()
        a_id = _insert_article(a_conn, "slow")          # lower txid and lower id
        b_tx = b_conn.begin()
        b_id = _insert_article(b_conn, "fast")
        b_tx.commit()

        with engine.connect() as naive:                  # what a plain id cursor would do now
            naive_ids = naive.execute(sa.text("SELECT article_id FROM article_changes WHERE id > :s ORDER BY id"),
                                      {"s": seen[-1].seq}).scalars().all()
        assert naive_ids == [b_id]                       # ... and it would move past A's id

        batch, cursor = _read_all(engine, cursor)
        assert batch == []                               # B waits for A, below it
        a_tx.commit()
    finally:
        a_conn.close()
        b_conn.close()
    batch, cursor = _read_all(engine, cursor)
    assert _kinds(batch) == [(a_id, "stored"), (b_id, "stored")]
    assert a_id < b_id
    assert _read_all(engine, cursor)[0] == []


def test_pg_order_follows_transactions_not_ids(pg_db):
    """B inserts the lower article id inside the later transaction: the feed orders by
    transaction, and neither row is lost whichever commits first."""
    _, engine = pg_db
    a_conn, b_conn = engine.connect(), engine.connect()
    try:
        a_tx = a_conn.begin()
        a_conn.execute(sa.text("SELECT pg_current_xact_id()"))      # A's transaction id is taken first
        b_tx = b_conn.begin()
        b_id = _insert_article(b_conn, "b")
        a_id = _insert_article(a_conn, "a")
        b_tx.commit()
        assert _read_all(engine)[0] == []
        a_tx.commit()
    finally:
        a_conn.close()
        b_conn.close()
    changes, _ = _read_all(engine)
    assert _kinds(changes) == [(a_id, "stored"), (b_id, "stored")]
    assert changes[0].seq > changes[1].seq               # ids and commit order disagree; nothing lost


def test_pg_transaction_in_another_database_does_not_hold_the_feed(pg_db, pg_url):
    """The horizon leaves out transactions of the cluster's other databases (they cannot
    write this feed); one open in this database does hold it."""
    _, engine = pg_db
    with psycopg.connect(_conninfo(pg_url)) as elsewhere:          # a transaction, open, in another database
        elsewhere.execute("SELECT pg_current_xact_id()")
        with engine.begin() as conn:
            aid = _insert_article(conn, "while another database is busy")
        assert _kinds(_read_all(engine)[0]) == [(aid, "stored")]
        elsewhere.rollback()


def _reader(engine: sa.Engine, done: threading.Event, seen: list, limit: int) -> None:
    """Poll the feed while the writers run; after they are done, read until caught up."""
    cursor = None
    while True:
        finished = done.is_set()                          # before the read: that read sees every commit
        with Session(engine) as s:
            batch, cursor = read_changes(s, cursor, limit)
        seen.extend(batch)
        if finished and len(batch) < limit:
            return


def test_pg_concurrent_writers_reader_gets_every_change_exactly_once(pg_db):
    _, engine = pg_db
    writers, txns = 8, 15
    committed: list[int] = []
    rolled_back: list[int] = []
    lock = threading.Lock()
    half = threading.Barrier(writers + 1)
    lag_inserted, release = threading.Event(), threading.Event()
    laggard: list[int] = []

    def write(w: int) -> None:
        rnd = random.Random(w)
        for i in range(txns):
            if i == txns // 2:          # the second half runs while the laggard's row waits uncommitted
                half.wait()
                lag_inserted.wait()
            with engine.connect() as conn:
                tx = conn.begin()
                ids = [_insert_article(conn, f"w{w}-{i}-{k}") for k in range(rnd.randint(1, 3))]
                if rnd.random() < 0.5:
                    _tag(conn, ids[0], "defence", "defence.policy")
                time.sleep(rnd.random() / 100)           # commits interleave in every order
                if rnd.random() < 0.15:
                    tx.rollback()
                    with lock:
                        rolled_back.extend(ids)
                else:
                    tx.commit()
                    with lock:
                        committed.extend(ids)

    def lag() -> None:
        # Opens halfway through, inserts, and commits only after every writer finished.
        half.wait()
        with engine.connect() as conn:
            tx = conn.begin()
            laggard.append(_insert_article(conn, "laggard"))
            lag_inserted.set()
            release.wait()
            tx.commit()

    done, seen = threading.Event(), []
    reader = threading.Thread(target=_reader, args=(engine, done, seen, 7))
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)] + [threading.Thread(target=lag)]
    reader.start()
    for t in threads:
        t.start()
    for t in threads[:-1]:
        t.join()
    release.set()
    threads[-1].join()
    done.set()
    reader.join()

    seqs = [c.seq for c in seen]
    assert len(seqs) == len(set(seqs)), "a change was read twice"
    with engine.connect() as conn:
        table = set(conn.execute(sa.text("SELECT id FROM article_changes")).scalars())
        tagged = set(conn.execute(sa.text("SELECT DISTINCT article_id FROM tags")).scalars())
    assert set(seqs) == table, f"missed: {sorted(table - set(seqs))}"
    stored = {c.article_id for c in seen if c.kind == "stored"}
    assert stored == set(committed) | set(laggard)
    assert not stored & set(rolled_back) and rolled_back, "rolled-back work must leave no change"
    assert {c.article_id for c in seen if c.kind == "tagged"} == tagged
    # The laggard's row has a lower id than rows committed before it (the second halves): an
    # `id > last` cursor would have skipped it; this one returned it.
    lag_seq = next(c.seq for c in seen if c.article_id == laggard[0] and c.kind == "stored")
    assert sum(c.seq > lag_seq for c in seen) >= writers


def test_sqlite_concurrent_writers_reader_gets_every_change(sqlite_db):
    url, _ = sqlite_db
    writers, txns = 6, 12
    committed: list[int] = []
    lock = threading.Lock()
    engines = [_engine(url) for _ in range(writers + 1)]

    def write(w: int) -> None:
        rnd = random.Random(w)
        mine: list[int] = []
        for i in range(txns):
            with engines[w].begin() as conn:
                if mine and rnd.random() < 0.4:          # a retag of an article stored earlier
                    aid = rnd.choice(mine)
                    conn.execute(TAGS.delete().where(TAGS.c.article_id == aid))
                    _tag(conn, aid, "defence")
                else:
                    aid = _insert_article(conn, f"w{w}-{i}")
                    _tag(conn, aid, "defence", "defence.industry")
                    mine.append(aid)
                    with lock:
                        committed.append(aid)
                time.sleep(rnd.random() / 200)

    done, seen = threading.Event(), []
    reader = threading.Thread(target=_reader, args=(engines[-1], done, seen, 5))
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    for e in engines:
        e.dispose()

    seqs = [c.seq for c in seen]
    assert len(seqs) == len(set(seqs))
    final, _ = _read_all(_engine(url))
    assert {c.seq for c in final} <= set(seqs), "a committed change was never read"
    # A row the reader saw that is gone was moved to a later one (same article and kind).
    last = {(c.article_id, c.kind): c.seq for c in final}
    for c in seen:
        assert last[(c.article_id, c.kind)] >= c.seq
    assert {c.article_id for c in seen if c.kind == "stored"} == set(committed)


# ---------------------------------------------------------------- through the CLI and the real pipeline

@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_fetch_then_retag_through_the_cli(dialect, request, tmp_path, devserver):
    url = f"sqlite:///{tmp_path / 'newsworker.db'}" if dialect == "sqlite" else request.getfixturevalue("own_db")
    env = base_env(tmp_path, database_url=url, allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    for feed in mount_site(devserver):
        cli(env, "feeds", "add", feed)
    cli(env, "fetch", "--all", "--inline")

    lines = jsonl(cli(env, "changes", "--articles").stdout)
    assert list(lines[-1]) == ["cursor"]
    changes, cursor = lines[:-1], lines[-1]["cursor"]
    assert cursor == changes[-1]["cursor"]
    stored = [c for c in changes if c["kind"] == "stored"]
    assert len(stored) == 5 and len({c["article_id"] for c in stored}) == 5
    assert {c["kind"] for c in changes} <= {"stored", "tagged"}
    seed = next(c["article"] for c in stored if "Zakir Hasanov" in c["article"]["text"])
    assert "defence" in {t["name"] for t in seed["tags"]}
    tagged_ids = [c["article_id"] for c in changes if c["kind"] == "tagged"]
    assert seed["id"] in tagged_ids and len(tagged_ids) == len(set(tagged_ids))   # one per article

    again = jsonl(cli(env, "changes", "--cursor", cursor).stdout)
    assert again == [{"cursor": cursor}]

    cli(env, "retag")
    after = jsonl(cli(env, "changes", "--cursor", cursor).stdout)
    engine = _engine(url)
    with engine.connect() as conn:
        analysed = set(conn.execute(sa.text(
            "SELECT article_id FROM tags UNION SELECT article_id FROM entities")).scalars())
    engine.dispose()
    assert [c["kind"] for c in after[:-1]] == ["tagged"] * len(analysed)
    assert {c["article_id"] for c in after[:-1]} == analysed and seed["id"] in analysed


def test_follow_prints_changes_as_they_commit(pg_db, tmp_path):
    url, engine = pg_db
    env = base_env(tmp_path, database_url=url)
    proc = subprocess.Popen([sys.executable, "-m", "worker", "changes", "--follow", "--limit", "10"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(120, proc.kill)           # a hung follower fails the test, never the suite
    killer.start()
    try:
        with engine.begin() as conn:
            aid = _insert_article(conn, "followed")
        lines = []
        while not any(line.get("article_id") == aid for line in lines):
            line = proc.stdout.readline()
            assert line, f"follower exited: {proc.stderr.read()}"
            lines.append(json.loads(line))
        assert json.loads(proc.stdout.readline()).keys() == {"cursor"}
        assert lines[-1]["kind"] == "stored"
    finally:
        killer.cancel()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_example_consumer_resumes_from_its_cursor_file(dialect, request, tmp_path):
    url, engine = request.getfixturevalue("sqlite_db" if dialect == "sqlite" else "pg_db")
    cursor_file = tmp_path / "consumer.cursor"
    run = [sys.executable, str(ROOT / "examples" / "consume_changes.py"), "--database", url,
           "--cursor-file", str(cursor_file), "--once", "--limit", "2"]
    with engine.begin() as conn:
        ids = [_insert_article(conn, n) for n in range(3)]
    first = jsonl(subprocess.run(run, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert [(r["article_id"], r["kind"]) for r in first] == [(i, "stored") for i in ids]
    assert first[0]["title"] == "article 0"
    with engine.begin() as conn:
        more = _insert_article(conn, "more")
    second = jsonl(subprocess.run(run, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert [(r["article_id"], r["kind"]) for r in second] == [(more, "stored")]


# ---------------------------------------------------------------- migration

def test_migration_downgrades_and_upgrades_again(db):
    url, engine = db
    command.downgrade(alembic_config(url), "0007")
    with engine.begin() as conn:
        _tag(conn, _insert_article(conn, "while down"), "defence")   # no trigger left behind
        assert not sa.inspect(conn).has_table("article_changes")
    upgrade(url)
    with engine.begin() as conn:
        aid = _insert_article(conn, "after")
    assert _kinds(_read_all(engine)[0]) == [(aid, "stored")]


# ---------------------------------------------------------------- notifications

def test_pg_notify_arrives_at_commit_never_for_rollback(pg_db):
    url, engine = pg_db
    with psycopg.connect(_conninfo(url), autocommit=True) as listener:
        listener.execute("LISTEN newsworker_changes")
        with engine.connect() as conn:
            tx = conn.begin()
            _insert_article(conn, "rolled back")
            tx.rollback()
        with engine.begin() as conn:
            aid = _insert_article(conn, "kept")
            _tag(conn, aid, "defence", "defence.policy")
        notes = list(listener.notifies(timeout=30, stop_after=2))
    assert {n.channel for n in notes} == {"newsworker_changes"}
    got = [json.loads(n.payload) for n in notes]
    # Notifications come in commit order: the rolled-back insert would have been first.
    assert [(n["article_id"], n["kind"]) for n in got] == [(aid, "stored"), (aid, "tagged")]
    changes, _ = _read_all(engine)
    assert [n["seq"] for n in got] == [c.seq for c in changes]


def test_worker_publishes_new_articles_on_redis(devserver, own_db, redis_url, tmp_path):
    env = base_env(tmp_path, database_url=own_db, broker_url=redis_url, result_backend=redis_url,
                   allowed_private_hosts=devserver.host_port)
    cli(env, "db", "upgrade")
    for feed in mount_site(devserver):
        cli(env, "feeds", "add", feed)
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("newsworker:articles")
    worker = WorkerProcess(env, "--concurrency", "2", log=tmp_path / "worker.log")
    try:
        worker.wait_ready()
        out = cli(env, "fetch", "--all", "--wait", "--timeout", "300").stdout
        assert "articles new: 5, failures: 0" in out, out
        messages: dict[int, dict] = {}
        deadline = time.monotonic() + 60                 # a bound on waiting, not a measured time
        while len(messages) < 5 and time.monotonic() < deadline:
            m = pubsub.get_message(timeout=1.0)
            if m is None:
                continue
            body = json.loads(m["data"])
            # Channels span every Redis db: keep only this test's server's articles.
            if (body.get("url") or "").startswith(devserver.base_url):
                assert body["article_id"] not in messages, "an article was announced twice"
                messages[body["article_id"]] = body
        assert len(messages) == 5, f"got {messages}\n{worker.tail()}"
    finally:
        worker.stop()
        pubsub.close()
        client.close()
    feed = jsonl(cli(env, "changes", "--articles").stdout)
    stored = {c["article_id"]: c["article"] for c in feed[:-1] if c["kind"] == "stored"}
    assert set(stored) == set(messages)
    for aid, body in messages.items():
        assert body["kind"] == "stored"
        assert body["url"] == stored[aid]["canonical_url"]
        assert body["tags"] == sorted(t["name"] for t in stored[aid]["tags"])
    assert any("defence" in body["tags"] for body in messages.values())


def test_failed_publish_is_a_warning_not_an_error(sqlite_db, tmp_path):
    """Redis unreachable after the commit: the article stays stored, the call returns
    False and the warning names the article (nothing listens on the port)."""
    from tests.support.services import free_port

    url, engine = sqlite_db
    with engine.begin() as conn:
        aid = _insert_article(conn, "announced")
    env = base_env(tmp_path, database_url=url, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    code = f"from worker.changes import publish_stored; print(publish_stored({aid}, 'https://news.example/announced', ['defence']))"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    assert f"article {aid} is stored, but announcing it on Redis channel newsworker:articles failed" in done.stderr
    assert _kinds(_read_all(engine)[0]) == [(aid, "stored")]
