"""Rule-based defence tagger.

The rules (phrases, weights, thresholds) live in ``config/tagging.yaml``; this module
only knows how to compile and apply them.  Nothing here is specific to a story.

Matching
    Text is *folded* before matching: Unicode NFKD, combining marks removed, casefolded,
    Turkish dotless ``ı`` → ``i``, Azerbaijani ``ə`` → ``e``, typographic quotes and dashes
    → ASCII.  Rule phrases are folded the same way, so ``Tüfekçi`` / ``Tufekci`` and
    ``Türkiye`` / ``Turkiye`` match alike.  Phrase syntax (after folding):

    * words separated by a space match any run of whitespace/hyphens (``air strike``
      matches ``air-strike``); a ``-`` inside a phrase is an optional hyphen or space
      (``air-strike`` also matches ``airstrike``);
    * a trailing ``*`` lets the last word continue (``soldier*`` → soldiers);
    * ``re:<regex>`` is a raw regular expression applied to the folded text;
    * spelling variants from the config (``defence`` → ``defen[cs]e`` …) are applied to
      every phrase, so British and American spellings both match.

    All phrases of one rule set are compiled, longest first, into one alternation (per
    language set), scanned once with ``finditer``: a longer phrase consumes the shorter
    ones inside it (``title defence`` hides ``defence``; ``self-defence forces`` beats
    ``self-defence``).  *Neutral* phrases (weight 0: ``think tank``, ``price war``) exist
    only to consume such text.

Scoring (``defence`` and each sub-tag alike)
    Each phrase contributes ``weight × Σ decay^i`` over its occurrences (diminishing
    returns), separately for title and body; title contributions are multiplied by
    ``title_multiplier``; body contributions (positive and negative) are multiplied by a
    length factor ``min(1, (reference_words / body_words) ** length_exponent)`` so a long
    article mentioning "army" once in passing does not pass.  Negative evidence (sport,
    law, police, computer security, civil nuclear power, films/games …) subtracts.
    ``raw = positive − negative``; ``score = 1 − exp(−max(raw, 0) / score_scale)`` ∈ [0, 1);
    a tag is emitted when ``score >= threshold`` (all in the config).  Sub-tags are only
    considered when ``defence`` passes.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError

RULES_VERSION_PREFIX = "rules-1.0"
# libyaml when PyYAML was built with it: the rules file is large and parsed at every start.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

__all__ = ["TagResult", "Tagger", "load_tagger", "fold"]


# ---------------------------------------------------------------- results

@dataclass(frozen=True)
class TagResult:
    """One tag on a story.

    ``score`` is ``1 − exp(−raw / score_scale)`` (0..1, monotonic in the weighted evidence;
    not a calibrated probability); the tag was emitted because ``score >= details["threshold"]``.
    ``evidence``: matched phrases as they appear in the text, strongest first, de-duplicated.
    ``details``: JSON-serialisable — raw score, threshold, length factor, and every positive
    and negative match with where it matched (``title``/``body``), count, weight and contribution.
    """

    name: str
    score: float
    evidence: list[str]
    iptc_code: str | None
    details: dict = field(default_factory=dict)


# ---------------------------------------------------------------- folding

_EXTRA_FOLD = {
    "ı": "i", "ə": "e", "ß": "ss", "ø": "o", "đ": "d", "ł": "l", "æ": "ae", "œ": "oe",
    "\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2212": "-",
    "\u00a0": " ", "\u202f": " ", "\u2009": " ",
}


def _fold_char(ch: str) -> str:
    out = []
    for c in unicodedata.normalize("NFKD", ch):
        if unicodedata.combining(c):
            continue
        c = c.casefold()
        out.append("".join(_EXTRA_FOLD.get(x, x) for x in c))
    return "".join(out)


class _FoldTable(dict):
    """``str.translate`` table that folds any character, computed once per character."""

    def __missing__(self, key: int) -> str:
        value = _fold_char(chr(key))
        self[key] = value
        return value


_TABLE = _FoldTable()
_lock = threading.Lock()


def fold(text: str) -> str:
    """Fold *text* for matching (see module docstring)."""
    if text.isascii():
        return text.lower().replace("`", "'")
    return unicodedata.normalize("NFC", text).translate(_TABLE)


class _OffsetMap:
    """Folded offset → original offset, for texts where some characters fold to
    several (``…`` → ``...``, ``ß`` → ``ss``).  Only those characters are recorded
    (found by a C-level regex scan), so long texts cost next to nothing."""

    def __init__(self, marks: list[tuple[int, int]]):
        self._folded_after = [f for f, _ in marks]
        self._marks = marks

    def __getitem__(self, folded_pos: int) -> int:
        k = bisect.bisect_right(self._folded_after, folded_pos) - 1
        if k < 0:
            return folded_pos
        f_after, o_after = self._marks[k]
        return o_after + (folded_pos - f_after)


@functools.lru_cache(maxsize=8)     # the tagger and the entity extractor fold the same texts
def _fold_with_map(text: str) -> tuple[str, _OffsetMap | None]:
    """Folded text and, when some character folds to several, the offset map back to
    *text*.  Returns ``(folded, None)`` when folded[i] corresponds to text[i] for every i."""
    if text.isascii():
        return text.lower().replace("`", "'"), None
    folded = text.translate(_TABLE)
    # Only the few distinct characters that expand need positions (set() is C-level).
    multi = [c for c in set(text) if ord(c) > 127 and len(_TABLE[ord(c)]) != 1]
    if not multi:
        return folded, None
    marks: list[tuple[int, int]] = []
    shift = 0
    for m in re.finditer("[" + re.escape("".join(multi)) + "]", text):
        shift += len(_TABLE[ord(m.group())]) - 1
        marks.append((m.end() + shift, m.end()))
    return folded, _OffsetMap(marks)


# ---------------------------------------------------------------- rules

@dataclass
class _Rule:
    phrase: str        # as written in the config
    group: str         # config group (e.g. "institutions", "negative.sport")
    weight: float      # negative for negative evidence, 0 for neutral
    target: str        # "defence" or a sub-tag name


@dataclass
class _Scoring:
    title_multiplier: float = 2.0
    repeat_decay: float = 0.5
    reference_words: float = 120.0
    length_exponent: float = 0.5
    score_scale: float = 2.5


_WORD_SEP = r"[\s\-/]+"
_OPT_HYPHEN = r"[\s\-]?"
_WILD = r"\w*"
# one regex "atom": escaped char, char class, non-capturing group or single char, each with an optional quantifier
_ATOM = re.compile(r"(?:\\.|\[[^\]]*\]|\(\?:[^()]*\)|.)[?*+]?", re.S)


def _phrase_atoms(phrase: str, variants: list[tuple[str, str]]) -> tuple[str, ...]:
    """The phrase as a sequence of regex atoms (the unit of the matching trie)."""
    if phrase.startswith("re:"):
        return (f"(?:{phrase[3:].strip()})",)
    p = fold(phrase.strip())
    wild = p.endswith("*")
    if wild:
        p = p[:-1].rstrip()
    atoms: list[str] = []
    for wi, w in enumerate(p.split()):
        if wi:
            atoms.append(_WORD_SEP)
        for si, sub in enumerate(w.split("-")):
            if si:
                atoms.append(_OPT_HYPHEN)
            piece = re.escape(sub)
            for plain, rx in variants:
                piece = piece.replace(plain, rx)
            atoms.extend(_ATOM.findall(piece))
    if wild:
        atoms.append(_WILD)
    return tuple(atoms)


def _trie_regex(entries: list[tuple[tuple[str, ...], str]]) -> str:
    r"""One alternation for all phrases, factored as a trie on atoms.  A phrase ends in
    ``(?!\w)(?P<name>)``: ``m.lastgroup`` names the phrase that matched.  Longer
    continuations are tried before a phrase ends, so the longest phrase wins."""
    root: dict[str, Any] = {}
    for atoms, name in entries:
        node = root
        for a in atoms:
            node = node.setdefault(a, {})
        node.setdefault("", name)  # first rule with these atoms wins

    def depth(node: dict[str, Any]) -> int:
        return max((1 + depth(v) for k, v in node.items() if k), default=0)

    def build(node: dict[str, Any]) -> str:
        kids = [(k, v) for k, v in node.items() if k]
        # literal-looking atoms first and deeper subtrees first; wildcards last
        kids.sort(key=lambda kv: (kv[0] == _WILD, -depth(kv[1]), kv[0]))
        alts = [k + build(v) for k, v in kids]
        if "" in node:
            alts.append(rf"(?!\w)(?P<{node['']}>)")
        if len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + ")"

    return r"\b" + build(root) if root else r"(?!x)x"


class _RuleSet:
    """Rules for one tag (or for all sub-tags), compiled per language set."""

    def __init__(self, rules_by_lang: dict[str, list[_Rule]], variants: list[tuple[str, str]]):
        self._rules_by_lang = rules_by_lang
        self._variants = variants
        self._compiled: dict[frozenset[str], tuple[re.Pattern[str], list[list[_Rule]]]] = {}
        # validate every phrase now (a broken rules file should fail at load, not mid-ingest)
        for rules in rules_by_lang.values():
            for r in rules:
                try:
                    re.compile("".join(_phrase_atoms(r.phrase, variants)))
                except re.error as exc:
                    raise ConfigError(f"tagging rules: bad phrase {r.phrase!r}: {exc}") from None

    def compiled(self, langs: frozenset[str]) -> tuple[re.Pattern[str], list[list[_Rule]]]:
        hit = self._compiled.get(langs)
        if hit is not None:
            return hit
        with _lock:
            hit = self._compiled.get(langs)
            if hit is not None:
                return hit
            by_atoms: dict[tuple[str, ...], list[_Rule]] = {}
            for lang in sorted(langs):
                for r in self._rules_by_lang.get(lang, []):
                    by_atoms.setdefault(_phrase_atoms(r.phrase, self._variants), []).append(r)
            table = list(by_atoms.values())
            pattern = re.compile(_trie_regex([(atoms, f"r{i}") for i, atoms in enumerate(by_atoms)]))
            hit = (pattern, table)
            self._compiled[langs] = hit
            return hit


@dataclass
class _TagSpec:
    name: str
    iptc_code: str | None
    threshold: float
    min_positive: float


# ---------------------------------------------------------------- tagger

_LANG_ALIASES = {"tur": "tr", "aze": "az", "rus": "ru", "eng": "en"}


class Tagger:
    """Weighted-phrase defence tagger; build with :meth:`from_file` or :func:`load_tagger`."""

    version: str

    def __init__(self, config: dict[str, Any], digest: str, source: str = "<dict>"):
        self.source = source
        self.version = f"{RULES_VERSION_PREFIX}+{digest[:8]}"
        try:
            self._setup(config)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{source}: invalid tagging rules: {exc!r}") from None

    # -- construction

    @classmethod
    def from_file(cls, path: str | Path) -> "Tagger":
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read tagging rules {path}: {exc}") from None
        try:
            config = yaml.load(raw.decode("utf-8"), Loader=_YAML_LOADER)
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: tagging rules must be a mapping")
        return cls(config, hashlib.sha256(raw).hexdigest(), str(path))

    def _setup(self, config: dict[str, Any]) -> None:
        sc = config.get("scoring", {}) or {}
        self._scoring = _Scoring(**{k: float(v) for k, v in sc.items()})
        self._variants = [(fold(k), v) for k, v in (config.get("spelling_variants") or {}).items()]
        self._languages = {str(k).lower() for k in (config.get("languages") or ["en"])} | {"en"}

        d = config["defence"]
        self._defence = _TagSpec("defence", d.get("iptc_code"), float(d["threshold"]),
                                 float(d.get("min_positive", 0.0)))
        by_lang: dict[str, list[_Rule]] = {}
        self._collect(by_lang, "en", d.get("positive", {}), "defence", sign=1.0)
        self._collect(by_lang, "en", d.get("negative", {}), "defence", sign=-1.0, prefix="negative.")
        self._collect_neutral(by_lang, "en", d.get("neutral", []), "defence")
        for lang, block in (d.get("languages") or {}).items():
            lang = str(lang).lower()
            self._languages.add(lang)
            self._collect(by_lang, lang, block.get("positive", {}), "defence", sign=1.0)
            self._collect(by_lang, lang, block.get("negative", {}), "defence", sign=-1.0, prefix="negative.")
            self._collect_neutral(by_lang, lang, block.get("neutral", []), "defence")
        self._defence_rules = _RuleSet(by_lang, self._variants)

        self._subtags: list[_TagSpec] = []
        sub_by_lang: dict[str, list[_Rule]] = {}
        for name, block in (config.get("subtags") or {}).items():
            full = f"defence.{name}"
            self._subtags.append(_TagSpec(full, block.get("iptc_code"), float(block["threshold"]),
                                          float(block.get("min_positive", 0.0))))
            self._collect(sub_by_lang, "en", block.get("phrases", {}), full, sign=1.0)
            for lang, lblock in (block.get("languages") or {}).items():
                self._collect(sub_by_lang, str(lang).lower(), lblock, full, sign=1.0)
        self._subtag_rules = _RuleSet(sub_by_lang, self._variants)
        self._all_langs = frozenset(self._languages)

    @staticmethod
    def _collect(out: dict[str, list[_Rule]], lang: str, groups: dict[str, Any], target: str,
                 sign: float, prefix: str = "") -> None:
        for gname, g in (groups or {}).items():
            gweight = float(g.get("weight", 1.0))
            for item in g.get("phrases", []) or []:
                if isinstance(item, dict):
                    for phrase, w in item.items():
                        out.setdefault(lang, []).append(_Rule(str(phrase), prefix + gname, sign * abs(float(w)), target))
                else:
                    out.setdefault(lang, []).append(_Rule(str(item), prefix + gname, sign * abs(gweight), target))

    @staticmethod
    def _collect_neutral(out: dict[str, list[_Rule]], lang: str, phrases: Iterable[str], target: str) -> None:
        for p in phrases or []:
            out.setdefault(lang, []).append(_Rule(str(p), "neutral", 0.0, target))

    # -- tagging

    def _langs_for(self, language: str | None) -> frozenset[str]:
        if not language:
            return self._all_langs
        code = language.strip().lower().replace("_", "-").split("-")[0]
        code = _LANG_ALIASES.get(code, code)
        return frozenset({"en", code}) & self._all_langs | {"en"}

    @staticmethod
    def _scan(text: str, pattern: re.Pattern[str], table: list[list[_Rule]], where: str,
              hits: dict[int, dict[str, Any]]) -> None:
        folded, index = _fold_with_map(text)
        for m in pattern.finditer(folded):
            idx = int(m.lastgroup[1:])  # type: ignore[index]
            h = hits.get(idx)
            if h is None:
                s, e = m.span()
                if index is not None:
                    s, e = index[s], index[e]
                h = hits[idx] = {"text": text[s:e], "title": 0, "body": 0}
            h[where] += 1

    def _score(self, spec_target: str, table: list[list[_Rule]], hits: dict[int, dict[str, Any]],
               length_factor: float) -> tuple[float, float, list[dict[str, Any]]]:
        sc = self._scoring
        decay = sc.repeat_decay
        pos = neg = 0.0
        matches = []
        for idx, h in hits.items():
            for rule in table[idx]:
                if rule.target != spec_target:
                    continue
                contrib = 0.0
                for where, mult in (("title", sc.title_multiplier), ("body", length_factor)):
                    n = h[where]
                    if n:
                        sat = n if decay >= 1.0 else (1.0 - decay ** n) / (1.0 - decay)
                        contrib += rule.weight * mult * sat
                if rule.weight > 0:
                    pos += contrib
                elif rule.weight < 0:
                    neg -= contrib
                matches.append({"phrase": h["text"], "rule": rule.phrase, "group": rule.group,
                                "title": h["title"], "body": h["body"], "weight": rule.weight,
                                "contribution": round(contrib, 4)})
        matches.sort(key=lambda m: -abs(m["contribution"]))
        return pos, neg, matches

    def _result(self, spec: _TagSpec, pos: float, neg: float, matches: list[dict[str, Any]],
                length_factor: float, words: int, langs: frozenset[str]) -> tuple[TagResult, bool]:
        raw = pos - neg
        score = 1.0 - math.exp(-max(raw, 0.0) / self._scoring.score_scale)
        passed = score >= spec.threshold and pos >= spec.min_positive
        evidence: list[str] = []
        seen: set[str] = set()
        for m in matches:
            if m["weight"] <= 0:
                continue
            key = fold(m["phrase"])
            if key not in seen:
                seen.add(key)
                evidence.append(m["phrase"])
        details = {
            "threshold": spec.threshold,
            "raw": round(raw, 4),
            "positive": round(pos, 4),
            "negative": round(neg, 4),
            "title_multiplier": self._scoring.title_multiplier,
            "length_factor": round(length_factor, 4),
            "body_words": words,
            "languages": sorted(langs),
            "matches": [m for m in matches if m["weight"] > 0],
            "negative_evidence": [m for m in matches if m["weight"] < 0],
        }
        return TagResult(spec.name, round(score, 4), evidence, spec.iptc_code, details), passed

    def _defence_result(self, title: str, text: str, language: str | None) -> tuple[TagResult, bool, Any]:
        """The ``defence`` result, whether it passed, and what sub-tags need (langs, length factor, words)."""
        langs = self._langs_for(language)
        words = len(text.split())
        sc = self._scoring
        length_factor = min(1.0, (sc.reference_words / max(words, 1)) ** sc.length_exponent)
        pattern, table = self._defence_rules.compiled(langs)
        hits = self._scan_both(title, text, pattern, table)
        pos, neg, matches = self._score("defence", table, hits, length_factor)
        result, passed = self._result(self._defence, pos, neg, matches, length_factor, words, langs)
        return result, passed, (langs, length_factor, words)

    def _scan_both(self, title: str, text: str, pattern: re.Pattern[str], table: list[list[_Rule]]) -> dict[int, dict[str, Any]]:
        hits: dict[int, dict[str, Any]] = {}
        if title:
            self._scan(title, pattern, table, "title", hits)
        if text:
            self._scan(text, pattern, table, "body", hits)
        return hits

    def tag(self, title: str | None, text: str | None, language: str | None = None) -> list[TagResult]:
        """Tags for one story: ``[]`` when not defence, else ``defence`` first, then sub-tags."""
        title, text = title or "", text or ""
        if not title and not text:
            return []
        result, passed, (langs, length_factor, words) = self._defence_result(title, text, language)
        if not passed:
            return []
        spattern, stable = self._subtag_rules.compiled(langs)
        shits = self._scan_both(title, text, spattern, stable)
        subs = []
        for spec in self._subtags:
            spos, sneg, smatches = self._score(spec.name, stable, shits, length_factor)
            sres, spassed = self._result(spec, spos, sneg, smatches, length_factor, words, langs)
            if spassed:
                subs.append(sres)
        subs.sort(key=lambda r: -r.score)
        return [result] + subs

    def explain(self, title: str | None, text: str | None, language: str | None = None) -> TagResult:
        """The ``defence`` result whether or not it passes (for evaluation and debugging)."""
        return self._defence_result(title or "", text or "", language)[0]


# ---------------------------------------------------------------- loading

def load_tagger(path: str | Path | None = None) -> Tagger:
    """The tagger for *path* (default: ``settings.tagging_rules``), built once per path."""
    if path is None:
        from .settings import get_settings
        path = get_settings().tagging_rules
    return _load_tagger(str(path))


@functools.lru_cache(maxsize=8)
def _load_tagger(path: str) -> Tagger:
    return Tagger.from_file(path)