"""The Celery application.  ``celery -A worker.celery_app worker`` and
``newsworker worker`` start the same thing.  Configuration is read when Celery
first needs it: operator settings from config/celery.py, broker and backend
from newsworker's settings."""

from __future__ import annotations

import logging
import runpy
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, worker_init

from .broker_compat import guard_redis_channel_close
from .settings import get_settings

guard_redis_channel_close()


class _Config:
    """Celery reads this lazily (at first use of ``app.conf``), not at import."""

    def __init__(self) -> None:
        self._values: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._values is None:
            settings = get_settings()
            values = {k: v for k, v in runpy.run_path(str(settings.celery_config)).items()
                      if not k.startswith("_") and k.islower()}
            values["broker_url"] = settings.broker_url
            values["result_backend"] = settings.result_backend
            values["beat_schedule_filename"] = str(settings.var_dir / "celerybeat-schedule")
            values["beat_schedule"] = {name: {**entry, "schedule": settings.dispatch_interval}
                                       if entry.get("task") == "worker.tasks.dispatch_due_feeds" else entry
                                       for name, entry in values.get("beat_schedule", {}).items()}
            values["broker_transport_options"] = {**values.get("broker_transport_options", {}),
                                                  "visibility_timeout": settings.visibility_timeout}
            if settings.embedded:
                # kombu's SQLAlchemy transport hands its options to create_engine(), and
                # has no visibility timeout: Redis-only options must not reach it.
                values["broker_transport_options"] = {}
            self._values = values
        return self._values

    def __dir__(self) -> list[str]:
        return list(self._load())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._load()[name]
        except KeyError:
            raise AttributeError(name) from None


app = Celery("newsworker", include=["worker.tasks"])
app.config_from_object(_Config())

# Their Celery signal handlers: JSON logs with feed/article ids, task latency metrics
# (docs/operations.md).  Imported here so every process that loads the app has them.
from . import logs as _logs, metrics as _metrics  # noqa: E402,F401



@after_setup_logger.connect
def _quiet_libraries(**_: Any) -> None:
    # httpx logs every request at INFO: thousands of lines a minute at scale.  newsworker
    # logs what an operator needs (failed polls, dead letters) itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


@worker_init.connect
def _warm_up(**_: Any) -> None:
    # Load rules and models once in the parent, so every forked child starts with
    # them instead of paying for it on its first article.
    from .pipeline import warm_up

    warm_up()
