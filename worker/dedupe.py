"""Duplicate detection: exact copies by a hash of the normalised text, near copies
(syndicated versions of one story) by MinHash over word shingles."""

from __future__ import annotations

import functools
import hashlib
import re
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


@functools.lru_cache(maxsize=4)     # the content hash and the fingerprint normalise the same text
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


# ---------------------------------------------------------------- near copies (MinHash LSH)
#
# Syndicated copies of one story differ in headline, agency line, a paragraph more or
# less and boilerplate; their word 5-gram shingle sets still overlap heavily, while two
# outlets' own reports of one event share few 5-grams.  MinHash estimates the overlap;
# LSH bands let the database find candidates by equality on indexed band hashes, so the
# index lives in the database (table story_bands), shared by every worker process.

NUM_PERM = 128
SCHEME = "affine32"            # datasketch's hashing scheme: fixed, since signatures are stored
BANDS, ROWS = 42, 3            # candidate threshold ≈ (1/42)^(1/3) ≈ 0.29 Jaccard (126 of 128 permutations); measured in bench/eval_dedupe.py
SHINGLE_WORDS = 5
MAX_SHINGLE_WORDS = 3000       # the start of a story identifies it; bounds the cost
JACCARD_MIN = 0.5              # near copy: estimated Jaccard at least this …
CONTAINMENT_MIN = 0.8          # … or one copy (trimmed) mostly inside the other


@dataclass(frozen=True)
class Fingerprint:
    """What near-duplicate detection keeps of a text."""

    hashvalues: tuple[int, ...]     # the MinHash signature
    size: int                       # number of distinct shingles

    def bands(self) -> list[int]:
        """One signed 63-bit hash per LSH band (fits BIGINT on PostgreSQL and SQLite)."""
        return list(self._bands)

    @functools.cached_property
    def _bands(self) -> tuple[int, ...]:      # looked up, locked and stored: computed once
        out = []
        for b in range(BANDS):
            chunk = self.hashvalues[b * ROWS:(b + 1) * ROWS]
            digest = hashlib.blake2b(struct.pack(f"<B{ROWS}Q", b, *chunk), digest_size=8).digest()
            out.append(int.from_bytes(digest, "little", signed=True) >> 1)
        return tuple(out)

    def to_bytes(self) -> bytes:
        return struct.pack(f"<I{NUM_PERM}Q", self.size, *self.hashvalues)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Fingerprint":
        size, *values = struct.unpack(f"<I{NUM_PERM}Q", data)
        return cls(tuple(values), size)


def shingle_hashes(text: str) -> np.ndarray:
    """Distinct 32-bit hashes of the word 5-grams of the normalised text.  Words are
    hashed once (crc32) and combined per window with numpy, instead of building and
    hashing every 5-gram string."""
    import numpy as np      # here: the CLI's claim and listing paths import this module, not numpy (0.1 s)

    words = normalise_for_hash(text).split()[:MAX_SHINGLE_WORDS]
    if not words:
        return np.zeros(0, dtype=np.uint64)
    wh = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
    n = max(1, len(words) - SHINGLE_WORDS + 1)
    acc = np.zeros(n, dtype=np.uint64)
    for j in range(min(SHINGLE_WORDS, len(words))):
        acc = (acc * np.uint64(1_000_003) + wh[j:j + n]) & np.uint64(0xFFFFFFFF)
    return np.unique(acc)


def shingles(text: str) -> set[int]:
    """The shingle set itself (for exact Jaccard in evaluations)."""
    return set(shingle_hashes(text).tolist())


@functools.lru_cache(maxsize=1)
def _permutations() -> tuple[np.ndarray, np.ndarray]:
    """MinHash's seeded permutations, drawn once instead of for every text."""
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, seed=1, scheme=SCHEME).permutations


def fingerprint(text: str) -> Optional[Fingerprint]:
    """MinHash fingerprint of *text*; None when it is too short to compare (< 20 words)."""
    from datasketch import MinHash   # here: its package import pulls in scipy (~0.4 s) for LSH tuning we don't use

    hashes = shingle_hashes(text)
    if len(hashes) < 16:
        return None
    m = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=int, permutations=_permutations(), scheme=SCHEME)
    m.update_batch(hashes.tolist())
    return Fingerprint(tuple(int(v) for v in m.hashvalues), len(hashes))


def similarity(a: Fingerprint, b: Fingerprint) -> tuple[float, float]:
    """(estimated Jaccard, estimated containment of the smaller set in the larger)."""
    j = sum(x == y for x, y in zip(a.hashvalues, b.hashvalues)) / NUM_PERM
    small, large = sorted((a.size, b.size))
    inter = j * (a.size + b.size) / (1 + j)
    return j, min(1.0, inter / small) if small else 0.0


def same_story(a: Fingerprint, b: Fingerprint) -> bool:
    j, c = similarity(a, b)
    return j >= JACCARD_MIN or c >= CONTAINMENT_MIN
