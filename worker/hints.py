"""What a feed says about how often to poll it: RSS ``<ttl>``, the syndication module's
``sy:updatePeriod``/``sy:updateFrequency``, and the response's ``Cache-Control: max-age``
and ``Expires``.  Each is a "not more often than" hint, in seconds."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Mapping, Optional

_HEAD = 64 * 1024        # channel-level elements come before the items
_TTL = re.compile(rb"<ttl>\s*(\d{1,7})\s*</ttl>", re.I)
_SY_PERIOD = re.compile(rb"<(?:\w+:)?updatePeriod>\s*(\w+)\s*<", re.I)
_SY_FREQUENCY = re.compile(rb"<(?:\w+:)?updateFrequency>\s*(\d{1,6})\s*<", re.I)
_MAX_AGE = re.compile(r"(?:^|[,\s])(?:s-)?max-age\s*=\s*(\d+)", re.I)
_PERIODS = {b"hourly": 3600, b"daily": 86_400, b"weekly": 7 * 86_400, b"monthly": 30 * 86_400,
            b"yearly": 365 * 86_400}


def body_hint(content: bytes) -> Optional[int]:
    """Seconds the feed itself asks between polls (the larger of ttl and sy:), if any."""
    head = content[:_HEAD]
    hints = []
    if m := _TTL.search(head):
        hints.append(int(m.group(1)) * 60)                  # ttl is in minutes
    if m := _SY_PERIOD.search(head):
        period = _PERIODS.get(m.group(1).lower())
        freq = _SY_FREQUENCY.search(head)
        if period:
            hints.append(period // max(1, int(freq.group(1)) if freq else 1))
    return max(hints) if hints else None


def header_hint(headers: Mapping[str, str], now: Optional[datetime] = None) -> Optional[int]:
    """Seconds the response may be cached: ``Cache-Control`` max-age, else ``Expires``."""
    cc = headers.get("cache-control", "")
    if "no-cache" in cc.lower() or "no-store" in cc.lower():
        return None
    if m := _MAX_AGE.search(cc):
        return int(m.group(1))
    expires = headers.get("expires")
    if expires:
        try:
            when = parsedate_to_datetime(expires)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0, int((when - (now or datetime.now(timezone.utc))).total_seconds()))
    return None


def poll_hint(content: bytes, headers: Mapping[str, str], now: Optional[datetime] = None) -> Optional[int]:
    """The most conservative of the feed's and the response's hints."""
    hints = [h for h in (body_hint(content) if content else None, header_hint(headers, now)) if h]
    return max(hints) if hints else None
