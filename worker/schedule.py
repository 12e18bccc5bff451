"""Scheduling policy, in one place: a poll's outcome in, the feed's next state out."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional, Sequence

from .settings import Settings

OK = "ok"
NOT_MODIFIED = "not_modified"
TEMPORARY = "temporary"
PERMANENT = "permanent"


@dataclass
class PollOutcome:
    """How a poll ended, as data.  ``status`` is one of OK, NOT_MODIFIED, TEMPORARY, PERMANENT."""

    status: str
    http_status: Optional[int] = None
    error: Optional[str] = None
    retry_after: Optional[float] = None     # seconds, from the server's Retry-After
    etag: Optional[str] = None
    last_modified: Optional[str] = None
    items_seen: int = 0
    items_new: int = 0
    items_rejected: int = 0                 # entries dropped: link not http(s), past the entry cap
    published: Sequence[datetime] = ()      # the entries' dates, to learn how often the feed publishes
    hint_seconds: Optional[int] = None      # the feed's own "not more often than" (ttl, sy:, Cache-Control)


@dataclass
class FeedState:
    next_fetch_at: datetime
    error_count: int
    enabled: bool
    disabled_reason: Optional[str]
    fetch_interval: int = 0                 # the learned interval (seconds), kept on the feed
    permanent_failures: int = 0             # consecutive permanent failures


def publishing_gap(published: Sequence[datetime], recent: int = 20) -> Optional[float]:
    """Median seconds between the feed's most recent entries, if at least three are dated."""
    dates = sorted({d for d in published if d is not None}, reverse=True)[:recent]
    if len(dates) < 3:
        return None
    return statistics.median((a - b).total_seconds() for a, b in zip(dates, dates[1:]))


def adapt_interval(current: Optional[int], outcome: PollOutcome, settings: Settings) -> int:
    """The interval a successful poll suggests: half the feed's typical gap between
    entries when it dates them, else a nudge (shorter after new items, longer after
    none); never below the feed's own hint; within the configured bounds."""
    base = current or settings.default_interval
    gap = publishing_gap(outcome.published)
    if gap is not None:
        target = gap / 2
    elif outcome.items_new:
        target = base * 0.75
    else:
        target = base * 1.25
    target = max(target, outcome.hint_seconds or 0)
    return int(max(settings.min_interval, min(target, settings.max_interval)))


def next_state(
    outcome: PollOutcome, *, now: datetime, interval: Optional[int], error_count: int, settings: Settings,
    rng: random.Random | None = None, fetch_interval: Optional[int] = None, permanent_failures: int = 0,
) -> FeedState:
    """Success resets the error counts and waits the feed's interval: the operator's
    override (*interval*) if set, else the learned one; failures back off exponentially
    with jitter (at least ``Retry-After``); a run of permanent failures disables the
    feed, with the reason kept."""
    rng = rng or random.Random()
    learned = fetch_interval or settings.default_interval
    if outcome.status in (OK, NOT_MODIFIED):
        learned = adapt_interval(fetch_interval, outcome, settings)
    base = max(settings.min_interval, min(interval or learned, settings.max_interval))
    if outcome.status in (OK, NOT_MODIFIED):
        return FeedState(now + timedelta(seconds=base), 0, True, None, learned, 0)
    errors = error_count + 1
    permanent = permanent_failures + 1 if outcome.status == PERMANENT else permanent_failures
    delay = min(settings.max_backoff, base * 2 ** min(errors - 1, 16))
    delay = delay * (0.75 + rng.random() * 0.5)         # jitter: spread retries of many feeds
    if outcome.retry_after:
        delay = max(delay, min(outcome.retry_after, settings.max_backoff))
    if outcome.status == PERMANENT and permanent >= settings.disable_after_failures:
        reason = f"disabled after {permanent} consecutive permanent failures; last: {outcome.error}"
        return FeedState(now + timedelta(seconds=delay), errors, False, reason, learned, permanent)
    return FeedState(now + timedelta(seconds=delay), errors, True, None, learned, permanent)
