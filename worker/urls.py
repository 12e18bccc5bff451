"""URL canonicalisation: one spelling per article URL, so that the same page seen
through different feeds, with tracking parameters, or as its AMP or mobile variant
is stored once."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from courlan import normalize_url

# Host prefixes of mobile and AMP editions of the same site.
_VARIANT_HOSTS = ("www.", "m.", "mobile.", "amp.")
# Query parameters that only select the AMP rendering.
_AMP_PARAMS = {("amp", ""), ("amp", "1"), ("amp", "true"), ("outputtype", "amp"), ("output", "amp")}
_AMP_PATH = re.compile(r"(?:^/amp(?=/))|(?:/amp/?$)|(?:\.amp(?=\.html?$))|(?:/amp(?=\.html?$))")


def canonicalise(url: str) -> str:
    """The canonical spelling of an article URL:

    - lower-case scheme and host, no default port, no fragment, no tracking parameters
      (utm_*, fbclid, gclid, ref, …: courlan's tracker list); other parameters stay,
      sorted: ``?v=``, ``?article=``, ``?sid=`` often name the article itself;
    - the site's plain host: ``www.``, ``m.``, ``mobile.`` and ``amp.`` prefixes dropped;
    - AMP variants folded: ``/amp/…``, ``…/amp``, ``story.amp.html``, ``?amp=1``;
    - no trailing slash, except for the root path.
    """
    url = url.strip()
    try:
        url = normalize_url(url, strict=False)
    except (ValueError, TypeError):
        return url
    parts = urlsplit(url)
    host = parts.netloc
    for prefix in _VARIANT_HOSTS:
        if host.startswith(prefix) and host.count(".") >= 2:
            host = host[len(prefix):]
            break
    path = _AMP_PATH.sub("", parts.path) or "/"
    if len(path) > 1 and path.endswith("/"):
        path = path.rstrip("/") or "/"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if (k.lower(), v.lower()) not in _AMP_PARAMS]
    return urlunsplit((parts.scheme, host, path, urlencode(query), ""))


def same_site(a: str, b: str) -> bool:
    """True when two URLs are on the same site, ignoring ``www.``/mobile/AMP host prefixes."""

    def host(u: str) -> str:
        h = (urlsplit(u).hostname or "").lower()
        for prefix in _VARIANT_HOSTS:
            if h.startswith(prefix) and h.count(".") >= 2:
                return h[len(prefix):]
        return h

    return bool(host(a)) and host(a) == host(b)
