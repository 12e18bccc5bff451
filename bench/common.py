"""Shared by the benchmarks and the corpus tests: the Zyte pages and token-level F1."""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TOKEN = re.compile(r"\w+", re.UNICODE)


def corpus_dir() -> Path:
    return Path(os.environ.get("NEWSWORKER_CORPUS", ROOT.parent / "shared" / "corpus")).resolve()


def zyte_pages(corpus: Path | None = None) -> list[tuple[str, str, bytes, str]]:
    """[(hash, original url, html bytes, ground-truth article body)] for the 181 pages."""
    base = (corpus or corpus_dir()) / "articles" / "zyte"
    truth = json.loads((base / "ground-truth.json").read_text())
    return [(h, t["url"], gzip.decompress((base / "html" / f"{h}.html.gz").read_bytes()), t["articleBody"])
            for h, t in sorted(truth.items())]


def token_f1(predicted: str, truth: str) -> float:
    """Token-level F1 (bag of lower-cased word tokens), as in the Zyte benchmark."""
    p, t = Counter(_TOKEN.findall(predicted.lower())), Counter(_TOKEN.findall(truth.lower()))
    common = sum((p & t).values())
    if not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(t.values())
    return 2 * precision * recall / (precision + recall)
