"""Scheduling policy, in one place: a poll's outcome in, the feed's next state out."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

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


@dataclass
class FeedState:
    next_fetch_at: datetime
    error_count: int
    enabled: bool
    disabled_reason: Optional[str]


def next_state(
    outcome: PollOutcome, *, now: datetime, interval: Optional[int], error_count: int, settings: Settings,
    rng: random.Random | None = None,
) -> FeedState:
    """Success resets the error count and waits the feed's interval; failures back off
    exponentially with jitter (at least ``Retry-After``); a run of permanent failures
    disables the feed, with the reason kept."""
    rng = rng or random.Random()
    base = max(settings.min_interval, min(interval or settings.default_interval, settings.max_interval))
    if outcome.status in (OK, NOT_MODIFIED):
        return FeedState(now + timedelta(seconds=base), 0, True, None)
    errors = error_count + 1
    delay = min(settings.max_backoff, base * 2 ** min(errors - 1, 16))
    delay = delay * (0.75 + rng.random() * 0.5)         # jitter: spread retries of many feeds
    if outcome.retry_after:
        delay = max(delay, min(outcome.retry_after, settings.max_backoff))
    if outcome.status == PERMANENT and errors >= settings.disable_after_failures:
        reason = f"disabled after {errors} consecutive failures; last: {outcome.error}"
        return FeedState(now + timedelta(seconds=delay), errors, False, reason)
    return FeedState(now + timedelta(seconds=delay), errors, True, None)
