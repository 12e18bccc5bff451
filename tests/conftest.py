"""Shared fixtures: real Redis and PostgreSQL (started if none answers), the local
HTTP server, and the shared corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from tests.support.services import REDIS_TEST_DB, create_database, drop_database, ensure_postgres, ensure_redis
from worker.devserver import DevServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_url():
    url = f"{ensure_redis()}/{REDIS_TEST_DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def pg_url():
    admin = ensure_postgres()
    url = create_database(admin)
    yield url
    drop_database(admin, url)


@pytest.fixture
def own_db():
    """A PostgreSQL database of its own: `fetch --all` and beat see only this test's feeds."""
    admin = ensure_postgres()
    url = create_database(admin)
    yield url
    drop_database(admin, url)


@pytest.fixture
def devserver():
    with DevServer() as server:
        yield server


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    path = Path(os.environ.get("NEWSWORKER_CORPUS", ROOT.parent / "shared" / "corpus")).resolve()
    if not path.is_dir():
        message = f"shared corpus not found at {path}: set NEWSWORKER_CORPUS to its directory"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI requires the corpus)", pytrace=False)
        pytest.skip(message)
    return path
