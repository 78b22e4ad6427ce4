"""Query understanding: a lexicon turns exclusive query terms into Boolean constraints
("nike shoes" → brand=nike AND category ∈ shoe article types) and ambiguous ones into soft
preferences (a boost in fusion).

Lexicon phrases (term sequences from :func:`vlsearch.text.segment`) map to (field, values)
in three layers, looked up in this order:

* **catalog**: the exact catalog values: brands from the brand field; categories from
  article types (and their singular / plural forms), sub- and master categories (expanded
  to the article types under them); colours; genders and their spellings
  (``vlsearch.vocabulary.GENDER_ALIASES``), a gender constraint accepting every product
  gender the relevance rule accepts ("men" → Men or Unisex).
* **synonyms** (optional, ``ServeConfig.synonyms``): hand-written phrase tables
  ``{field: {canonical value: phrasings}}`` given at build time.
* **mined**: phrases mined from the catalog's titles and the click log
  (:mod:`vlsearch.index.evidence`): hard when both sources agree, else soft.

Matching is greedy leftmost-longest over the active layers (at equal length the earlier
layer wins), so "red tape shoes" is brand Red Tape, not colour red. Possessives fold ("men's"
→ "men"). A catalog phrase claimed by several fields keeps the first of ``FIELD_PRIORITY``
(common words outrank brand names, which are mined from titles and noisy). Several phrases
for one field are OR-ed; fields are AND-ed; a soft phrase on a field that also has a hard
constraint is dropped.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from vlsearch.index.lexical import product_value
from vlsearch.text import segment
from vlsearch.vocabulary import GENDER_ALIASES, accepted_values

FIELD_PRIORITY = ("gender", "colour", "category", "brand")  # exact-phrase ties go to the first
LAYERS = ("catalog", "synonyms", "mined")  # lookup order at equal phrase length
Phrases = dict[tuple[str, ...], dict[str, set[str]]]
MIN_INFLECT_CHARS = 4  # singular/plural variants only for words at least this long
LEXICON_FILE = "lexicon.json"  # an index version's lexicon (``Lexicon.to_json``)


@dataclass(frozen=True)
class Constraint:
    """One active constraint: ``field`` must take one of ``values`` (normalised form)."""

    field: str
    values: tuple[str, ...]
    source: str = "auto"  # auto (query understanding) | filter (given by the caller) | soft (a preference)
    terms: tuple[str, ...] = ()  # the query terms it came from (auto only)
    labels: tuple[str, ...] = ()  # display names of the values

    def __str__(self) -> str:
        shown = self.labels or self.values
        return f"{self.field}={shown[0]}" if len(shown) == 1 else f"{self.field} in {{{', '.join(shown)}}}"

    def to_dict(self) -> dict:
        return {"field": self.field, "values": list(self.values), "labels": list(self.labels or self.values),
                "source": self.source, "terms": list(self.terms), "text": str(self)}


def terms_of(text: str) -> list[str]:
    """Segmented, lower-cased terms with possessives folded ("men's" → "men")."""
    out = []
    for term in segment(text):
        term = term.removesuffix("'s")
        term = term.replace("'", "")
        if term:
            out.append(term)
    return out


def inflections(word: str) -> set[str]:
    """The word plus a simple English singular or plural of it."""
    forms = {word}
    if len(word) < MIN_INFLECT_CHARS or not (word.isascii() and word.isalpha()):
        return forms
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    elif word.endswith(("ses", "xes", "ches", "shes")):
        forms.add(word[:-2])
    elif word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    elif word.endswith("y") and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    elif word.endswith(("s", "x", "ch", "sh")):
        forms.add(word + "es")
    else:
        forms.add(word + "s")
    return forms


@functools.lru_cache(maxsize=1 << 16)
def _fold_term(term: str) -> str:
    return min(inflections(term), key=lambda f: (len(f), f))


def fold(terms: Iterable[str]) -> tuple[str, ...]:
    """Each term in its shortest inflection ("sneakers" → "sneaker"): the key of the mined
    layer, so that singular and plural pool their evidence and match either way."""
    return tuple(_fold_term(t) for t in terms)


def _phrase_variants(text: str) -> set[tuple[str, ...]]:
    terms = terms_of(text)
    if not terms:
        return set()
    return {tuple(terms[:-1]) + (last,) for last in inflections(terms[-1])}


@dataclass
class Lexicon:
    """phrase (tuple of terms) → {field: set of normalised values} per layer; labels for display.

    ``phrases`` is the catalog layer, ``synonyms`` the optional hand tables, ``mined`` the
    evidence layer (one field per phrase); ``soft`` names the mined phrases that are
    preferences, not constraints."""

    phrases: Phrases = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    synonyms: Phrases = field(default_factory=dict)
    mined: Phrases = field(default_factory=dict)
    soft: set[tuple[str, ...]] = field(default_factory=set)

    def layer(self, name: str) -> Phrases:
        return {"catalog": self.phrases, "synonyms": self.synonyms, "mined": self.mined}[name]

    def add(self, phrase: Iterable[str], field_name: str, values: Iterable[str], layer: str = "catalog") -> None:
        phrase = tuple(phrase)
        if phrase:
            self.layer(layer).setdefault(phrase, {}).setdefault(field_name, set()).update(values)

    def add_mined(self, terms: Iterable) -> None:
        """Add :class:`vlsearch.index.evidence.MinedTerm` s (gender values widened to what
        the relevance rule accepts)."""
        known_genders = set(self.labels.get("gender", {}))
        for term in terms:
            values = set(term.values)
            if term.field == "gender":
                values = {a for v in values for a in accepted_values("gender", v) if a in known_genders}
            if values:
                self.add(term.phrase, term.field, values, "mined")
                if not term.hard:
                    self.soft.add(tuple(term.phrase))

    def with_catalog(self, catalog: Lexicon) -> Lexicon:
        """This lexicon's synonym and mined layers over ``catalog``'s catalog layer and labels
        (a live update rebuilds the catalog values; the mined evidence waits for a build)."""
        return Lexicon(phrases=catalog.phrases, labels=catalog.labels, synonyms=self.synonyms,
                       mined=self.mined, soft=self.soft)

    @property
    def max_len(self) -> int:
        return max((len(p) for name in LAYERS for p in self.layer(name)), default=0)

    def label(self, field_name: str, value: str) -> str:
        return self.labels.get(field_name, {}).get(value, value)

    def to_json(self) -> dict:
        def dump(layer: Phrases) -> list:
            return [[" ".join(p), {f: sorted(v) for f, v in fv.items()}] for p, fv in sorted(layer.items())]

        return {"phrases": dump(self.phrases), "synonyms": dump(self.synonyms), "mined": dump(self.mined),
                "soft": sorted(" ".join(p) for p in self.soft), "labels": self.labels}

    @classmethod
    def from_json(cls, data: dict) -> Lexicon:
        def load(rows: list) -> Phrases:
            return {tuple(p.split(" ")): {f: set(v) for f, v in fv.items()} for p, fv in rows}

        return cls(phrases=load(data["phrases"]), labels=data.get("labels", {}),
                   synonyms=load(data.get("synonyms", [])), mined=load(data.get("mined", [])),
                   soft={tuple(p.split(" ")) for p in data.get("soft", [])})


def build_lexicon(products: Sequence, synonyms: Mapping[str, Mapping[str, Iterable[str]]] | None = None) -> Lexicon:
    """The catalog layer (brands, categories with sub/master category expansion, colours,
    genders and their spellings) and, when given, the hand-written ``synonyms`` layer
    ({field: {canonical value: phrasings}}). The mined layer is added by the builder
    (:meth:`Lexicon.add_mined`)."""
    lex = Lexicon()
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    groups: dict[str, set[str]] = defaultdict(set)  # sub/master category name → article types
    for p in products:
        for fname in FIELD_PRIORITY:
            value = product_value(p, fname)
            raw = p.brand if fname == "brand" else p.category if fname == "category" else \
                (p.attributes or {}).get(fname)
            if value:
                labels[fname].setdefault(value, str(raw).strip())
        cat = product_value(p, "category")
        if cat:
            for level in ("sub_category", "master_category"):
                group = (p.attributes or {}).get(level)
                if group:
                    groups[group].add(cat)
    lex.labels = dict(labels)
    known = {f: set(v) for f, v in labels.items()}

    for value, label in labels.get("brand", {}).items():
        lex.add(terms_of(label), "brand", [value])
    for value, label in labels.get("colour", {}).items():
        lex.add(terms_of(label), "colour", [value])
    for value, label in labels.get("category", {}).items():
        for phrase in _phrase_variants(label):
            lex.add(phrase, "category", [value])
    for group, cats in groups.items():
        for phrase in _phrase_variants(group):
            lex.add(phrase, "category", cats)
    genders = known.get("gender", set())
    for value in genders:
        lex.add(terms_of(value), "gender", [value])
    for spelling, gender in GENDER_ALIASES.items():  # catalog vocabulary: "ladies" → women
        if gender in genders or any(a in genders for a in accepted_values("gender", gender)):
            lex.add(terms_of(spelling), "gender", [gender])

    for fname, table in (synonyms or {}).items():  # {field: {canonical value: phrasings}}
        for value, phrasings in table.items():
            if fname == "gender":
                values = [v for v in accepted_values("gender", value) if v in genders]
            else:
                values = [value] if value in known.get(fname, ()) else []
            if values:
                for text in phrasings:
                    lex.add(terms_of(text), fname, values, "synonyms")
    # a bare gender word accepts what the relevance rule accepts ("men" → men, unisex)
    for layer in (lex.phrases, lex.synonyms):
        for fields_ in layer.values():
            if "gender" in fields_:
                fields_["gender"] = {a for v in fields_["gender"] for a in accepted_values("gender", v)
                                     if a in genders}
    return lex


@dataclass
class Understanding:
    """What the lexicon found in one query."""

    constraints: list[Constraint]  # hard constraints (source "auto")
    terms: list[str]  # the query's terms
    free_terms: list[str]  # terms not claimed by a phrase
    preferences: list[Constraint] = field(default_factory=list)  # soft ones (source "soft")


def understand(text: str, lexicon: Lexicon, synonyms: bool = False) -> Understanding:
    """Greedy leftmost-longest phrase matching over the catalog, (with ``synonyms``) the
    hand-table and the mined layers; one constraint per field (values OR-ed)."""
    return understand_many([text], lexicon, synonyms)[0]


def understand_many(texts: Iterable[str], lexicon: Lexicon, synonyms: bool = False) -> list[Understanding]:
    """:func:`understand` of each text; the lexicon's longest phrase is measured once (that
    scan over every phrase costs more than matching a short query)."""
    layers = [(n, lexicon.layer(n)) for n in LAYERS if synonyms or n != "synonyms"]
    longest = max((len(p) for _, layer in layers for p in layer), default=0)
    return [_match(terms_of(text), lexicon, layers, longest) for text in texts]


def _match(terms: list[str], lexicon: Lexicon, layers: list[tuple[str, Phrases]], longest: int) -> Understanding:
    """One query's terms matched against ``layers`` (phrases of at most ``longest`` terms)."""
    hard: dict[str, tuple[set[str], list[str]]] = {}
    soft: dict[str, tuple[set[str], list[str]]] = {}
    free: list[str] = []
    i = 0
    while i < len(terms):
        for length in range(min(longest, len(terms) - i), 0, -1):
            phrase = tuple(terms[i:i + length])
            folded = fold(phrase)  # the mined layer is keyed by folded phrases; the others by both
            keys = [(n, layer, key) for n, layer in layers
                    for key in ((folded,) if n == "mined" else (phrase, folded))]
            name, hit, key = next(((n, layer[key], key) for n, layer, key in keys if key in layer),
                                  (None, None, None))
            if hit:
                fname = next((f for f in FIELD_PRIORITY if f in hit), None) or min(hit)
                is_soft = name == "mined" and key in lexicon.soft
                values, sources = (soft if is_soft else hard).setdefault(fname, (set(), []))
                values.update(hit[fname])
                sources.extend(phrase)
                i += length
                break
        else:
            free.append(terms[i])
            i += 1

    def build(found, source: str) -> list[Constraint]:
        order = list(FIELD_PRIORITY) + sorted(set(found) - set(FIELD_PRIORITY))
        return [Constraint(field=f, values=tuple(sorted(found[f][0])), source=source, terms=tuple(found[f][1]),
                           labels=tuple(lexicon.label(f, v) for v in sorted(found[f][0])))
                for f in order if f in found]

    preferences = build({f: v for f, v in soft.items() if f not in hard}, "soft")
    return Understanding(constraints=build(hard, "auto"), terms=terms, free_terms=free, preferences=preferences)


def differing_phrases(old: Lexicon, new: Lexicon, synonyms: bool = False) -> set[tuple[str, ...]]:
    """The phrases of the layers ``understand`` reads whose lookup differs between ``old``
    and ``new``: added, removed, other fields or values, or other soft membership."""
    out = set(old.soft ^ new.soft)
    for name in LAYERS:
        if synonyms or name != "synonyms":
            a, b = old.layer(name), new.layer(name)
            out |= {p for p in a.keys() | b.keys() if a.get(p) != b.get(p)}
    return out


def may_read_differently(texts: Iterable[str], phrases: Iterable[tuple[str, ...]]) -> list[bool]:
    """For each text: whether one of ``phrases`` (``differing_phrases``) can match in it. A
    phrase matches only where each of its terms is a query term or the fold of one, so a
    text where none can is understood the same under both lexicons."""
    by_first: dict[str, list[set[str]]] = defaultdict(list)
    for phrase in phrases:
        by_first[phrase[0]].append(set(phrase))
    if not by_first:
        return [False for _ in texts]
    out = []
    for text in texts:
        terms = terms_of(text)
        present = set(terms) | set(fold(terms))
        out.append(any(phrase <= present for t in present for phrase in by_first.get(t, ())))
    return out


def constraint_signature(constraints: Iterable[Constraint]) -> int:
    """A 64-bit id of a constraint set (field and values; 0 for no constraint): the qid table
    stores it per query so the engine knows which constraints a stored answer satisfied."""
    key = sorted((c.field, sorted(c.values)) for c in constraints)
    if not key:
        return 0
    digest = hashlib.blake2b(json.dumps(key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1
