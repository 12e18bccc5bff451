"""Raw page and feed bodies, kept zstd-compressed so text and metadata can be rebuilt
(``newsworker reextract``) without fetching again."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Optional

import zstandard

_local = threading.local()       # zstd (de)compressors are not thread-safe: one per thread
LEVEL = 3                        # zstd's default: ~4x smaller HTML at a fraction of a millisecond a page


@dataclass(frozen=True)
class RawBody:
    """A fetched body, compressed, ready to store in ``raw_documents``."""

    kind: str                    # page | feed
    url: str                     # final URL, after redirects
    sha256: str                  # of the uncompressed body
    size: int
    body: bytes                  # zstd frame
    content_type: Optional[str] = None


def pack(kind: str, url: str, content: bytes, content_type: Optional[str] = None,
         sha256: Optional[str] = None) -> RawBody:
    """*content* compressed; *sha256* when the caller hashed it already."""
    if not hasattr(_local, "c"):
        _local.c = zstandard.ZstdCompressor(level=LEVEL)
    return RawBody(kind, url, sha256 or hashlib.sha256(content).hexdigest(), len(content),
                   _local.c.compress(content), content_type or None)


def unpack(body: bytes) -> bytes:
    """The original bytes (our frames record their size, so nothing is guessed)."""
    if not hasattr(_local, "d"):
        _local.d = zstandard.ZstdDecompressor()
    return _local.d.decompress(body)
