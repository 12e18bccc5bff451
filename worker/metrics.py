"""Prometheus metrics (docs/operations.md lists them).

Two sources, so the numbers are right however many workers run on however many machines:

* durable counts are read from the database at scrape time (:class:`DatabaseCollector`:
  polls by outcome, articles by text source, tags, feeds, dead letters) and the queue
  depth from the broker (:class:`BrokerCollector`), by whoever serves ``render()`` (the
  API's ``GET /metrics``);
* task latency is measured where tasks run: Celery signals observe two histograms in
  every pool process, written to ``NEWSWORKER_METRICS_DIR`` by prometheus_client's
  multiprocess mode and served by the worker's main process on ``NEWSWORKER_METRICS_PORT``
  (and included by ``render()`` when that directory is on the same machine).

prometheus_client is imported lazily: its multiprocess switch is read once, at import,
from ``PROMETHEUS_MULTIPROC_DIR``, which the worker sets before its pool forks."""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

import sqlalchemy as sa
from celery.signals import (before_task_publish, task_postrun, task_prerun, worker_init, worker_process_shutdown,
                            worker_ready)

from .settings import Settings, get_settings

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISHED_HEADER = "newsworker_published_at"     # epoch seconds, stamped on every task message
TASK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
QUEUE_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
REDIS_PRIORITY_SEP = "\x06\x16"     # kombu's Redis transport keeps priorities 3, 6, 9 in lists "<queue>\x06\x16<n>"


def overdue_after(settings: Settings) -> float:
    """A feed is overdue once its next poll is this many seconds late (five dispatcher
    runs: a healthy dispatcher claims a due feed within one)."""
    return max(300.0, 5 * settings.dispatch_interval)


# ---------------------------------------------------------------- scrape-time collectors

class DatabaseCollector:
    """Counts derived from the database at scrape time: one GROUP BY per table."""

    def __init__(self, session: Any, settings: Settings):
        self.session, self.settings = session, settings

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        run = self.session.execute
        polls = CounterMetricFamily("newsworker_polls", "Feed polls recorded, by outcome (fetch_events).",
                                    labels=["outcome"])
        for outcome, count in sorted(_poll_counts.read(self.session).items()):
            polls.add_metric([outcome], count)
        yield polls

        by_source = dict(run(sa.text("SELECT text_source, count(*) FROM articles GROUP BY text_source")).all())
        yield CounterMetricFamily("newsworker_articles", "Articles stored.", value=sum(by_source.values()))
        sources = CounterMetricFamily(
            "newsworker_articles_by_text_source",
            "Articles stored, by where their text came from: page, or a fallback (feed_content, feed_summary, "
            "title) when the page could not be used.", labels=["source"])
        for source, count in sorted(by_source.items()):
            sources.add_metric([source], count)
        yield sources

        tags = CounterMetricFamily("newsworker_tags", "Tags given to stored articles, by tag name.", labels=["name"])
        for name, count in run(sa.text("SELECT name, count(*) FROM tags GROUP BY name ORDER BY name")):
            tags.add_metric([name], count)
        yield tags

        late = datetime.now(timezone.utc) - timedelta(seconds=overdue_after(self.settings))
        if self.session.get_bind().dialect.name == "sqlite":
            late = late.replace(tzinfo=None)        # stored naive UTC there (models.UTCDateTime)
        feeds = GaugeMetricFamily("newsworker_feeds", "Feeds, by state (a feed is disabled by hand or after "
                                  "NEWSWORKER_DISABLE_AFTER_FAILURES consecutive permanent failures).",
                                  labels=["state"])
        counts = {True: 0, False: 0}
        overdue = 0
        for enabled, count, late_count in run(sa.text(
                "SELECT enabled, count(*), sum(CASE WHEN next_fetch_at < :late THEN 1 ELSE 0 END) "
                "FROM feeds GROUP BY enabled"), {"late": late}):
            counts[bool(enabled)] += count
            overdue += (late_count or 0) if enabled else 0
        feeds.add_metric(["enabled"], counts[True])
        feeds.add_metric(["disabled"], counts[False])
        yield feeds
        yield GaugeMetricFamily("newsworker_feeds_overdue",
                                f"Enabled feeds whose next poll is more than {overdue_after(self.settings):.0f} s "
                                "late (dispatcher or workers behind, or down).", value=overdue)
        yield CounterMetricFamily("newsworker_dead_letters", "Tasks set aside in dead_letters.",
                                  value=run(sa.text("SELECT count(*) FROM dead_letters")).scalar_one())


SETTLED_AFTER = 3600    # s; a fetch_events row is written within minutes of its poll's start (task time limits)


class PollCounts:
    """Polls by outcome without scanning ``fetch_events`` (a row per poll: millions) on
    every scrape.  Rows up to a settled id are counted once and kept (in this process);
    each scrape counts only the newer rows, through the primary key.  An id is settled
    when its row started more than ``SETTLED_AFTER`` ago: every lower id is committed by
    then (ids are allocated at insert, and no poll transaction stays open that long)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: Optional[str] = None
        self._base: Counter[str] = Counter()
        self._upto = 0

    def read(self, session: Any) -> dict[str, int]:
        bind = session.get_bind()
        run = session.execute
        settled_before = datetime.now(timezone.utc) - timedelta(seconds=SETTLED_AFTER)
        if bind.dialect.name == "sqlite":
            settled_before = settled_before.replace(tzinfo=None)    # stored naive UTC there
        count = "SELECT outcome, count(*) FROM fetch_events WHERE id > :low"
        with self._lock:
            key = bind.url.render_as_string(hide_password=True)
            if key != self._key:
                self._key, self._base, self._upto = key, Counter(), 0
            # max(id) with a filter: PostgreSQL walks the primary key backwards over the last hour's rows.
            settled = run(sa.text("SELECT max(id) FROM fetch_events WHERE started_at < :t"),
                          {"t": settled_before}).scalar() or 0
            if settled > self._upto:
                self._base.update(dict(run(sa.text(count + " AND id <= :high GROUP BY outcome"),
                                           {"low": self._upto, "high": settled}).all()))
                self._upto = settled
            fresh = Counter(dict(run(sa.text(count + " GROUP BY outcome"), {"low": self._upto}).all()))
            return dict(self._base + fresh)


_poll_counts = PollCounts()


def queue_names() -> list[str]:
    """The queues tasks are routed to (config/celery.py), the default queue included."""
    from .celery_app import app

    names = [q.name for q in (app.conf.task_queues or ())]
    default = app.conf.task_default_queue
    return names + ([default] if default and default not in names else [])


_broker_engines: dict[str, sa.Engine] = {}


class BrokerCollector:
    """Messages waiting in each queue, read from the broker at scrape time: Redis list
    lengths, or the visible rows of kombu's SQLAlchemy transport (the embedded broker).
    Messages with a countdown (retries, deferrals) are held by a worker, not counted."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def depths(self) -> dict[str, int]:
        url = self.settings.broker_url
        names = queue_names()
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
            try:
                pipe = client.pipeline(transaction=False)
                keys = [(n, key) for n in names for key in (n, *(f"{n}{REDIS_PRIORITY_SEP}{p}" for p in (3, 6, 9)))]
                for _, key in keys:
                    pipe.llen(key)
                depths = dict.fromkeys(names, 0)
                for (name, _), length in zip(keys, pipe.execute()):
                    depths[name] += length
                return depths
            finally:
                client.close()
        if url.startswith("sqla+"):
            db_url = url.removeprefix("sqla+")
            engine = _broker_engines.get(db_url) or _broker_engines.setdefault(db_url, sa.create_engine(db_url))
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("kombu_message"):
                    return dict.fromkeys(names, 0)      # no message sent yet
                rows = conn.execute(sa.text(
                    "SELECT q.name, count(m.id) FROM kombu_queue q LEFT JOIN kombu_message m "
                    "ON m.queue_id = q.id AND m.visible GROUP BY q.name")).all()
            return {**dict.fromkeys(names, 0), **{name: count for name, count in rows if name in names}}
        raise ValueError(f"queue depth: broker {url.split(':', 1)[0]!r} not supported")

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            depths: Optional[dict[str, int]] = self.depths()
        except Exception as exc:       # a broker that is down must not fail the whole scrape
            log.warning("metrics: cannot read queue depths from the broker: %s", exc)
            depths = None
        yield GaugeMetricFamily("newsworker_broker_up", "1 if the broker answered this scrape.",
                                value=0 if depths is None else 1)
        if depths is not None:
            gauge = GaugeMetricFamily("newsworker_queue_depth", "Task messages waiting in each broker queue.",
                                      labels=["queue"])
            for name, depth in sorted(depths.items()):
                gauge.add_metric([name], depth)
            yield gauge


def render(session: Any, settings: Optional[Settings] = None) -> tuple[bytes, str]:
    """The exposition for ``GET /metrics``: database counts, queue depths and, when the
    worker metrics directory is on this machine, the task latency histograms.
    Returns (body, content type)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    settings = settings or get_settings()
    # auto_describe off: registering must not run the collectors' queries an extra time.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(session, settings))
    registry.register(BrokerCollector(settings))
    if settings.metrics_dir is not None and Path(settings.metrics_dir).is_dir():
        MultiProcessCollector(registry, path=str(settings.metrics_dir))
    return generate_latest(registry), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------- worker: task latency

def prepare_dir(path: Path) -> None:
    """Create the multiprocess directory and drop the files of processes that are gone
    (a previous run's): the files of live ones, maybe another worker's, are kept."""
    path.mkdir(parents=True, exist_ok=True)
    for f in glob.glob(str(path / "*.db")):
        match = re.search(r"_(\d+)\.db$", f)
        if match and not _alive(int(match.group(1))):
            try:
                os.remove(f)
            except FileNotFoundError:
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_environment(settings: Settings) -> None:
    """Before the worker's pool forks: every process writes its metrics to the directory."""
    assert settings.metrics_dir is not None
    prepare_dir(Path(settings.metrics_dir))
    os.environ[MULTIPROC_ENV] = str(Path(settings.metrics_dir).resolve())


_histograms: Optional[tuple[Any, Any]] = None
_started: dict[str, float] = {}


def _task_histograms() -> Optional[tuple[Any, Any]]:
    """The two histograms, created on first use in each pool process; None outside a
    worker set up for multiprocess metrics (an in-process registry nobody scrapes)."""
    global _histograms
    if _histograms is None:
        if not os.environ.get(MULTIPROC_ENV):
            return None
        from prometheus_client import Histogram, values

        if not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus_client was imported before the variable was set: switch now.
            values.ValueClass = values.MultiProcessValue()
        _histograms = (
            Histogram("newsworker_task_seconds", "Task run time in the worker, by task and final state.",
                      ["task", "state"], buckets=TASK_BUCKETS, registry=None),
            Histogram("newsworker_task_queue_seconds", "Time from a task's publication (or its ETA, for a "
                      "countdown) until a worker started it.", ["task"], buckets=QUEUE_BUCKETS, registry=None),
        )
    return _histograms


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@before_task_publish.connect
def _stamp_published(headers: Optional[dict[str, Any]] = None, **_: Any) -> None:
    if headers is not None:
        headers[PUBLISHED_HEADER] = time.time()     # overwritten on each publish: a retry waits anew


@task_prerun.connect
def _task_started(task_id: str = "", task: Any = None, **_: Any) -> None:
    histograms = _task_histograms()
    if histograms is None or task is None or task.request.is_eager:
        return
    _started[task_id] = time.perf_counter()
    request = task.request
    published = getattr(request, PUBLISHED_HEADER, None) or (getattr(request, "headers", None) or {}).get(
        PUBLISHED_HEADER)
    if published is None:
        return          # sent by a publisher without this module's signal: wait unknown
    ready = float(published)
    if request.eta:     # a countdown is not waiting in a queue
        try:
            ready = max(ready, datetime.fromisoformat(str(request.eta)).timestamp())
        except ValueError:
            pass
    histograms[1].labels(_short(task.name)).observe(max(0.0, time.time() - ready))


@task_postrun.connect
def _task_finished(task_id: str = "", task: Any = None, state: Optional[str] = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    histograms = _task_histograms()
    if histograms is None or started is None or task is None:
        return
    histograms[0].labels(_short(task.name), state or "UNKNOWN").observe(time.perf_counter() - started)


@worker_init.connect
def _worker_init(**_: Any) -> None:
    # `celery -A worker.celery_app worker` too, not only `newsworker worker`: before the pool forks.
    if not os.environ.get(MULTIPROC_ENV):
        worker_environment(get_settings())


@worker_ready.connect
def _serve_worker_metrics(**_: Any) -> None:
    port = get_settings().metrics_port
    path = os.environ.get(MULTIPROC_ENV)
    if not port or not path:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    start_http_server(port, registry=registry)      # a daemon thread in the main process
    log.info("serving worker task metrics on port %s from %s", port, path)


@worker_process_shutdown.connect
def _process_gone(pid: Optional[int] = None, **_: Any) -> None:
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid(), path)
