"""The deployment files: docker compose (no engine here, so checked structurally),
the Celery configuration and the migrations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlmodel import SQLModel

from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_has_services_healthchecks_and_exactly_one_beat():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "worker", "beat"} <= set(services)
    for name in ("redis", "postgres", "worker"):
        assert services[name]["healthcheck"]["test"]
    assert services["beat"]["command"] == ["newsworker", "beat"]
    assert services["beat"].get("deploy", {}).get("replicas") == 1
    assert sum("beat" in " ".join(map(str, s.get("command", []))) for s in services.values()) == 1
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    env = compose["x-newsworker"]["environment"]
    fields = {f"NEWSWORKER_{k.upper()}" for k in Settings.model_fields}
    assert set(env) <= fields
    assert env["NEWSWORKER_BROKER_URL"].startswith("redis://")
    # Operations: the API (GET /metrics) and Flower, and the worker serving its task metrics.
    assert services["api"]["command"][:2] == ["newsworker", "api"] and "8000:8000" in services["api"]["ports"]
    assert services["api"]["healthcheck"]["test"] and "migrate" in services["api"]["depends_on"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "worker.celery_app", "flower"]
    assert "5555:5555" in services["flower"]["ports"]
    assert set(services["worker"]["environment"]) <= fields
    assert services["worker"]["environment"]["NEWSWORKER_METRICS_PORT"] in services["worker"]["expose"]


def test_celery_config_routes_tasks_to_separate_queues():
    from worker.celery_app import app

    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.task_routes["worker.tasks.poll_feed"]["queue"] == "feeds"
    assert conf.task_routes["worker.tasks.poll_feeds"]["queue"] == "feeds"
    assert conf.task_routes["worker.tasks.process_entry"]["queue"] == "articles"
    assert conf.task_routes["worker.tasks.process_entries"]["queue"] == "articles"
    import worker.tasks as tasks

    for t in (tasks.dispatch_due_feeds, tasks.poll_feed, tasks.poll_feeds, tasks.process_entry,
              tasks.process_entries, tasks.purge_expired):
        assert t.time_limit and t.soft_time_limit and t.soft_time_limit < t.time_limit


def test_migrations_match_the_models(tmp_path):
    """Upgrading an empty database yields exactly the tables and columns the models declare."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from worker import models  # noqa: F401
    from worker.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_object": _modelled}), SQLModel.metadata)
    engine.dispose()
    assert diff == []


def _modelled(obj, name, type_, reflected, compare_to) -> bool:
    """The full-text index (migration 0007) lives outside the models: SQLite's FTS5 table
    and its shadow tables, PostgreSQL's generated search_vector column."""
    return not (type_ == "table" and name.startswith("articles_fts")) and name != "search_vector"


def test_each_queue_has_its_own_routing_key():
    """Two queues bound to one exchange and key would each get a copy of every message."""
    from worker.celery_app import app

    keys = [(q.exchange.name, q.routing_key) for q in app.conf.task_queues]
    assert len(set(keys)) == len(keys) == 2


def test_visibility_timeout_exceeds_the_longest_task_and_countdown():
    """Redis redelivers an unacknowledged message after the visibility timeout: it must
    outlast the longest task and the longest retry countdown, or a healthy task runs twice."""
    from worker import tasks
    from worker.settings import Settings

    longest_task = max(t.time_limit for t in (tasks.dispatch_due_feeds, tasks.poll_feed, tasks.poll_feeds,
                                              tasks.process_entry, tasks.process_entries, tasks.purge_expired))
    longest_countdown = max(max(tasks.backoff(r) for r in range(20) for _ in range(50)), tasks.MAX_DEFER_SECONDS + 1)
    assert Settings().visibility_timeout > longest_task + longest_countdown
    # and it reaches the Redis transport
    code = "from worker.celery_app import app; print(app.conf.broker_transport_options['visibility_timeout'])"
    env = {**os.environ, "NEWSWORKER_BROKER_URL": "redis://127.0.0.1:6379/0", "NEWSWORKER_VISIBILITY_TIMEOUT": "4321"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "4321"


def test_a_redis_channel_closed_under_the_worker_asks_for_a_reconnect(redis_url):
    """kombu's race (worker/broker_compat.py): a channel whose connection is already gone
    restores its unacknowledged messages.  That must raise a connection error, which
    Celery ignores while closing and answers by reconnecting, not an AttributeError that
    kills the worker."""
    import kombu
    import redis as redis_lib

    import worker.celery_app  # noqa: F401 - installs the guard

    conn = kombu.Connection(redis_url)
    try:
        channel = conn.channel()
        assert channel._connparams()["host"] == "127.0.0.1"       # a live channel is untouched
        channel.connection.client = None                          # what the close leaves behind
        with pytest.raises(redis_lib.exceptions.ConnectionError) as caught:
            channel._connparams()
        assert isinstance(caught.value, conn.connection_errors)
    finally:
        conn.release()


_OPEN_RESOURCES = """
import logging, os, threading
import sqlalchemy as sa
logging.basicConfig()
from worker import tasks
from worker.db import get_engine, session_scope
tasks._open_process_resources()
for t in threading.enumerate():
    if t.name == "connect-database":
        t.join()
opened = get_engine().pool.checkedin()
if opened:      # the connection opened on that thread serves this one (SQLite too)
    with session_scope() as session:
        assert session.execute(sa.text("select 1")).scalar() == 1
print(tasks._client[0] == os.getpid(), tasks._polite[0] == os.getpid(), opened)
"""


@pytest.mark.parametrize("database", ["postgresql", "sqlite", "down"])
def test_a_pool_process_opens_its_client_and_a_database_connection_when_it_starts(pg_url, redis_url, tmp_path,
                                                                                  database):
    """worker_process_init: the HTTP client, host limiter and a pooled database
    connection exist before the first task; a database that is down at that moment is
    a logged warning, not a process that fails to start."""
    url = {"postgresql": pg_url, "sqlite": f"sqlite:///{tmp_path / 'nw.db'}",
           "down": "postgresql://postgres@127.0.0.1:9/nothing_listens_here"}[database]
    env = {**os.environ, "NEWSWORKER_DATABASE_URL": url, "NEWSWORKER_BROKER_URL": redis_url}
    done = subprocess.run([sys.executable, "-c", _OPEN_RESOURCES], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "0" if database == "down" else "1"]
    if database == "down":
        assert "could not connect to the database at worker start" in done.stderr
