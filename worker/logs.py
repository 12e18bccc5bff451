"""Structured logs: with ``NEWSWORKER_LOG_FORMAT=json`` every record is one JSON object
per line (timestamp, level, logger, message, the task's name and id inside a task, and
``feed_id`` / ``feed_ids`` / ``article_id`` / ``url`` when known).

The ids come from a context variable that the Celery signals below fill from each
task's arguments (and from its result, for the article id), so a log call inside a task
carries them without passing ``extra``; a call made outside any task (a thread of a poll
batch) passes ``extra={"feed_id": ...}`` itself, which wins over the context."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from contextvars import ContextVar
from typing import Any, Optional

from celery.signals import (after_setup_logger, after_setup_task_logger, task_postrun, task_prerun,
                            task_success)

# The fields a record may carry about what it concerns, in this order in the output.
CONTEXT_FIELDS = ("feed_id", "feed_ids", "article_id", "url")
_context: ContextVar[dict[str, Any]] = ContextVar("newsworker_log_context", default={})


def bind(**ids: Any) -> None:
    """Add ids to the log context of the current task (or thread); None values are dropped."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v is not None}})


def clear() -> None:
    _context.set({})


def current() -> dict[str, Any]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the context ids and the current Celery task onto each record (a handler
    filter: it sees records of every logger that reaches the handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):        # an explicit extra= wins
                setattr(record, key, value)
        if not hasattr(record, "task_id"):
            from celery._state import get_current_task

            task = get_current_task()
            request = getattr(task, "request", None) if task is not None else None
            if request is not None and getattr(request, "id", None):
                record.task_id, record.task_name = request.id, task.name
        return True


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    # timestamp: ISO 8601 in UTC from the record's creation time; the rest are renamed
    # to the names log shippers expect.  Any extra= field (Celery's "data") follows.
    return JsonFormatter("%(levelname)s %(name)s %(message)s", timestamp=True,
                         rename_fields={"levelname": "level", "name": "logger"}, json_ensure_ascii=False)


def _wants_json() -> bool:
    from .settings import get_settings

    return get_settings().log_format == "json"


def apply(logger: logging.Logger, *, json_format: Optional[bool] = None) -> None:
    """Give *logger*'s handlers the JSON formatter (when configured) and the context filter."""
    as_json = _wants_json() if json_format is None else json_format
    for handler in logger.handlers:
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if as_json:
            handler.setFormatter(json_formatter())
    if as_json:
        logging.captureWarnings(True)       # warnings.warn() text would break the one-object-a-line stream
        _json_celery_notices()


def _json_celery_notices() -> None:
    """The worker's shutdown notices are written straight to stdout, not logged: write
    them as JSON lines too.  (Formatted by hand, no handler lock: they come from signal handlers.)"""
    import celery.apps.worker as celery_worker

    if getattr(celery_worker.safe_say, "_newsworker", False):
        return
    formatter = json_formatter()

    def say(msg: str, f: Any = sys.__stderr__) -> None:
        record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, msg, None, None)
        try:
            f.write(formatter.format(record) + "\n")
            f.flush()
        except Exception:       # as Celery's own: never fail a signal handler over a notice
            pass

    say._newsworker = True  # type: ignore[attr-defined]
    celery_worker.safe_say = say


def configure(level: int | str = logging.INFO, *, json_format: Optional[bool] = None) -> None:
    """Logging for the API and the CLI: one stderr handler on the root logger, text or
    JSON per ``NEWSWORKER_LOG_FORMAT``.  Idempotent."""
    root = logging.getLogger()
    if not root.handlers:       # else (uvicorn's config, a host application's) format those
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    apply(root, json_format=json_format)


def uvicorn_log_config() -> Optional[dict[str, Any]]:
    """``uvicorn.run(..., log_config=...)``: JSON for uvicorn's own loggers when configured,
    else None (uvicorn's default)."""
    if not _wants_json():
        return None
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json",
               "filters": ["context"]}
    return {
        "version": 1, "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"json": {"()": json_formatter}},
        "handlers": {"default": handler},
        "loggers": {name: {"handlers": ["default"], "level": "INFO", "propagate": False}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
        "root": {"handlers": ["default"], "level": "INFO"},
    }


# ---------------------------------------------------------------- Celery

@after_setup_logger.connect
def _on_setup_logger(logger: logging.Logger, **_: Any) -> None:
    apply(logger)           # the root logger: worker.pipeline, celery.worker, …


@after_setup_task_logger.connect
def _on_setup_task_logger(logger: logging.Logger, **_: Any) -> None:
    apply(logger)           # celery.task (worker.tasks logs there; it does not propagate)


@functools.lru_cache(maxsize=64)
def _signature(task: Any) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(task.run)      # bound: `self` of bind=True tasks is left out
    except (TypeError, ValueError):
        return None


@task_prerun.connect
def _bind_task_ids(task: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    clear()
    sig = _signature(task) if task is not None else None
    if sig is None:
        return
    try:
        arguments = sig.bind_partial(*(args or ()), **(kwargs or {})).arguments
    except TypeError:
        return
    entry = arguments.get("entry")
    bind(feed_id=arguments.get("feed_id"), feed_ids=arguments.get("feed_ids"),
         url=entry.get("link") if isinstance(entry, dict) else None)


@task_success.connect
def _bind_result_ids(result: Any = None, **_: Any) -> None:
    # Sent before Celery logs "Task … succeeded", so that line carries the article id.
    if isinstance(result, dict):
        bind(article_id=result.get("article_id"), feed_id=result.get("feed_id"))


@task_postrun.connect
def _clear_task_ids(**_: Any) -> None:
    clear()
