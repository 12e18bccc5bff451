"""Unit tests for the rule-based defence tagger (worker/tagging.py, config/tagging.yaml)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.tagging import Tagger, TagResult, fold, load_tagger

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "config" / "tagging.yaml"
SEED = Path(__file__).resolve().parent / "fixtures" / "seed_story.txt"
SEED_TITLE = "Azerbaijani Defence Minister meets Turkish Deputy National Defence Minister"


@pytest.fixture(scope="module")
def tagger() -> Tagger:
    return load_tagger(RULES)


def names(tags: list[TagResult]) -> list[str]:
    return [t.name for t in tags]


# ---------------------------------------------------------------- the seed story

def test_seed_story_is_defence_and_diplomacy(tagger: Tagger) -> None:
    tags = tagger.tag(SEED_TITLE, SEED.read_text(encoding="utf-8"), "en")
    assert tags and tags[0].name == "defence"
    assert "defence.diplomacy" in names(tags)
    assert "defence.operations" not in names(tags)       # a meeting, not an operation
    defence = tags[0]
    assert defence.score >= defence.details["threshold"]
    assert "Defence Minister" in defence.evidence
    assert "Colonel General" in defence.evidence
    assert "Deputy National Defence Minister" in defence.evidence      # as written in the title
    assert len({fold(e) for e in defence.evidence}) == len(defence.evidence)   # de-duplicated
    diplomacy = tags[names(tags).index("defence.diplomacy")]
    assert {"delegation", "working visit"} <= set(diplomacy.evidence)
    assert diplomacy.iptc_code and diplomacy.iptc_code.startswith("medtop:")


def test_seed_story_body_alone_is_defence_and_diplomacy(tagger: Tagger) -> None:
    tags = tagger.tag(None, SEED.read_text(encoding="utf-8"))
    assert names(tags)[:1] == ["defence"]
    assert "defence.diplomacy" in names(tags)


def test_strongest_evidence_comes_first(tagger: Tagger) -> None:
    defence = tagger.tag(SEED_TITLE, SEED.read_text(encoding="utf-8"), "en")[0]
    contributions = [m["contribution"] for m in defence.details["matches"]]
    assert contributions == sorted(contributions, reverse=True)
    assert fold(defence.evidence[0]) == fold(defence.details["matches"][0]["phrase"])


# ---------------------------------------------------------------- hard negatives

HARD_NEGATIVES = {
    "football title defence": (
        "Rovers begin their title defence with a win",
        "The champions began the defence of their Premier League title with a 2-0 win on Saturday. "
        "Their defender scored the opener and the goalkeeper kept a clean sheet as the coach praised "
        "the team's defensive play in the first match of the season."),
    "murder trial": (
        "Murder trial hears closing arguments",
        "The defence argued that the accused acted in self-defence when he stabbed the victim outside a "
        "nightclub. The defence lawyer told the jury that the prosecution had failed to prove intent. The "
        "judge will sum up the case on Monday and the jury is expected to retire to consider its verdict."),
    "police": (
        "Police arrest three after armed robbery",
        "Police officers arrested three men after an armed robbery at a jewellery shop in the town centre. "
        "Detectives said the gang threatened staff with a knife and a replica gun before escaping in a "
        "stolen car. A police spokesman said the force had stepped up patrols."),
    "cybersecurity company": (
        "Security firm unveils new defence against ransomware",
        "A cybersecurity company has launched software that it says offers a stronger defence against "
        "ransomware attacks. The firm's antivirus and firewall products protect corporate networks from "
        "hackers and malware, and its chief executive said revenue rose 20% in the quarter."),
    "civil nuclear plant": (
        "New reactor approved at nuclear power plant",
        "The regulator approved a new reactor at the nuclear power plant, which will supply electricity to "
        "two million homes. The utility said the 1,200 megawatt unit would start operating in 2030 and "
        "help cut carbon emissions from power stations."),
    "war film": (
        "War epic tops the box office",
        "The war film, starring two Hollywood actors as soldiers in a doomed battle, took $40m at the box "
        "office in its opening weekend. Critics praised the director's battle scenes and the score."),
}

ECONOMY_WITH_PASSING_ARMY = (
    "Inflation eases as retail sales recover",
    "Inflation fell to 3.1% last month as fuel prices eased and retail sales recovered, the statistics "
    "office said. Economists expect the central bank to hold interest rates next week. Consumer spending "
    "rose in most sectors, although clothing sales fell. Housing investment picked up and exports of "
    "machinery grew strongly. Separately, the finance ministry said tax receipts were higher than "
    "forecast, helped by a one-off payment from the sale of land once used by the army. Wage growth "
    "slowed slightly to 4.2% while unemployment stayed at 4.5%, the lowest level in a decade. The "
    "currency rose against the dollar and the stock market closed at a record high, led by banks and "
    "energy companies. Analysts said the figures supported the case for steady policy through the "
    "summer, though food prices remain a risk after a poor harvest in several exporting countries.",
)


@pytest.mark.parametrize("key", sorted(HARD_NEGATIVES))
def test_hard_negatives_are_not_tagged(tagger: Tagger, key: str) -> None:
    title, text = HARD_NEGATIVES[key]
    assert tagger.tag(title, text, "en") == []
    # and they are rejected because of negative evidence, which details records
    assert tagger.explain(title, text, "en").details["negative_evidence"]


def test_title_defence_hides_the_word_defence(tagger: Tagger) -> None:
    ex = tagger.explain("Champion opens her title defence", "", "en")
    assert ex.evidence == []
    assert [m["rule"] for m in ex.details["negative_evidence"]] == ["title defence"]


def test_economy_story_with_passing_army_mention_is_not_tagged(tagger: Tagger) -> None:
    title, text = ECONOMY_WITH_PASSING_ARMY
    assert tagger.tag(title, text, "en") == []
    ex = tagger.explain(title, text, "en")
    assert [fold(e) for e in ex.evidence] == ["army"]       # the mention was seen, and outweighed


def test_body_evidence_is_length_normalised(tagger: Tagger) -> None:
    short = "The army said it had sent troops to the border after the clashes."
    padding = " The rest of this long report is about local markets and weather." * 60
    assert names(tagger.tag(None, short, "en"))[:1] == ["defence"]
    assert tagger.tag(None, short + padding, "en") == []
    long_ex = tagger.explain(None, short + padding, "en")
    assert long_ex.details["length_factor"] < 0.5


def test_repeated_phrase_has_diminishing_returns(tagger: Tagger) -> None:
    once = tagger.explain(None, "army", "en").details["positive"]
    ten = tagger.explain(None, " ".join(["army"] * 10), "en").details["positive"]
    assert once < ten < 3 * once


# ---------------------------------------------------------------- other languages, spelling, diacritics

TURKISH = ("Milli Savunma Bakanı Güler, Azerbaycan Savunma Bakanı ile görüştü",
           "Milli Savunma Bakanı Yaşar Güler, Türk Silahlı Kuvvetleri ile Azerbaycan ordusu arasındaki "
           "askeri işbirliğini ele aldı. Görüşmede ortak tatbikatlar ve savunma sanayii projeleri konuşuldu.")
RUSSIAN = ("Министр обороны провёл переговоры с турецкой делегацией",
           "Министерство обороны сообщило, что министр обороны обсудил военное сотрудничество и совместные "
           "учения вооружённых сил двух стран.")
AZERBAIJANI = ("Müdafiə naziri Türkiyənin nümayəndə heyəti ilə görüşüb",
               "Müdafiə Nazirliyi məlumat yayıb ki, general-polkovnik Zakir Həsənov hərbi əməkdaşlıq "
               "məsələlərini müzakirə edib. Görüşdə ordular arasında birgə təlimlər qeyd olunub.")


@pytest.mark.parametrize("language,story,expected", [
    ("tr", TURKISH, "Milli Savunma Bakanı"),
    ("ru", RUSSIAN, "Министерство обороны"),
    ("az", AZERBAIJANI, "Müdafiə Nazirliyi"),
])
def test_foreign_language_defence_snippets_are_tagged(tagger: Tagger, language: str, story: tuple[str, str],
                                                      expected: str) -> None:
    tags = tagger.tag(*story, language)
    assert names(tags)[:1] == ["defence"]
    assert expected in tags[0].evidence                     # evidence keeps the original script and diacritics
    assert tagger.tag(*story, None)[:1] and tagger.tag(*story, None)[0].name == "defence"   # unknown: all languages
    assert tagger.tag(*story, "en") == []                   # the vocabulary is selected by language


def test_language_codes_with_region_are_accepted(tagger: Tagger) -> None:
    assert names(tagger.tag(*TURKISH, "tr-TR"))[:1] == ["defence"]


def test_diacritic_free_spelling_matches(tagger: Tagger) -> None:
    # the seed's own wording, typed without diacritics, gives the same tags and evidence
    seed = SEED.read_text(encoding="utf-8")
    plain = unicodedata.normalize("NFKD", seed).encode("ascii", "ignore").decode()
    assert "Tufekci" in plain and "Turkiye" in plain
    with_marks, without = tagger.tag(SEED_TITLE, seed, "en"), tagger.tag(SEED_TITLE, plain, "en")
    assert names(without) == names(with_marks)
    assert [fold(e) for e in without[0].evidence] == [fold(e) for e in with_marks[0].evidence]
    assert fold("Tüfekçi") == "tufekci" and fold("Türkiye") == "turkiye" and fold("Bakanlığı") == "bakanligi"
    # and the Azerbaijani vocabulary matches text typed without diacritics
    assert names(tagger.tag("Mudafie naziri", "Mudafie Nazirliyi herbi emekdasliq", "az"))[:1] == ["defence"]


def test_american_spelling_matches(tagger: Tagger) -> None:
    us = tagger.tag("Defense Secretary visits troops", "The Defense Department said the Secretary of Defense "
                    "met commanders.", "en")
    assert names(us)[:1] == ["defence"]
    assert "Defense Secretary" in us[0].evidence


def test_decomposed_unicode_evidence_is_quoted_from_the_text(tagger: Tagger) -> None:
    title, text = AZERBAIJANI
    nfd_title, nfd_text = unicodedata.normalize("NFD", title), unicodedata.normalize("NFD", text)
    tags = tagger.tag(nfd_title, nfd_text, "az")
    assert names(tags)[:1] == ["defence"]
    for phrase in tags[0].evidence:
        assert phrase in nfd_title or phrase in nfd_text


# ---------------------------------------------------------------- details, sub-tags, API shape

def test_details_say_title_or_body(tagger: Tagger) -> None:
    tags = tagger.tag("Defence Ministry announces drills", "Troops and warships will take part.", "en")
    details = tags[0].details
    json.dumps(details)                                     # JSON-serialisable
    where = {m["rule"]: (m["title"], m["body"]) for m in details["matches"]}
    assert where["defence ministry"] == (1, 0)
    assert where["troop*"] == (0, 1)
    assert details["title_multiplier"] > 1
    title_only = tagger.explain("Defence Ministry", "", "en").details["positive"]
    body_only = tagger.explain("", "Defence Ministry", "en").details["positive"]
    assert title_only == pytest.approx(body_only * details["title_multiplier"])


def test_subtags_operations_industry_policy(tagger: Tagger) -> None:
    ops = tagger.tag("Troops launch air strikes on rebel positions",
                     "The army said fighter jets carried out air strikes and ground troops began an offensive "
                     "after clashes near the front line.", "en")
    assert names(ops)[0] == "defence" and "defence.operations" in names(ops)
    ind = tagger.tag("Defence ministry signs contract for 40 fighter jets",
                     "The defence ministry signed a procurement contract with the manufacturer for 40 fighter "
                     "jets, with deliveries from 2027, and ordered air defence missiles.", "en")
    assert "defence.industry" in names(ind)
    pol = tagger.tag("Parliament approves record defence budget",
                     "The defence budget rises 12% under the new military doctrine; the reform also extends "
                     "conscription to 18 months, the defence minister said.", "en")
    assert "defence.policy" in names(pol)
    assert "defence.diplomacy" not in names(pol)


def test_non_defence_story_gets_no_subtags(tagger: Tagger) -> None:
    # diplomacy vocabulary without defence evidence: nothing at all
    assert tagger.tag("Foreign ministers meet for trade talks",
                      "The delegation held talks with its counterparts on a bilateral trade agreement.", "en") == []


def test_empty_input(tagger: Tagger) -> None:
    assert tagger.tag(None, None) == []
    assert tagger.tag("", "", "en") == []


# ---------------------------------------------------------------- rules file, version, loading

def test_version_changes_when_the_rules_change(tmp_path: Path) -> None:
    original = RULES.read_text(encoding="utf-8")
    copy = tmp_path / "tagging.yaml"
    copy.write_text(original, encoding="utf-8")
    same = Tagger.from_file(copy)
    assert same.version == Tagger.from_file(RULES).version
    assert same.version.startswith("rules-1.0+") and len(same.version.split("+")[1]) == 8

    changed = original.replace("title_multiplier: 2.0", "title_multiplier: 2.5", 1)
    assert changed != original
    copy.write_text(changed, encoding="utf-8")
    other = Tagger.from_file(copy)
    assert other.version != same.version
    # and the changed weight is in effect
    assert other.explain("Defence Ministry", "", "en").details["positive"] > \
        same.explain("Defence Ministry", "", "en").details["positive"]


def test_load_tagger_is_cached_per_path(tmp_path: Path) -> None:
    assert load_tagger(RULES) is load_tagger(str(RULES))
    copy = tmp_path / "tagging.yaml"
    copy.write_text(RULES.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_tagger(copy) is not load_tagger(RULES)


def test_load_tagger_default_uses_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from worker import settings as settings_mod

    copy = tmp_path / "rules.yaml"
    copy.write_text(RULES.read_text(encoding="utf-8").replace("threshold: 0.5", "threshold: 0.51", 1),
                    encoding="utf-8")
    monkeypatch.setenv("NEWSWORKER_TAGGING_RULES", str(copy))
    monkeypatch.setenv("NEWSWORKER_VAR_DIR", str(tmp_path / "var"))
    settings_mod.get_settings.cache_clear()
    try:
        assert load_tagger().source == str(copy.resolve())
    finally:
        settings_mod.get_settings.cache_clear()


@pytest.mark.parametrize("content,message", [
    ("- just a list\n", "mapping"),
    ("defence: {threshold: 0.5, positive: {g: {phrases: ['re:(unclosed']}}}\n", "bad phrase"),
    ("scoring: {title_multiplier: 2}\n", "invalid tagging rules"),
])
def test_broken_rules_fail_at_load(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        Tagger.from_file(path)
