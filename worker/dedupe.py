"""Exact-copy detection: a fingerprint of the normalised text."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Optional

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise_for_hash(text: str) -> str:
    """Case, accents, punctuation and spacing folded, so trivially re-encoded copies match."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", folded).strip()


def content_hash(text: str) -> Optional[str]:
    """sha256 of the normalised text; None when there is no text to compare."""
    norm = normalise_for_hash(text)
    if len(norm) < 40:      # a title-length scrap is no evidence of a copy
        return None
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()
