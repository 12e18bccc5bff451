"""Evaluate the defence tagger on the labelled corpus.

Reads ``$NEWSWORKER_CORPUS/news/defence-dev.jsonl`` (default ``<repo>/../shared/corpus``):
one JSON object a line with ``id, source, section, title, text, label (1 = defence), borderline``.
Prints precision / recall / F1 for ``defence`` overall, per source and on non-borderline
items, the misclassified items, and the tagging speed.

    .venv/bin/python bench/eval_tagging.py [--rules config/tagging.yaml] [--json] [--quiet]

Exit status: 0 after a report, 2 when the corpus is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import Counts, corpus_dir  # noqa: E402
from worker.tagging import Tagger, load_tagger  # noqa: E402

DATASET = Path("news") / "defence-dev.jsonl"



@dataclass
class Report:
    overall: Counts = field(default_factory=Counts)
    non_borderline: Counts = field(default_factory=Counts)
    borderline: Counts = field(default_factory=Counts)
    by_source: dict[str, Counts] = field(default_factory=lambda: defaultdict(Counts))
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    articles: int = 0

    @property
    def ms_per_article(self) -> float:
        return 1000.0 * self.seconds / self.articles if self.articles else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.as_dict(),
            "non_borderline": self.non_borderline.as_dict(),
            "borderline": self.borderline.as_dict(),
            "by_source": {k: v.as_dict() for k, v in sorted(self.by_source.items())},
            "errors": self.errors,
            "articles": self.articles,
            "ms_per_article": round(self.ms_per_article, 4),
            "articles_per_second": round(self.articles / self.seconds, 1) if self.seconds else None,
        }


def load_items(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def evaluate(items: Iterable[dict[str, Any]], tagger: Tagger, timing_rounds: int = 3) -> Report:
    items = list(items)
    report = Report()
    for it in items:
        tags = tagger.tag(it.get("title"), it.get("text"), it.get("language") or "en")
        pred = bool(tags) and tags[0].name == "defence"
        gold = int(it["label"]) == 1
        border = bool(int(it.get("borderline") or 0))
        report.overall.add(gold, pred)
        report.by_source[it.get("source", "?")].add(gold, pred)
        (report.borderline if border else report.non_borderline).add(gold, pred)
        if gold != pred:
            ex = tagger.explain(it.get("title"), it.get("text"), it.get("language") or "en")
            report.errors.append({
                "id": it["id"], "source": it.get("source"), "title": (it.get("title") or "").strip(),
                "label": int(gold), "borderline": int(border), "score": ex.score,
                "raw": ex.details["raw"], "evidence": ex.evidence[:6],
                "negative": [m["phrase"] for m in ex.details["negative_evidence"][:4]],
            })
    # timing: several passes over all items, tagger already warm
    t0 = time.perf_counter()
    for _ in range(timing_rounds):
        for it in items:
            tagger.tag(it.get("title"), it.get("text"), it.get("language") or "en")
    report.seconds = time.perf_counter() - t0
    report.articles = timing_rounds * len(items)
    return report


def _line(name: str, c: Counts) -> str:
    return (f"{name:<22} n={c.n:<4} P={c.precision:.3f}  R={c.recall:.3f}  F1={c.f1:.3f}"
            f"   (tp={c.tp} fp={c.fp} fn={c.fn} tn={c.tn})")


def print_report(report: Report, tagger: Tagger, quiet: bool = False) -> None:
    print(f"defence tagger {tagger.version}  ({tagger.source})")
    print(_line("overall", report.overall))
    print(_line("non-borderline", report.non_borderline))
    print(_line("borderline", report.borderline))
    for src, c in sorted(report.by_source.items()):
        print(_line(f"source={src}", c))
    print(f"speed: {report.articles / report.seconds:,.0f} articles/s, {report.ms_per_article:.3f} ms/article "
          f"({report.articles} taggings)")
    if quiet:
        return
    print(f"\nmisclassified ({len(report.errors)}):")
    for e in sorted(report.errors, key=lambda e: (e["borderline"], e["label"], e["source"])):
        kind = "FN" if e["label"] else "FP"
        b = " borderline" if e["borderline"] else ""
        print(f"  {kind}{b:<11} {e['id']}  score={e['score']:.2f} raw={e['raw']:.2f}  {e['title'][:80]!r}")
        print(f"      +{e['evidence']}  -{e['negative']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", help="tagging rules file (default: settings.tagging_rules)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--quiet", action="store_true", help="figures only, no error list")
    args = ap.parse_args(argv)

    path = corpus_dir() / DATASET
    if not path.is_file():
        print(f"eval_tagging: {path} not found; set NEWSWORKER_CORPUS to the shared corpus directory",
              file=sys.stderr)
        return 2
    tagger = Tagger.from_file(args.rules) if args.rules else load_tagger()
    report = evaluate(load_items(path), tagger)
    if args.json:
        print(json.dumps({"tagger_version": tagger.version, **report.as_dict()}, indent=2, ensure_ascii=False))
    else:
        print_report(report, tagger, args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
