"""Query understanding: a lexicon mined from the catalog turns exclusive query terms into
Boolean constraints ("nike shoes" → brand=nike AND category ∈ shoe article types).

Lexicon phrases (term sequences from :func:`vlsearch.text.segment`) map to (field, value)
pairs: brands from the brand field; categories from article types (and their singular /
plural forms), sub- and master categories (expanded to the article types under them) and
the category phrasings of :data:`vlsearch.queries.SYNONYMS`; colours and their synonyms;
genders and their phrasings, a gender constraint accepting every product gender the
relevance rule accepts ("men" → Men or Unisex, ``vlsearch.queries.accepted_values``).
Matching is greedy leftmost-longest, so "red tape shoes" is brand Red Tape, not colour red.
Possessives fold ("men's" → "men"). A phrase claimed by several fields keeps the first of
``FIELD_PRIORITY`` (common words outrank brand names, which are mined from titles and noisy).
Several phrases for one field are OR-ed; fields are AND-ed.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vlsearch.index.lexical import product_value

FIELD_PRIORITY = ("gender", "colour", "category", "brand")  # exact-phrase ties go to the first
MIN_INFLECT_CHARS = 4  # singular/plural variants only for words at least this long


@dataclass(frozen=True)
class Constraint:
    """One active constraint: ``field`` must take one of ``values`` (normalised form)."""

    field: str
    values: tuple[str, ...]
    source: str = "auto"  # auto (query understanding) | filter (given by the caller)
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
    from vlsearch.text import segment

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
    if len(word) < MIN_INFLECT_CHARS or not word.isalpha():
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


def _phrase_variants(text: str) -> set[tuple[str, ...]]:
    terms = terms_of(text)
    if not terms:
        return set()
    return {tuple(terms[:-1]) + (last,) for last in inflections(terms[-1])}


@dataclass
class Lexicon:
    """phrase (tuple of terms) → {field: set of normalised values}; labels for display."""

    phrases: dict[tuple[str, ...], dict[str, set[str]]] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, phrase: Iterable[str], field_name: str, values: Iterable[str]) -> None:
        phrase = tuple(phrase)
        if phrase:
            self.phrases.setdefault(phrase, {}).setdefault(field_name, set()).update(values)

    @property
    def max_len(self) -> int:
        return max((len(p) for p in self.phrases), default=0)

    def label(self, field_name: str, value: str) -> str:
        return self.labels.get(field_name, {}).get(value, value)

    def to_json(self) -> dict:
        return {
            "phrases": [[" ".join(p), {f: sorted(v) for f, v in fv.items()}]
                        for p, fv in sorted(self.phrases.items())],
            "labels": self.labels,
        }

    @classmethod
    def from_json(cls, data: dict) -> Lexicon:
        phrases = {tuple(p.split(" ")): {f: set(v) for f, v in fv.items()} for p, fv in data["phrases"]}
        return cls(phrases=phrases, labels=data.get("labels", {}))


def build_lexicon(products: Sequence) -> Lexicon:
    """Mine brands, categories (with sub/master category expansion), colours and genders."""
    from vlsearch.queries import SYNONYMS, accepted_values

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
    for value in known.get("gender", ()):
        lex.add(terms_of(value), "gender", [value])

    # the mocked-query phrasings: {field: {canonical value: phrasings}}
    for fname in ("category", "colour", "gender"):
        for value, phrasings in SYNONYMS.get(fname, {}).items():
            if fname == "gender":
                values = [v for v in accepted_values("gender", value) if v in known.get("gender", ())]
            else:
                values = [value] if value in known.get(fname, ()) else []
            if values:
                for text in phrasings:
                    lex.add(terms_of(text), fname, values)
    # a bare gender word accepts what the relevance rule accepts ("men" → men, unisex)
    for phrase, fields_ in lex.phrases.items():
        if "gender" in fields_:
            fields_["gender"] = {a for v in fields_["gender"] for a in accepted_values("gender", v)
                                 if a in known.get("gender", ())}
    return lex


@dataclass
class Understanding:
    """What the lexicon found in one query."""

    constraints: list[Constraint]
    terms: list[str]  # the query's terms
    free_terms: list[str]  # terms not claimed by a constraint


def understand(text: str, lexicon: Lexicon) -> Understanding:
    """Greedy leftmost-longest phrase matching; one constraint per field (values OR-ed)."""
    terms = terms_of(text)
    found: dict[str, tuple[set[str], list[str]]] = {}
    free: list[str] = []
    i, longest = 0, lexicon.max_len
    while i < len(terms):
        for length in range(min(longest, len(terms) - i), 0, -1):
            hit = lexicon.phrases.get(tuple(terms[i:i + length]))
            if hit:
                fname = next(f for f in FIELD_PRIORITY if f in hit)
                values, sources = found.setdefault(fname, (set(), []))
                values.update(hit[fname])
                sources.extend(terms[i:i + length])
                i += length
                break
        else:
            free.append(terms[i])
            i += 1
    constraints = [
        Constraint(
            field=f, values=tuple(sorted(found[f][0])), source="auto", terms=tuple(found[f][1]),
            labels=tuple(lexicon.label(f, v) for v in sorted(found[f][0])),
        )
        for f in FIELD_PRIORITY if f in found
    ]
    return Understanding(constraints=constraints, terms=terms, free_terms=free)


def constraint_signature(constraints: Iterable[Constraint]) -> int:
    """A 64-bit id of a constraint set (field and values; 0 for no constraint): the qid table
    stores it per query so the engine knows which constraints a stored answer satisfied."""
    key = sorted((c.field, sorted(c.values)) for c in constraints)
    if not key:
        return 0
    digest = hashlib.blake2b(json.dumps(key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1
