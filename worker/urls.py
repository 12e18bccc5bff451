"""URL canonicalisation: one spelling per article URL, so that the same page seen
through different feeds or with tracking parameters is stored once."""

from __future__ import annotations

from urllib.parse import urlsplit

from courlan import normalize_url


def canonicalise(url: str) -> str:
    """Lower-case scheme and host, drop default ports, fragments and tracking
    parameters (utm_*, fbclid, gclid, …) — courlan's strict normalisation."""
    url = url.strip()
    try:
        return normalize_url(url, strict=True)
    except (ValueError, TypeError):
        return url


def same_site(a: str, b: str) -> bool:
    """True when two URLs are on the same host, ignoring a leading ``www.``."""

    def host(u: str) -> str:
        h = (urlsplit(u).hostname or "").lower()
        return h[4:] if h.startswith("www.") else h

    return bool(host(a)) and host(a) == host(b)
