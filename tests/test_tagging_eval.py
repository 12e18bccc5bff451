"""Regression guard: the defence tagger on the labelled corpus (bench/eval_tagging.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.tagging import load_tagger

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "config" / "tagging.yaml"

# Achieved with config/tagging.yaml at the time of writing: non-borderline F1 0.967,
# overall F1 0.898.  The floors leave a small margin for rule edits.
MIN_F1_NON_BORDERLINE = 0.94
MIN_F1_OVERALL = 0.87


def _eval_module():
    from bench import eval_tagging

    return eval_tagging


@pytest.mark.corpus
def test_tagger_f1_on_labelled_corpus() -> None:
    corpus = Path(os.environ.get("NEWSWORKER_CORPUS", Path(__file__).resolve().parents[1].parent / "shared" / "corpus"))
    dataset = corpus / "news" / "defence-dev.jsonl"
    if not dataset.is_file():
        message = "corpus not found; set NEWSWORKER_CORPUS"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    ev = _eval_module()
    items = ev.load_items(dataset)
    assert len(items) > 100
    report = ev.evaluate(items, load_tagger(RULES), timing_rounds=1)

    assert report.non_borderline.f1 >= MIN_F1_NON_BORDERLINE, report.as_dict()["non_borderline"]
    assert report.overall.f1 >= MIN_F1_OVERALL, report.as_dict()["overall"]
    # both kinds of error stay rare among clear-cut items
    assert report.non_borderline.precision >= 0.92 and report.non_borderline.recall >= 0.92
    # misclassified items are listed with their titles
    assert len(report.errors) == report.overall.fp + report.overall.fn
    assert all(e["title"] for e in report.errors)
