"""Real Redis and PostgreSQL come up with no manual setup."""

from __future__ import annotations

import psycopg
import redis
import sqlalchemy as sa

from tests.support import services


def test_ensure_redis_answers_and_is_cached():
    url = services.ensure_redis()
    assert redis.Redis.from_url(url + f"/{services.REDIS_TEST_DB}").ping()
    assert services.ensure_redis() == url


def test_throwaway_redis_starts_even_when_one_is_running():
    url = services.start_redis()
    assert not url.endswith(":6379")
    client = redis.Redis.from_url(url + "/0")
    assert client.ping()
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_ensure_postgres_and_a_database_of_our_own():
    admin = services.ensure_postgres()
    url = services.create_database(admin)
    name = sa.make_url(url).database
    assert name.startswith("nw_test_")
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text("create table t (x int)"))
        conn.execute(sa.text("insert into t values (1)"))
    lingering = psycopg.connect(services._conninfo(url))  # open on purpose: the drop must still work
    assert lingering.execute("select x from t").fetchone() == (1,)
    services.drop_database(admin, url)
    lingering.close()
    with psycopg.connect(services._conninfo(admin)) as conn:
        assert conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None


def test_throwaway_postgres_starts_even_when_one_is_running():
    admin = services.start_postgres()
    assert ":5432/" not in admin
    url = services.create_database(admin)
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("show fsync")).scalar() == "off"
    services.drop_database(admin, url)


def test_session_fixtures_give_a_database_and_a_redis_db_of_our_own(pg_url, redis_url):
    assert sa.make_url(pg_url).database.startswith("nw_test_")
    with sa.create_engine(pg_url).connect() as conn:  # shared by the session: may hold tables already
        assert conn.execute(sa.text("select current_database()")).scalar() == sa.make_url(pg_url).database
    assert redis_url.endswith(f"/{services.REDIS_TEST_DB}") and redis.Redis.from_url(redis_url).ping()
