"""Regression guard: near-duplicate detection on the shared corpus (bench/eval_dedupe.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

# Achieved with worker/dedupe.py as written (MinHash 128, LSH 32 bands x 4 rows, 5-word
# shingles, J >= 0.5 or C >= 0.8), bench/eval_dedupe.py seed 20220408:
#   (a) real republished BBC pairs: precision 1.000, recall 1.000 (34 copies, 3126 negatives)
#   (b) generated variants: precision 1.000, recall 0.956; 0 merges of 1211 same-topic pairs
#       (as published and with shared house boilerplate); per kind: single edits 1.000,
#       trim 0.960, trim_40 0.702, trim+headline+boilerplate 0.869, all_edits 0.986
#   (c) SemEval English: no merge of a clearly different pair (Overall >= 3.5); recall 0.
# The floors sit a little below, so a regression fails while a small change does not.
# (The targets, recall >= 0.98 on near copies, are not all met yet: see the eval report.)
MIN_REPUBLISHED_RECALL = 0.97
MIN_REPUBLISHED_PRECISION = 0.97
MIN_SYNDICATION_RECALL = 0.94
MIN_SYNDICATION_PRECISION = 0.99
MIN_KIND_RECALL = {
    "headline": 0.99, "agency_intro": 0.99, "drop_paragraph": 0.99, "swap_paragraphs": 0.99,
    "boilerplate": 0.99, "headline+agency+boilerplate": 0.99, "agency+drop+swap": 0.98,
    "trim": 0.94, "trim_40": 0.67, "trim+headline+boilerplate": 0.84, "all_edits": 0.96,
}


def _eval_module():
    from bench import eval_dedupe

    return eval_dedupe


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    corpus = Path(os.environ.get("NEWSWORKER_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
    if not (corpus / "dupes" / "bbc-republished-pairs.jsonl").is_file():
        message = f"corpus not found at {corpus}; set NEWSWORKER_CORPUS"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return _eval_module().evaluate(corpus)


@pytest.mark.corpus
def test_real_republished_pairs(result: dict[str, Any]) -> None:
    a = result["republished"]
    assert a["pairs"] == 40 and a["gold_copies"] >= 30
    assert a["recall"] >= MIN_REPUBLISHED_RECALL, a["misses"]
    assert a["precision"] >= MIN_REPUBLISHED_PRECISION, (a["false_merges"], a["not_copy_pairs_merged"])
    assert a["cross_story_false_merges"] == 0, a["false_merges"]


@pytest.mark.corpus
def test_generated_syndication_variants(result: dict[str, Any]) -> None:
    b = result["syndication"]
    assert b["sources"] >= 250
    assert b["recall"] >= MIN_SYNDICATION_RECALL, b["misses"][:20]
    assert b["precision"] >= MIN_SYNDICATION_PRECISION, b["false_merges"]
    for kind, floor in MIN_KIND_RECALL.items():
        assert b["by_kind"][kind]["recall"] >= floor, (kind, b["by_kind"][kind])


@pytest.mark.corpus
def test_no_merge_of_different_stories_on_one_topic(result: dict[str, Any]) -> None:
    b = result["syndication"]
    assert b["same_topic_pairs"] >= 1000
    assert b["same_topic_false_merges"] == 0, b["false_merges"]
    assert b["same_topic_dressed_false_merges"] == 0, b["false_merges"]


@pytest.mark.corpus
def test_semeval_clearly_different_pairs_never_merge(result: dict[str, Any]) -> None:
    c = result["semeval"]
    assert c["all"]["positives"] + c["all"]["negatives"] == 161       # the English pairs
    assert c["clear_negatives_only"]["fp"] == 0, c["false_merges"]
