"""Shared by the benchmarks and the corpus tests: the Zyte pages and token-level F1."""

from __future__ import annotations

import gzip
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_TOKEN = re.compile(r"\w+", re.UNICODE)


def machine_reference() -> str:
    """How fast this machine is right now (a fixed pure-Python loop), printed with absolute
    figures: on a shared machine the same code runs up to three times slower at times."""
    import time

    t0 = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return f"machine reference: 5M-step Python loop in {time.perf_counter() - t0:.2f} s"


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


@dataclass
class Counts:
    """A confusion matrix for one yes/no decision (defence or not; same story or not)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, gold: bool, pred: bool) -> None:
        if gold and pred:
            self.tp += 1
        elif pred:
            self.fp += 1
        elif gold:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    # An empty denominator (nothing claimed, or nothing to find) counts as no error.
    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "positives": self.tp + self.fn, "negatives": self.fp + self.tn, "tp": self.tp,
                "fp": self.fp, "fn": self.fn, "tn": self.tn, "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "f1": round(self.f1, 4)}
