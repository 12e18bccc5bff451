"""Entity extraction for defence news: countries, defence officials, organisations.

The vocabulary (demonyms, alternative country names, ranks, roles, organisations, words that
block a match) lives in ``config/entities.yaml``; country names and ISO 3166-1 codes come from
``pycountry``.  This module only knows how to compile and apply them; nothing here is specific
to one story.

Matching
    Text is folded with :func:`worker.tagging.fold` (NFKD, combining marks removed, casefold,
    ``ı``→``i``, ``ə``→``e``), so ``Tüfekçi``/``Tufekci`` and ``Türkiye``/``Turkiye`` match
    alike; offsets map back to the original so evidence is reported as written.  All phrases
    (countries, ranks, roles, organisations, blockers) are compiled into one trie-shaped regex
    per language set, scanned once per text (see :class:`_Scanner` for overlapping kinds).  The case of a phrase *as written in the config* is then enforced on
    the original text: ``Turkey`` needs a capital (``turkey dinner`` is not TR), ``US``/``UK``
    need the capitals (``us`` is not US), lower-case phrases (``defence minister``) match any case.

Countries
    Every accepted mention of a name or demonym counts; ``Azerbaijani-Turkish`` counts once for
    each and is kept as evidence of both.  Blocker phrases (``Latin American``, ``turkey
    dinner``, ``New Jersey``) consume text so the country inside does not count.  Country names
    that are also personal names (Jordan, Chad, Georgia …) are dropped when a capitalised word
    follows (``Jordan Henderson``) or precedes (``Michael Jordan``); per-country context cues
    (``Atlanta`` near ``Georgia``) drop a mention too.

Officials
    A chain of role/rank phrases ("Defence Minister, Colonel General", "Turkish Deputy National
    Defence") adjacent to a capitalised personal name (1–4 capitalised tokens, initials,
    particles like ``bin``/``von``), the name either after the chain or before it separated by a
    comma ("Zakir Hasanov, the Defence Minister").  The official's country is a country or
    demonym directly before the chain ("Azerbaijani Defence Minister", "Azerbaijan's …"), else
    "… of Azerbaijan" after it, else the role's default (``Secretary of Defense`` → US).  Names
    written with initials or surname only ("Z. Hasanov", "Hasanov") are merged into a full name
    with the same surname found in the same article.

Organisations
    Canonical name, type, and country (fixed in the config, or a country/demonym directly
    before, or "… of <country>" after).  Mentions without a country are merged into the only
    entity of that name with one.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError
from .tagging import _fold_with_map, fold

__all__ = ["Entity", "EntityRules", "extract_entities", "load_entity_rules"]

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---------------------------------------------------------------- result

@dataclass(frozen=True)
class Entity:
    """One entity of a story.

    ``kind``: ``"country"`` | ``"official"`` | ``"organisation"``.
    ``name``: countries — pycountry's common name, else its ISO short name ("Azerbaijan",
    "Türkiye", "Iran"); officials — the name as written ("Zakir Hasanov"); organisations — the
    canonical name from the config ("Ministry of Defence").
    ``code``: ISO 3166-1 alpha-2 of the country / of the official's or organisation's country
    (None when unknown).  ``role``: officials' canonical role, organisations' type.
    ``rank``: officials' canonical military rank.  ``evidence``: supporting phrases as written,
    in order of appearance.  ``mentions``: occurrences in title + body.
    """

    kind: str
    name: str
    code: str | None
    role: str | None
    rank: str | None
    evidence: list[str] = field(default_factory=list)
    mentions: int = 0


# ---------------------------------------------------------------- phrase compilation

_WORD_SEP = r"[\s\-]+"
_OPT_HYPHEN = r"[\s\-]?"
_WILD = r"\w*"


def _casing(alias: str) -> str:
    """``any`` (written lower case), ``exact`` (first word has several capitals: UK, U.S., MoD)
    or ``initial`` (written with an initial capital)."""
    letters = [c for c in alias if c.isalpha()]
    if not letters or not letters[0].isupper():
        return "any"
    first = [c for c in alias.split()[0] if c.isalpha()]
    if len(first) > 1 and sum(c.isupper() for c in first) > 1:
        return "exact"
    return "initial"


def _case_ok(casing: str, alias: str, original: str) -> bool:
    if casing == "any":
        return True
    if casing == "initial":
        return original[:1].isupper()
    want = [c.isupper() for c in alias.split()[0] if c.isalpha()]
    got = [c.isupper() for c in original if c.isalpha()][: len(want)]
    return want == got


def _atoms(folded: str) -> tuple[str, ...]:
    wild = folded.endswith("*")
    if wild:
        folded = folded[:-1].rstrip()
    atoms: list[str] = []
    for wi, word in enumerate(folded.split()):
        if wi:
            atoms.append(_WORD_SEP)
        for si, sub in enumerate(word.split("-")):
            if si:
                atoms.append(_OPT_HYPHEN)
            atoms.extend(re.escape(c) for c in sub)
    if wild:
        atoms.append(_WILD)
    return tuple(atoms)


def _trie_regex(entries: Iterable[tuple[tuple[str, ...], int]]) -> re.Pattern[str]:
    r"""One alternation for all phrases, factored as a character trie.  A phrase ends in
    ``(?!\w)(?P<gN>)``: ``m.lastgroup`` names the phrase; longer continuations are tried
    first, so the longest phrase at a position wins."""
    root: dict[str, Any] = {}
    for atoms, idx in entries:
        node = root
        for a in atoms:
            node = node.setdefault(a, {})
        node.setdefault("", idx)

    def build(node: dict[str, Any]) -> str:
        kids = sorted(((k, v) for k, v in node.items() if k), key=lambda kv: (kv[0] == _WILD, kv[0]))
        alts = [k + build(v) for k, v in kids]
        if "" in node:
            alts.append(rf"(?!\w)(?P<g{node['']}>)")
        if len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + ")"

    return re.compile(r"\b" + build(root) if root else r"(?!x)x")


@dataclass
class _Target:
    kind: str               # country | blocker | role | rank | rank_blocker | org
    key: str                # ISO-2 / canonical name
    alias: str              # as written in the config (for case checks)
    casing: str
    code: str | None = None  # roles/orgs: default or fixed country
    extra: str | None = None  # orgs: type
    elliptic: bool = False
    lang: str = "en"


class _PhraseSet:
    """Phrases of one kind (with their targets), compiled per language set."""

    def __init__(self) -> None:
        self.by_phrase: dict[tuple[str, ...], list[_Target]] = {}
        self._compiled: dict[frozenset[str], tuple[re.Pattern[str], list[list[_Target]]]] = {}

    def add(self, folded_variants: Iterable[str], target: _Target, override: bool = False) -> None:
        for f in folded_variants:
            atoms = _atoms(f)
            if not atoms:
                continue
            lst = self.by_phrase.setdefault(atoms, [])
            if override:
                lst[:] = [t for t in lst if t.kind != target.kind or t.key == target.key]
            if not any(t.key == target.key and t.kind == target.kind and t.casing == target.casing
                       and t.lang == target.lang for t in lst):
                lst.append(target)

    def compiled(self, langs: frozenset[str]) -> tuple[re.Pattern[str], list[list[_Target]]]:
        hit = self._compiled.get(langs)
        if hit is None:
            table: list[list[_Target]] = []
            entries = []
            for atoms, targets in self.by_phrase.items():
                ts = [t for t in targets if t.lang in langs]
                if ts:
                    entries.append((atoms, len(table)))
                    table.append(ts)
            hit = (_trie_regex(entries), table)
            self._compiled[langs] = hit
        return hit


# ---------------------------------------------------------------- personal names (original text)

def _upper_class() -> str:
    ranges = [(0x41, 0x24F), (0x370, 0x3FF), (0x400, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5), (0x1E00, 0x1EFF)]
    chars = [chr(i) for lo, hi in ranges for i in range(lo, hi + 1) if chr(i).isupper() or chr(i).istitle()]
    return "".join(re.escape(c) for c in chars)


_UP = _upper_class()
_L = r"[^\W\d_]"
_NAME_WORD = rf"(?:(?:al|el|ad|ar|as|ash|at|az|ud|ul|bin|ibn)[\-\u2010\u2011])?[{_UP}]{_L}+(?:['\u2019][{_UP}]?{_L}+)*(?:-[{_UP}]{_L}+)*"
_INITIALS = rf"[{_UP}]\.(?:-?[{_UP}]\.)*"
_PARTICLE = r"(?:bin|ibn|ben|van|von|der|den|de|da|di|du|la|le|dos|das|del|ter|ten|al|el|y|ul|ud)(?= )"
_TOKEN = re.compile(rf"(?P<i>{_INITIALS})|(?P<w>{_NAME_WORD})|(?P<p>{_PARTICLE})")
_POSSESSIVE = re.compile(r"['\u2019]s?$")
_CAP_NEXT = re.compile(rf"[ \t\u00a0]+[{_UP}]")

_GAP = re.compile(r"[ \t\u00a0]*(?:,[ \t\u00a0]*)?(?:(?:and|the)[ \t\u00a0]+)?")
_NAME_GAP = re.compile(r"[ \t\u00a0]*,?[ \t\u00a0]*")
_LINK = re.compile(r"[ \t\u00a0]+(of|to|for|in)[ \t\u00a0]+(?:the[ \t\u00a0]+)?", re.I)
_SPACES = re.compile(r"[ \t\u00a0]+")
_BEFORE_NAME = re.compile(r",[ \t\u00a0]*(?:(?:the|a|an|former|then|acting|current|now)[ \t\u00a0]+)?$", re.I)
_NEXT_WORD = re.compile(r"[ \t\u00a0]+([^\W\d_][\w'\u2019\-]*)")
_PREV_WORD = re.compile(r"([^\W\d_][\w'\u2019\-]*)[ \t\u00a0]+$")
_LETTERS = re.compile(r"[^\W\d_]+")


def _title_cased(title: str) -> bool:
    """Headline Title Case (or ALL CAPS): capitalised words say nothing about names there."""
    words = [w for w in _LETTERS.findall(title) if len(w) > 3]
    if len(words) < 3:
        return False
    return sum(w[0].isupper() for w in words) / len(words) >= 0.75


# ---------------------------------------------------------------- per-text scan

@dataclass
class _Hit:
    start: int
    end: int
    target: _Target
    text: str
    titled: bool = False      # rank/role followed by a capitalised word


class _Segment:
    def __init__(self, text: str, offset: int):
        self.text = text
        self.offset = offset          # position of this segment in title+body (for ordering)
        self.folded, self.index = _fold_with_map(text)
        self.countries: list[_Hit] = []
        self.titles: list[_Hit] = []
        self.orgs: list[_Hit] = []
        self.country_by_start: dict[int, _Hit] = {}
        self.country_by_end: dict[int, _Hit] = {}

    def span(self, s: int, e: int) -> tuple[int, int]:
        if self.index is not None:
            s, e = self.index[s], self.index[e]
        return s, e


@dataclass
class _Official:
    name: str
    role: str | None
    rank: str | None
    code: str | None
    evidence: list[str]
    pos: int
    count: int = 1


_CATEGORY = {"country": "c", "blocker": "c", "role": "t", "rank": "t", "rank_blocker": "t", "org": "o"}
_NEXT_WORD_START = re.compile(r"\w+\W*")
_compile_lock = threading.Lock()
_NATIONAL_ORG_TYPES = {"ministry", "armed forces", "general staff", "agency"}


class _Scanner:
    """All phrases of all kinds in one trie regex, scanned once per text.

    Phrases of different kinds overlap ("Turkish Armed Forces" is an organisation and starts
    with a demonym; "NATO Secretary General" is a role containing "NATO"), so after a
    multi-word match the scan resumes at the match's next word, and a match is dropped only
    when it lies inside an earlier match *of the same category* (longest match per category).
    A shorter phrase of another category that is a word-prefix of the matched phrase
    ("Turkish" in "Turkish Armed Forces") is attached to it at compile time."""

    def __init__(self, sets: list["_PhraseSet"], langs: frozenset[str]):
        merged: dict[tuple[str, ...], list[_Target]] = {}
        for ps in sets:
            for atoms, targets in ps.by_phrase.items():
                ts = [t for t in targets if t.lang in langs]
                if ts:
                    merged.setdefault(atoms, []).extend(ts)
        self.table: list[dict[str, list[_Target]]] = []
        self.implied: list[list[tuple[str, re.Pattern[str], list[_Target]]]] = []
        entries = []
        for atoms, targets in merged.items():
            by_cat: dict[str, list[_Target]] = {}
            for t in targets:
                by_cat.setdefault(_CATEGORY[t.kind], []).append(t)
            implied = []
            for k in range(1, len(atoms)):
                if atoms[k] != _WORD_SEP:
                    continue
                for t_cat, t_list in self._by_cat(merged.get(atoms[:k])).items():
                    if t_cat not in by_cat and not any(i[0] == t_cat for i in implied):
                        implied.append((t_cat, re.compile("".join(atoms[:k]) + r"(?!\w)"), t_list))
            entries.append((atoms, len(self.table)))
            self.table.append(by_cat)
            self.implied.append(implied)
        self.pattern = _trie_regex(entries)

    @staticmethod
    def _by_cat(targets: list[_Target] | None) -> dict[str, list[_Target]]:
        out: dict[str, list[_Target]] = {}
        for t in targets or []:
            out.setdefault(_CATEGORY[t.kind], []).append(t)
        return out

    def scan(self, folded: str) -> list[tuple[str, int, int, list[_Target]]]:
        out: list[tuple[str, int, int, list[_Target]]] = []
        covered = {"c": -1, "t": -1, "o": -1}
        search = self.pattern.search
        pos = 0
        n = len(folded)
        while pos < n:
            m = search(folded, pos)
            if m is None:
                break
            s, e = m.span()
            idx = int(m.lastgroup[1:])  # type: ignore[index]
            for cat, targets in self.table[idx].items():
                if e > covered[cat]:
                    out.append((cat, s, e, targets))
                    covered[cat] = e
            for cat, rx, targets in self.implied[idx]:
                pm = rx.match(folded, s)
                if pm is not None and pm.end() > covered[cat]:
                    out.append((cat, s, pm.end(), targets))
                    covered[cat] = pm.end()
            # resume at the next word of the match (phrases of other kinds may start inside it)
            w = _NEXT_WORD_START.match(folded, s)
            nxt = w.end() if w else e
            pos = nxt if nxt < e else e
            if pos <= s:
                pos = s + 1
        return out


# ---------------------------------------------------------------- rules

_LANG_ALIASES = {"tur": "tr", "aze": "az", "rus": "ru", "eng": "en"}


def _as_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [str(v)]


def _code(k: Any) -> str:
    if k is False:             # YAML 1.1 reads an unquoted NO (Norway) as false
        return "NO"
    return str(k).strip().upper()


class EntityRules:
    """Compiled entity vocabulary; build with :meth:`from_file` or :func:`load_entity_rules`."""

    def __init__(self, config: dict[str, Any], source: str = "<dict>"):
        self.source = source
        try:
            self._setup(config)
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
            raise ConfigError(f"{source}: invalid entity rules: {exc!r}") from None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> "EntityRules":
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read entity rules {path}: {exc}") from None
        try:
            config = yaml.load(raw, Loader=_YAML_LOADER)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: entity rules must be a mapping")
        return cls(config, str(path))

    # -- construction

    def _variants(self, alias: str, exact_spelling: bool = False) -> list[str]:
        f = fold(alias.strip())
        out = [f]
        if not exact_spelling:
            for a, b in self._spelling:
                for x in list(out):
                    if a in x:
                        out.append(x.replace(a, b))
                    if b in x:
                        out.append(x.replace(b, a))
        return list(dict.fromkeys(out))

    def _setup(self, cfg: dict[str, Any]) -> None:
        import pycountry

        self._spelling = [(fold(a), fold(b)) for a, b in (cfg.get("spelling_variants") or [])]
        self.countries = _PhraseSet()
        self.titles = _PhraseSet()
        self.orgs = _PhraseSet()
        self.display: dict[str, str] = {}
        self.languages: set[str] = {"en"}

        # countries from pycountry
        for c in pycountry.countries:
            code = c.alpha_2
            self.display[code] = getattr(c, "common_name", None) or c.name
            for attr in ("name", "common_name", "official_name"):
                nm = getattr(c, attr, None)
                if not nm or "," in nm:
                    continue
                nm = re.sub(r"\s*\([^)]*\)", "", nm).strip()
                nm = re.sub(r"^the\s+", "", nm, flags=re.I)
                if nm:
                    self.countries.add(self._variants(nm, True), _Target("country", code, nm, _casing(nm)))
        for code, nm in (cfg.get("extra_countries") or {}).items():
            self.display[_code(code)] = str(nm)
        for code, nm in (cfg.get("display_names") or {}).items():
            self.display[_code(code)] = str(nm)

        def add_countries(block: dict[str, Any] | None, lang: str, demonym: bool) -> None:
            for code, names in (block or {}).items():
                code = _code(code)
                if code not in self.display:
                    raise ConfigError(f"{self.source}: unknown country code {code!r} (add it to extra_countries)")
                for nm in _as_list(names):
                    forms = self._variants(nm, True)
                    if demonym and not nm.endswith(("*", "s")) and nm[-1:].isalpha():
                        forms += [f + "s" for f in forms]
                    self.countries.add(forms, _Target("country", code, nm, _casing(nm), lang=lang), override=True)

        add_countries(cfg.get("country_names"), "en", False)
        add_countries(cfg.get("demonyms"), "en", True)
        for b in _as_list(cfg.get("country_blockers")):
            self.countries.add(self._variants(b, True), _Target("blocker", b, b, "any"))

        self.person_like = {fold(x) for x in _as_list(cfg.get("person_like_names"))}
        self.ok_before = {fold(x) for x in _as_list(cfg.get("person_name_ok_before"))}
        self.ok_after = {fold(x) for x in _as_list(cfg.get("person_name_ok_after"))}
        self.context_window = int(cfg.get("context_window", 120))
        self.context_exclude: dict[str, re.Pattern[str]] = {}
        for code, cues in (cfg.get("context_exclude") or {}).items():
            alts = sorted({"".join(_atoms(fold(c))) for c in _as_list(cues)}, key=len, reverse=True)
            if alts:
                self.context_exclude[_code(code)] = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)")

        self.stopwords = {fold(x) for x in _as_list(cfg.get("name_stopwords"))}

        def add_ranks(block: dict[str, Any] | None, lang: str) -> None:
            for canon, aliases in (block or {}).items():
                for a in [canon] * (lang == "en") + _as_list(aliases):
                    cas = _casing(a) if lang != "en" else "initial" if _casing(a) == "any" else _casing(a)
                    self.titles.add(self._variants(a), _Target("rank", str(canon), a, cas, lang=lang))

        def add_roles(block: dict[str, Any] | None, lang: str) -> None:
            for canon, spec in (block or {}).items():
                spec = spec or {}
                code = _code(spec["code"]) if spec.get("code") else None
                exact = bool(spec.get("exact_spelling"))
                for a in _as_list(spec.get("aliases")):
                    self.titles.add(self._variants(a, exact), _Target("role", str(canon), a, _casing(a), code, lang=lang))
                    self._vocab_words(a)
                for a in _as_list(spec.get("elliptic")):
                    self.titles.add(self._variants(a, exact),
                                    _Target("role", str(canon), a, _casing(a), code, elliptic=True, lang=lang))

        def add_orgs(block: dict[str, Any] | None, lang: str) -> None:
            for canon, spec in (block or {}).items():
                spec = spec or {}
                code = _code(spec["code"]) if spec.get("code") else None
                kind = spec.get("type")
                if kind is None:
                    kind = self._org_types.get(str(canon))
                self._org_types.setdefault(str(canon), kind)
                exact = bool(spec.get("exact_spelling"))
                for a in _as_list(spec.get("aliases")):
                    self.orgs.add(self._variants(a, exact), _Target("org", str(canon), a, _casing(a), code, kind, lang=lang))
                    for w in _LETTERS.findall(fold(a)):
                        self.ok_after.add(w)

        self._org_types: dict[str, str | None] = {}
        self._role_words: set[str] = set()
        add_ranks(cfg.get("ranks"), "en")
        for b in _as_list(cfg.get("rank_blockers")):
            self.titles.add(self._variants(b), _Target("rank_blocker", b, b, "any"))
        add_roles(cfg.get("roles"), "en")
        add_orgs(cfg.get("organisations"), "en")

        for lang, block in (cfg.get("localized") or {}).items():
            lang = str(lang).lower()
            self.languages.add(lang)
            block = block or {}
            for code, names in (block.get("country_names") or {}).items():
                add_countries({code: names}, lang, False)
            for code, names in (block.get("demonyms") or {}).items():
                add_countries({code: names}, lang, True)
            add_ranks(block.get("ranks"), lang)
            add_roles(block.get("roles"), lang)
            add_orgs(block.get("organisations"), lang)

        self.stopwords |= self._role_words
        self.ok_after |= self._role_words
        self.all_langs = frozenset(self.languages)
        self._scanners: dict[frozenset[str], _Scanner] = {}
        # compile (and so validate) the full vocabulary now, not mid-ingest
        self._compiled(self.all_langs)

    def _vocab_words(self, alias: str) -> None:
        for w in _LETTERS.findall(fold(alias)):
            if len(w) > 2:
                self._role_words.add(w)

    def _compiled(self, langs: frozenset[str]) -> "_Scanner":
        hit = self._scanners.get(langs)
        if hit is None:
            with _compile_lock:
                hit = self._scanners.get(langs)
                if hit is None:
                    hit = self._scanners[langs] = _Scanner([self.countries, self.titles, self.orgs], langs)
        return hit

    def _langs_for(self, language: str | None) -> frozenset[str]:
        if not language:
            return self.all_langs
        code = language.strip().lower().replace("_", "-").split("-")[0]
        code = _LANG_ALIASES.get(code, code)
        return frozenset({"en", code}) & self.all_langs | {"en"}

    # -- scanning

    def _scan(self, seg: _Segment, scanner: "_Scanner") -> None:
        text, folded = seg.text, seg.folded
        raw = scanner.scan(folded)      # [(cat, fs, fe, targets)] in order of start

        def pick(targets: list[_Target], orig: str) -> _Target | None:
            return next((t for t in targets if _case_ok(t.casing, t.alias, orig)), None)

        for cat, fs, fe, targets in raw:
            if cat != "c":
                continue
            s, e = seg.span(fs, fe)
            orig = text[s:e]
            t = pick(targets, orig)
            if t is None or t.kind == "blocker":
                continue
            if folded[fs:fe] in self.person_like and self._person_context(text, s, e):
                continue
            cx = self.context_exclude.get(t.key)
            if cx is not None:
                w = self.context_window
                if cx.search(folded, max(0, fs - w), fe + w):
                    continue
            h = _Hit(s, e, t, orig)
            seg.countries.append(h)
            seg.country_by_start[s] = h
            seg.country_by_end[e] = h

        for cat, fs, fe, targets in raw:
            if cat != "o":
                continue
            s, e = seg.span(fs, fe)
            orig = text[s:e]
            t = pick(targets, orig)
            if t is None and self._country_before(seg, s) is not None:
                # "Israeli army", "Russian navy": a country makes a lower-case service name specific
                t = next((t for t in targets if t.casing == "initial"), None)
            if t is not None:
                seg.orgs.append(_Hit(s, e, t, orig))

        for cat, fs, fe, targets in raw:
            if cat != "t":
                continue
            s, e = seg.span(fs, fe)
            orig = text[s:e]
            t = pick(targets, orig)
            if t is None or t.kind == "rank_blocker":
                continue
            # "General" inside "General Motors": an organisation continuing past the title wins
            if any(o.start >= s and o.start < e < o.end for o in seg.orgs):
                continue
            seg.titles.append(_Hit(s, e, t, orig, titled=_CAP_NEXT.match(text, e) is not None))

    def _person_context(self, text: str, s: int, e: int) -> bool:
        """A person-like country name used as a personal name ("Jordan Henderson", "Michael Jordan")."""
        m = _NEXT_WORD.match(text, e)
        if m and m.group(1)[0].isupper() and fold(m.group(1)) not in self.ok_after:
            return True
        m = _PREV_WORD.search(text, max(0, s - 40), s)
        if m and m.group(1)[0].isupper() and fold(m.group(1)) not in self.ok_before:
            return True
        return False

    @staticmethod
    def _country_before(seg: _Segment, pos: int) -> _Hit | None:
        """Country/demonym directly before *pos* (``Azerbaijani ``, ``Azerbaijan's ``)."""
        text = seg.text
        q = pos
        while q > 0 and text[q - 1] in " \t\u00a0":
            q -= 1
        if q == pos:
            return None
        if text[q - 2:q] in ("'s", "\u2019s"):
            q -= 2
        elif q > 0 and text[q - 1] in "'\u2019":
            q -= 1
        return seg.country_by_end.get(q)

    # -- names

    def _cut(self, seg: _Segment, s: int, e: int, word: str, kind: str) -> bool:
        """True when the token at [s, e) cannot be part of a personal name."""
        if kind == "w":
            if fold(word) in self.stopwords:
                return True
            if len(word) > 1 and word.isupper():
                return True
        for h in seg.titles:
            if h.start < e and s < h.end and (h.target.kind == "role" or h.titled):
                return True
        for h in seg.orgs:
            if h.start < e and s < h.end:
                return True
        for h in seg.countries:
            if h.start < e and s < h.end and fold(h.text) not in self.person_like:
                return True
        return False

    def _tokens_at(self, text: str, p: int) -> list[tuple[int, int, str, str]]:
        out = []
        while len(out) < 7:
            m = _TOKEN.match(text, p)
            if not m:
                break
            kind = m.lastgroup or "w"
            s, e = m.span()
            word = m.group()
            possessive = False
            if kind == "w":
                pm = _POSSESSIVE.search(word)
                if pm and pm.start() > 1:
                    e = s + pm.start()
                    word = word[: pm.start()]
                    possessive = True
            out.append((s, e, word, kind))
            if possessive:
                break
            if kind == "i" and e < len(text) and not text[e].isspace():
                p = e
                continue
            if e < len(text) and text[e] in " \u00a0":
                p = e + 1
            else:
                break
        return out

    def _valid_name(self, toks: list[tuple[int, int, str, str]], allow_single: bool, text: str):
        while toks and toks[0][3] == "p":
            toks = toks[1:]
        while toks and toks[-1][3] != "w":
            toks = toks[:-1]
        if not toks:
            return None
        core = [t for t in toks if t[3] != "p"]
        words = [t for t in core if t[3] == "w"]
        if not words or len(core) > 4:
            return None
        if len(core) == 1:
            if not allow_single or _CAP_NEXT.match(text, toks[-1][1]):
                return None
        s, e = toks[0][0], toks[-1][1]
        return s, e, " ".join(text[s:e].split())

    def _name_after(self, seg: _Segment, p: int, allow_single: bool):
        toks = self._tokens_at(seg.text, p)
        keep = []
        for t in toks:
            if self._cut(seg, t[0], t[1], t[2], t[3]):
                break
            keep.append(t)
        if len(keep) < len(toks) and len(keep) == 1:
            return None   # "Motors Co": a single word followed by a non-name word
        return self._valid_name(keep, allow_single, seg.text)

    def _name_before(self, seg: _Segment, end: int):
        text = seg.text
        lo = max(0, end - 90)
        toks = [(m.start(), m.end(), m.group(), m.lastgroup or "w") for m in _TOKEN.finditer(text, lo, end)]
        chain: list[tuple[int, int, str, str]] = []
        pos = end
        for t in reversed(toks):
            if not chain:
                ok = t[1] == end
            else:
                gap = text[t[1]:pos]
                ok = gap in (" ", "\u00a0") or (t[3] == "i" and gap == "")
            if not ok or self._cut(seg, t[0], t[1], t[2], t[3]):
                break
            chain.insert(0, t)
            pos = t[0]
        if len([t for t in chain if t[3] != "p"]) < 2:
            return None
        return self._valid_name(chain, False, text)

    # -- officials

    def _officials(self, seg: _Segment) -> list[_Official]:
        text = seg.text
        titles = sorted(seg.titles, key=lambda h: h.start)
        by_start = {h.start: h for h in titles}
        org_by_start = {h.start: h for h in seg.orgs}
        used: set[int] = set()
        out: list[_Official] = []
        for h in titles:
            if h.start in used:
                continue
            items = [h]
            pos = h.end
            of_code: str | None = None
            while True:
                g = _GAP.match(text, pos).end()
                nxt = by_start.get(g)
                if nxt is not None and g > pos:
                    items.append(nxt)
                    used.add(nxt.start)
                    pos = nxt.end
                    continue
                m = _LINK.match(text, pos)
                if m:
                    c = seg.country_by_start.get(m.end())
                    if c is not None:
                        if m.group(1).lower() in ("of", "for") and of_code is None:
                            of_code = c.target.key
                        pos = c.end
                        sp = _SPACES.match(text, pos)
                        o = org_by_start.get(sp.end()) if sp else None
                        if o is not None:
                            pos = o.end
                        continue
                    o = org_by_start.get(m.end())
                    if o is not None and m.group(1).lower() == "of":
                        of_code = of_code or o.target.code
                        pos = o.end
                        continue
                break
            if any(it.target.elliptic for it in items[:-1]):
                continue
            roles = [it for it in items if it.target.kind == "role"]
            ranks = [it for it in items if it.target.kind == "rank"]
            elliptic = items[-1].target.elliptic

            name = None
            direct_code = None
            if elliptic:
                if text[pos:pos + 1] in (" ", "\u00a0"):
                    name = self._name_after(seg, pos + 1, allow_single=False)
            else:
                p = _NAME_GAP.match(text, pos).end()
                c = seg.country_by_start.get(p) if p > pos else None
                if c is not None and text[c.end:c.end + 1] == " ":
                    # "президент России Владимир Путин": country between role and name
                    name = self._name_after(seg, c.end + 1, allow_single=True)
                    if name is not None:
                        direct_code = c.target.key
                elif p > pos:
                    name = self._name_after(seg, p, allow_single=True)
            before = self._country_before(seg, items[0].start)
            ev_start = before.start if before is not None else items[0].start
            if name is not None:
                ev = text[ev_start:name[1]]
            elif not elliptic:
                prefix = before.start if before is not None else items[0].start
                m = _BEFORE_NAME.search(text, max(0, prefix - 40), prefix)
                if m is None:
                    continue
                name = self._name_before(seg, m.start())
                if name is None:
                    continue
                ev = text[name[0]:pos]
            else:
                continue
            code = (before.target.key if before is not None else None) or of_code or direct_code
            if code is None:
                code = next((r.target.code for r in roles if r.target.code), None)
            out.append(_Official(
                name=name[2],
                role=roles[0].target.key if roles else None,
                rank=ranks[0].target.key if ranks else None,
                code=code,
                evidence=[" ".join(ev.split())],
                pos=seg.offset + min(ev_start, name[0]),
            ))
        return out

    # -- extraction

    def extract(self, title: str | None, text: str | None, language: str | None = None) -> list[Entity]:
        title = title or ""
        text = text or ""
        if not title.strip() and not text.strip():
            return []
        compiled = self._compiled(self._langs_for(language))
        segs: list[tuple[_Segment, bool]] = []
        if title:
            segs.append((_Segment(title, 0), not _title_cased(title)))
        if text:
            segs.append((_Segment(text, len(title) + 1), True))
        officials: list[_Official] = []
        for seg, names_ok in segs:
            self._scan(seg, compiled)
            if names_ok and seg.titles:
                officials.extend(self._officials(seg))
        return (self._country_entities([s for s, _ in segs])
                + self._official_entities(officials, [s for s, _ in segs])
                + self._org_entities([s for s, _ in segs]))

    def _country_entities(self, segs: list[_Segment]) -> list[Entity]:
        acc: dict[str, dict[str, Any]] = {}
        for seg in segs:
            hits = seg.countries
            for i, h in enumerate(hits):
                a = acc.setdefault(h.target.key, {"ev": {}, "n": 0, "pos": seg.offset + h.start})
                a["n"] += 1
                a["ev"].setdefault(h.text, None)
                # compounds: "Azerbaijani-Turkish"
                if i + 1 < len(hits) and seg.text[h.end:hits[i + 1].start] in ("-", "\u2010", "\u2011", "\u2013"):
                    nxt = hits[i + 1]
                    comp = seg.text[h.start:nxt.end]
                    a["ev"].setdefault(comp, None)
                    b = acc.setdefault(nxt.target.key, {"ev": {}, "n": 0, "pos": seg.offset + nxt.start})
                    b["ev"].setdefault(nxt.text, None)
                    b["ev"].setdefault(comp, None)
        ents = [Entity("country", self.display.get(code, code), code, None, None, list(a["ev"]), a["n"])
                for code, a in sorted(acc.items(), key=lambda kv: (-kv[1]["n"], kv[1]["pos"]))]
        return ents

    def _official_entities(self, officials: list[_Official], segs: list[_Segment]) -> list[Entity]:
        merged: dict[str, _Official] = {}
        for o in officials:
            k = fold(o.name)
            cur = merged.get(k)
            if cur is None:
                merged[k] = _Official(o.name, o.role, o.rank, o.code, list(o.evidence), o.pos, 1)
            else:
                self._absorb(cur, o)

        def parts(name: str) -> list[str]:
            return name.replace(".", ". ").split()

        # "Z. Hasanov", "C.S. Tüfekçi", "Hasanov" → the full name with that surname
        for k in list(merged):
            o = merged[k]
            ps = parts(o.name)
            given = ps[:-1]
            if given and not all(p.endswith(".") for p in given):
                continue
            sur = fold(ps[-1])
            cands = []
            for k2, o2 in merged.items():
                if k2 == k:
                    continue
                ps2 = parts(o2.name)
                if len(ps2) < 2 or fold(ps2[-1]) != sur or any(p.endswith(".") for p in ps2[:-1]) and not given:
                    continue
                inits = [fold(p[0]) for p in given]
                full_inits = [fold(p[0]) for p in ps2[:-1]]
                if inits and full_inits[: len(inits)] != inits:
                    continue
                cands.append(k2)
            if len(cands) == 1:
                tgt = merged[cands[0]]
                self._absorb(tgt, o)
                tgt.pos = min(tgt.pos, o.pos)
                del merged[k]

        # mentions: occurrences of the surname (when no other official shares it)
        folded_all = " ".join(s.folded for s in segs)
        surnames: dict[str, int] = {}
        for o in merged.values():
            sur = fold(parts(o.name)[-1])
            surnames[sur] = surnames.get(sur, 0) + 1
        ents = []
        for o in sorted(merged.values(), key=lambda o: o.pos):
            n = o.count
            sur = fold(parts(o.name)[-1])
            if surnames[sur] == 1 and len(sur) > 2:
                hits = 0
                for m in re.finditer(re.escape(sur) + r"(?!\w)", folded_all):
                    if m.start() == 0 or not folded_all[m.start() - 1].isalnum():
                        hits += 1
                n = max(n, hits)
            ents.append(Entity("official", o.name, o.code, o.role, o.rank, o.evidence, n))
        ents.sort(key=lambda e: -e.mentions)
        return ents

    @staticmethod
    def _absorb(into: _Official, o: _Official) -> None:
        into.count += o.count
        into.role = into.role or o.role
        into.rank = into.rank or o.rank
        into.code = into.code or o.code
        for ev in o.evidence:
            if ev not in into.evidence:
                into.evidence.append(ev)
        if len(o.name) > len(into.name) and fold(o.name).endswith(fold(into.name)):
            into.name = o.name

    def _org_entities(self, segs: list[_Segment]) -> list[Entity]:
        acc: dict[tuple[str, str | None], dict[str, Any]] = {}
        for seg in segs:
            for h in seg.orgs:
                t = h.target
                code = t.code
                if code is None:
                    c = self._country_before(seg, h.start)
                    if c is None and (self._org_types.get(t.key) or t.extra) in _NATIONAL_ORG_TYPES:
                        # "Ministry of Defence of Azerbaijan" (not "Islamic State of Iraq")
                        m = _LINK.match(seg.text, h.end)
                        if m and m.group(1).lower() == "of":
                            c = seg.country_by_start.get(m.end())
                    code = c.target.key if c is not None else None
                a = acc.setdefault((t.key, code), {"ev": {}, "n": 0, "pos": seg.offset + h.start,
                                                   "type": self._org_types.get(t.key) or t.extra})
                a["n"] += 1
                a["ev"].setdefault(h.text, None)
        # mentions without a country join the only same-named entity that has one
        for (name, code) in [k for k in acc if k[1] is None]:
            coded = [k for k in acc if k[0] == name and k[1] is not None]
            if len(coded) == 1:
                src, dst = acc.pop((name, None)), acc[coded[0]]
                dst["n"] += src["n"]
                dst["pos"] = min(dst["pos"], src["pos"])
                for ev in src["ev"]:
                    dst["ev"].setdefault(ev, None)
        return [Entity("organisation", name, code, a["type"], None, list(a["ev"]), a["n"])
                for (name, code), a in sorted(acc.items(), key=lambda kv: (-kv[1]["n"], kv[1]["pos"]))]


# ---------------------------------------------------------------- loading

def load_entity_rules(path: str | Path | None = None) -> EntityRules:
    """The rules for *path* (default: ``settings.entity_rules``), built once per path."""
    if path is None:
        from .settings import get_settings
        path = get_settings().entity_rules
    return _load_entity_rules(str(path))


@functools.lru_cache(maxsize=8)
def _load_entity_rules(path: str) -> EntityRules:
    return EntityRules.from_file(path)


def extract_entities(title: str | None, text: str | None, language: str | None = None) -> list[Entity]:
    """Countries (sorted by mentions desc), then officials, then organisations."""
    return load_entity_rules().extract(title, text, language)
