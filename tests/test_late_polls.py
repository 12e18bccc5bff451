"""A worker process's late fetches: taken by its next batch, or recorded by themselves
when no batch comes (worker/late_polls.py)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future

from worker.late_polls import LatePolls
from worker.politeness import HostBusy, Wait


def finished(result: object = None, exc: BaseException | None = None) -> Future:
    future: Future = Future()
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
    return future


def test_a_batch_takes_each_finished_fetch_once_and_none_still_running():
    recorded: list = []
    late = LatePolls(recorded.append, flush_after=60)
    done, running = finished("fetched"), Future()
    late.add(done, 1, defers=2)
    late.add(running, 2)
    assert late.take() == {done: (1, 2)}
    assert late.take() == {}
    running.set_result("fetched later")
    assert late.take() == {running: (2, 0)}
    assert recorded == []


def test_fetches_no_batch_takes_are_recorded_by_themselves():
    recorded: list = []
    flushed = threading.Event()
    late = LatePolls(lambda got: (recorded.append(got), flushed.set()), flush_after=0.05)
    busy = HostBusy("http://a.example/feed", Wait("a.example", 3.0, "delay"), 2.0)
    first, second = finished("fetched"), finished(exc=busy)   # a host that stayed busy is deferred by the batch
    late.add(first, 1)
    late.add(second, 2)
    assert flushed.wait(5), "nothing recorded the late fetches"
    assert recorded == [{first: (1, 0), second: (2, 0)}]
    assert late.take() == {}


def test_the_timer_records_only_what_waited_its_time_and_nothing_a_batch_took():
    """A fetch a batch took is never recorded again; one that finished just before the
    timer went off waits its own full time for a batch (the timer is set again for it)."""
    recorded: list = []
    got = threading.Semaphore(0)
    late = LatePolls(lambda finished: (recorded.append(finished), got.release()), flush_after=1.0)
    taken = finished("fetched")
    late.add(taken, 1)
    assert late.take() == {taken: (1, 0)}      # the next batch took it
    first = finished("fetched")
    late.add(first, 2)
    time.sleep(0.1)
    second = finished("fetched")
    late.add(second, 3)
    assert got.acquire(timeout=10) and got.acquire(timeout=10), recorded
    assert recorded == [{first: (2, 0)}, {second: (3, 0)}]


def test_a_fetch_that_did_not_finish_is_logged_and_left_to_its_claim(caplog):
    recorded: list = []
    late = LatePolls(recorded.append, flush_after=60)
    cancelled: Future = Future()
    cancelled.cancel()
    with caplog.at_level(logging.ERROR, logger="worker.late_polls"):
        late.add(cancelled, 7)
        late.add(finished(exc=RuntimeError("a bug")), 8)
    assert late.take() == {}
    messages = [r.getMessage() for r in caplog.records]
    assert any("feed 7" in m and "cancelled" in m and "NEWSWORKER_CLAIM_TIMEOUT" in m for m in messages)
    assert any("feed 8" in m and "RuntimeError: a bug" in m for m in messages)


def test_a_failed_recording_is_logged_with_its_feeds(caplog):
    def fails(_):
        raise ConnectionError("database went away")

    late = LatePolls(fails, flush_after=60)
    late.add(finished("fetched"), 3)
    late.add(finished("fetched"), 4)
    with caplog.at_level(logging.ERROR, logger="worker.late_polls"):
        late.flush()
    [record] = caplog.records
    assert "2 late polls" in record.getMessage() and "[3, 4]" in record.getMessage()
    assert late.take() == {}
