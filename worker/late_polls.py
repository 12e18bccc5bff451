"""Fetches a poll batch stopped waiting for (:func:`pipeline.poll_feeds` returns them as
``late``), kept once they finish until the worker process's next batch records them in
its own transaction; when no batch comes within ``flush_after`` seconds (the queue is
empty), they are recorded by themselves on a timer thread.

Each used to be recorded in a transaction of its own, which cost more than its fetch;
and a batch that waited for them instead kept its process idle while their hosts'
politeness delays ran out.  A late fetch lost here (the process dies first) leaves its
feed claimed: the claim expires and the feed is polled again."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional

from .politeness import HostBusy

log = logging.getLogger(__name__)

FLUSH_AFTER = 0.5       # seconds a finished late fetch waits for the next batch to record it

Finished = dict[Future, tuple[int, int]]    # future -> (feed id, how often its poll was deferred)


class LatePolls:
    """Thread-safe: fetch threads add, a batch or the timer takes.  *record* is called
    with what the timer takes (never with nothing)."""

    def __init__(self, record: Callable[[Finished], None], flush_after: float = FLUSH_AFTER) -> None:
        self._record = record
        self._flush_after = flush_after
        self._lock = threading.Lock()
        self._finished: dict[Future, tuple[int, int, float]] = {}   # ... and when it finished (monotonic)
        self._timer: Optional[threading.Timer] = None

    def add(self, future: Future, feed_id: int, defers: int = 0) -> None:
        """Keep *future*'s fetch once it finishes (at once if it has)."""
        future.add_done_callback(lambda done: self._finish(done, feed_id, defers))

    def _finish(self, future: Future, feed_id: int, defers: int) -> None:
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or (exc is not None and not isinstance(exc, HostBusy)):
            # fetch_feed raises nothing else: a bug, or the pool shut down.  The claim expires.
            log.error("feed %s: a late poll did not finish (%s); polled again after NEWSWORKER_CLAIM_TIMEOUT",
                      feed_id, "cancelled" if exc is None else f"{type(exc).__name__}: {exc}",
                      extra={"feed_id": feed_id})
            return
        with self._lock:
            self._finished[future] = (feed_id, defers, time.monotonic())
            if self._timer is None:
                self._arm(self._flush_after)

    def _arm(self, seconds: float) -> None:
        self._timer = threading.Timer(seconds, self.flush, kwargs={"waited_only": True})
        self._timer.daemon = True
        self._timer.start()

    def take(self) -> Finished:
        """The finished late fetches no one has taken yet (a batch records them)."""
        with self._lock:
            finished, self._finished = self._finished, {}
        return {f: (feed_id, defers) for f, (feed_id, defers, _) in finished.items()}

    def flush(self, waited_only: bool = False) -> None:
        """Record what no batch took: everything (at a process's shutdown), or, from the
        timer, what has waited ``flush_after`` (the timer is set again for the rest)."""
        with self._lock:
            self._timer = None
            due = time.monotonic() - self._flush_after + 0.001
            taken = [f for f, (_, _, since) in self._finished.items() if since <= due or not waited_only]
            finished = {f: self._finished.pop(f)[:2] for f in taken}
            if self._finished:
                self._arm(min(since for _, _, since in self._finished.values()) - due)
        if not finished:
            return
        try:
            self._record(finished)
        except Exception:
            log.exception("recording %d late polls failed (feeds %s); they are polled again after "
                          "NEWSWORKER_CLAIM_TIMEOUT", len(finished), sorted(i for i, _ in finished.values()))
