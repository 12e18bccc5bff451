"""The exceptions newsworker raises for expected failures.

Each carries the URL (or feed) it concerns and a hint for the operator; the CLI
prints ``str(error)`` as one line.  Hierarchy::

    NewsworkerError
    ├── ConfigError                 bad settings or config file
    ├── FeedNotFound                no feed with that id or URL
    ├── InvalidQuery                a search, filter or cursor that cannot be used
    │   └── InvalidCursor           a change-feed cursor that this database did not give
    └── FetchError(url)             anything that went wrong getting a URL
        ├── BlockedURL              scheme or address refused (private network, non-http)
        ├── TemporaryFetchError     worth retrying later: timeouts, connection errors, 5xx, 429
        └── PermanentFetchError     retrying will not help: 404, 410, other 4xx, too large
    └── FeedParseError(url)         the body is not a feed
"""

from __future__ import annotations


class NewsworkerError(Exception):
    """Base class of every expected failure."""

    hint: str = ""

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class ConfigError(NewsworkerError):
    hint = "check the settings and files under config/"


class FeedNotFound(NewsworkerError):
    hint = "see `newsworker feeds list`"


class InvalidQuery(NewsworkerError, ValueError):
    hint = "see docs/api.md for the search syntax and filters; a cursor must come from the previous page"


class InvalidCursor(InvalidQuery):
    hint = ("pass a cursor exactly as `newsworker changes` printed it (its last {\"cursor\": …} line), "
            "or no --cursor to read from the beginning")


class FetchError(NewsworkerError):
    def __init__(self, url: str, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(f"{url}: {message}")
        self.url = url
        self.reason = message
        self.status = status
        self.retry_after = retry_after


class BlockedURL(FetchError):
    hint = "to allow a local or private host, add host:port to NEWSWORKER_ALLOWED_PRIVATE_HOSTS"


class TemporaryFetchError(FetchError):
    hint = "will be retried with backoff"


class PermanentFetchError(FetchError):
    hint = "retrying will not help; check the URL"


class FeedParseError(FetchError):
    hint = "the URL does not serve RSS, Atom or JSON Feed; check it in a browser"
