"""A guard around one known race in kombu's Redis transport (kombu 5.x).

A worker whose broker connection drops while it holds unacknowledged messages closes
its channel, and the channel's restore of those messages asks for a new Redis client
after the connection's ``client`` is already gone: the worker's main process dies with
``AttributeError: 'NoneType' object has no attribute 'hostname'`` (cf. celery/kombu#582)
instead of reconnecting.  Seen here in about one Redis restart in four.  The guard
raises the connection error it really is, which Celery handles by reconnecting; the
messages stay unacknowledged in Redis and come back after the visibility timeout."""

from __future__ import annotations

from typing import Any


def guard_redis_channel_close() -> None:
    """Install the guard (once; harmless when kombu already copes)."""
    import redis
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "newsworker_guard", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        if getattr(self.connection, "client", None) is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed; reconnecting")
        return original(self, asynchronous=asynchronous)

    _connparams.newsworker_guard = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = _connparams
