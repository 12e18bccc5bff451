"""Unit tests of worker/dedupe.py on texts written for them (no corpus needed).

A pair is "merged" as the pipeline decides it (worker/store.py find_story): at least one
equal LSH band hash, confirmed by same_story."""

from __future__ import annotations

import pytest

from worker import dedupe
from worker.dedupe import Fingerprint, content_hash, fingerprint, same_story, similarity

STORY = [
    "The city council voted on Tuesday to close the Old Harbour Bridge to all motor traffic for eighteen "
    "months while engineers replace its corroded steel deck, a decision that will divert about 40,000 "
    "vehicles a day onto already congested routes.",
    "Councillors approved the plan by 31 votes to 9 after a four-hour debate in which several members "
    "warned that businesses on the eastern bank would lose trade during the works.",
    "Mayor Helen Okafor said the council had no safe alternative. \"Inspectors found that parts of the "
    "deck can no longer carry heavy lorries, and we will not gamble with people's lives,\" she told reporters "
    "outside the town hall.",
    "The bridge, opened in 1912, carries the main road between the railway station and the eastern "
    "districts. A temporary footbridge and a free shuttle bus will be provided, and the ferry service will "
    "run every ten minutes at peak times.",
    "The replacement deck will cost an estimated 62 million pounds, two thirds of it paid by the national "
    "transport fund. Work is due to start in March, with the contractor to be named next month.",
    "Opposition councillor David Marsh called the timetable unrealistic and said the council had ignored "
    "warnings about the state of the bridge for more than a decade. \"This crisis was entirely predictable,\" "
    "he said.",
    "Local traders have set up a campaign group to press for compensation, arguing that the shuttle bus "
    "will not bring enough customers across the river to keep small shops open.",
]

# Another outlet's own report of the same decision: same event, people and figures, other words.
OTHER_REPORT = [
    "Drivers face a year and a half of disruption after councillors backed a full closure of the Old Harbour "
    "Bridge, whose steel deck has been eaten away by rust.",
    "Thirty-one councillors supported the closure and nine opposed it at a long and at times bad-tempered "
    "meeting, where shop owners from the east bank packed the public gallery.",
    "Helen Okafor, the mayor, defended the move, saying engineers had told her heavy goods vehicles could "
    "no longer use the crossing safely and that she was not prepared to take chances.",
    "Around 40,000 cars and lorries cross the 1912 structure every day. The council has promised a "
    "pedestrian bridge, extra ferries and a shuttle service linking the station with the eastern suburbs.",
    "Rebuilding the deck is expected to cost 62 million pounds, with most of the money coming from "
    "central government. Opposition member David Marsh accused the ruling group of ignoring the problem "
    "for years, and retailers say they will seek compensation for lost business.",
]

UNRELATED = [
    "Scientists studying a remote glacier in the southern Andes have recorded the fastest rate of ice loss "
    "ever measured there, according to a study published on Monday in a leading geoscience journal.",
    "The team used drones and satellite images to track the glacier over six summers and found that its "
    "front had retreated by almost two kilometres, exposing a lake that did not exist a decade ago.",
    "The researchers said warmer air was only part of the explanation; rain falling on the ice in late "
    "summer had accelerated melting in ways that computer models had not predicted.",
    "They called for more monitoring stations in the region, where data remain scarce because of the "
    "difficult terrain and the high cost of expeditions.",
]


def text(paras: list[str]) -> str:
    return "\n\n".join(paras)


def merged(a: str, b: str) -> bool:
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa is not None and fb is not None
    return bool(set(fa.bands()) & set(fb.bands())) and same_story(fa, fb)


def assert_near_copy(a: str, b: str) -> None:
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa is not None and fb is not None
    sims = similarity(fa, fb)
    assert same_story(fa, fb), sims
    assert set(fa.bands()) & set(fb.bands()), f"no shared LSH band, similarity {sims}"


ORIGINAL = text(STORY)


# ----------------------------------------------------------------------------- exact copies


def test_exact_copy_has_same_content_hash() -> None:
    assert content_hash(ORIGINAL) == content_hash(ORIGINAL)
    assert content_hash(ORIGINAL) is not None


def test_content_hash_ignores_case_spacing_punctuation_and_compatibility_forms() -> None:
    reencoded = (ORIGINAL.upper().replace("\n\n", "   \r\n").replace('"', "\u201c").replace(",", " ,")
                 .replace("fi", "\ufb01"))                   # typographic quotes, the fi ligature
    assert content_hash(reencoded) == content_hash(ORIGINAL)


def test_content_hash_differs_when_a_word_changes() -> None:
    assert content_hash(ORIGINAL.replace("eighteen months", "nineteen months")) != content_hash(ORIGINAL)


def test_content_hash_none_for_title_length_text() -> None:
    assert content_hash("Bridge to close") is None
    assert content_hash("") is None


# ----------------------------------------------------------------------------- near copies


def test_identical_text_is_same_story_with_all_bands_equal() -> None:
    fa, fb = fingerprint(ORIGINAL), fingerprint(ORIGINAL)
    assert fa == fb and fa is not None
    assert similarity(fa, fb) == (1.0, 1.0)
    assert merged(ORIGINAL, ORIGINAL)


@pytest.mark.parametrize("variant", [
    pytest.param("LONDON (Reuters) - " + ORIGINAL, id="agency-dateline"),
    pytest.param("By Staff Reporter | AP\n\n" + ORIGINAL, id="agency-byline"),
    pytest.param("Harbour bridge to shut for 18 months as rust forces council's hand\n\n" + ORIGINAL,
                 id="new-headline"),
    pytest.param(text(STORY[:3] + STORY[4:]), id="paragraph-dropped"),
    pytest.param(text(STORY[:2] + [STORY[3], STORY[2]] + STORY[4:]), id="paragraphs-swapped"),
    pytest.param(ORIGINAL + "\n\nRead more: Ferry fares to rise in April\n\nSubscribe to our newsletter for "
                 "the day's top stories.\n\n\u00a9 2024 Example Media Group. All rights reserved.",
                 id="boilerplate"),
    pytest.param(text(STORY[:5]), id="trimmed-to-first-paragraphs"),
    pytest.param("UPDATE 1-Harbour bridge to close\n\nPARIS (AFP) - " + text(STORY[:4] + STORY[5:])
                 + "\n\nReporting by Jane Doe; editing by John Smith.", id="combined-edits"),
])
def test_syndicated_near_copy_is_same_story_and_shares_a_band(variant: str) -> None:
    assert_near_copy(ORIGINAL, variant)
    assert content_hash(variant) != content_hash(ORIGINAL)   # not an exact copy: MinHash has to find it


def test_trimmed_copy_is_found_by_containment() -> None:
    trimmed = text(STORY[:5])
    fa, fb = fingerprint(ORIGINAL), fingerprint(trimmed)
    assert fa is not None and fb is not None
    j, c = similarity(fa, fb)
    assert c >= dedupe.CONTAINMENT_MIN
    assert c > j


def test_different_reports_of_the_same_event_are_not_same_story() -> None:
    fa, fb = fingerprint(ORIGINAL), fingerprint(text(OTHER_REPORT))
    assert fa is not None and fb is not None
    j, c = similarity(fa, fb)
    assert not same_story(fa, fb), (j, c)
    assert j < 0.2 and c < 0.3
    assert not merged(ORIGINAL, text(OTHER_REPORT))


def test_same_house_boilerplate_does_not_merge_different_stories() -> None:
    dress = "\n\nSubscribe to our newsletter for the day's top stories.\n\n\u00a9 2024 Example Media Group. All rights reserved."
    a = "By Staff Reporter | AP\n\n" + ORIGINAL + dress
    b = "By Staff Reporter | AP\n\n" + text(OTHER_REPORT) + dress
    assert not merged(a, b)


def test_unrelated_story_shares_nothing() -> None:
    fa, fb = fingerprint(ORIGINAL), fingerprint(text(UNRELATED))
    assert fa is not None and fb is not None
    assert similarity(fa, fb)[0] < 0.05
    assert not same_story(fa, fb)
    assert not set(fa.bands()) & set(fb.bands())


# ----------------------------------------------------------------------------- short texts, serialisation


@pytest.mark.parametrize("short", [
    "",
    "   \n ",
    "Bridge to close",
    "Council votes to shut the Old Harbour Bridge for eighteen months of repairs.",          # 13 words
    " ".join(["word"] * 100),                                                                 # one distinct shingle
    " ".join(f"w{i}" for i in range(19)),                                                     # 19 words: 15 shingles
])
def test_short_texts_have_no_fingerprint(short: str) -> None:
    assert fingerprint(short) is None


def test_twenty_distinct_words_are_enough() -> None:
    assert fingerprint(" ".join(f"w{i}" for i in range(20))) is not None


def test_fingerprint_bytes_round_trip() -> None:
    fp = fingerprint(ORIGINAL)
    assert fp is not None
    data = fp.to_bytes()
    assert isinstance(data, bytes) and len(data) == 4 + 8 * dedupe.NUM_PERM
    back = Fingerprint.from_bytes(data)
    assert back == fp
    assert back.bands() == fp.bands()
    assert similarity(back, fp) == (1.0, 1.0)


def test_bands_fit_a_signed_bigint_and_are_stable() -> None:
    fp = fingerprint(ORIGINAL)
    assert fp is not None
    bands = fp.bands()
    assert len(bands) == dedupe.BANDS
    assert all(-(2 ** 63) <= b < 2 ** 63 for b in bands)
    assert len(set(bands)) == len(bands)              # the band index is part of each hash
    assert fingerprint(ORIGINAL).bands() == bands      # deterministic (fixed MinHash seed)
