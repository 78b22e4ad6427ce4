"""Query understanding: a lexicon mined from the catalog turns exclusive query terms into
Boolean constraints ("nike shoes" → brand=nike AND category ∈ shoe article types).

Lexicon phrases (term sequences from :func:`vlsearch.text.segment`) map to (field, value)
pairs: brands from the brand field; categories from article types (and their singular /
plural forms), sub- and master categories (expanded to the article types under them) and
the mocked-query category phrasings; colours; genders and their common spellings.
Matching is greedy leftmost-longest, so "red tape shoes" is brand Red Tape, not colour red.
Possessives fold ("men's" → "men"). A phrase claimed by several fields keeps the first of
``FIELD_PRIORITY`` (common words outrank brand names, which are mined from titles and noisy).
Several phrases for one field are OR-ed; fields are AND-ed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from vlsearch.index.lexical import normalize_value, product_value

FIELD_PRIORITY = ("gender", "colour", "category", "brand")  # exact-phrase ties go to the first
GENDER_WORDS = {  # query spellings → catalog gender value (normalised)
    "men": ("men", "man", "mens", "male", "males", "gents", "gentlemen", "guys"),
    "women": ("women", "woman", "womens", "ladies", "lady", "female", "females"),
    "boys": ("boys", "boy"),
    "girls": ("girls", "girl"),
    "unisex": ("unisex",),
}
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
        if term.endswith("'s"):
            term = term[:-2]
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


def _synonym_tables() -> dict[str, dict[str, Sequence[str]]]:
    """Mocked-query phrasings from :mod:`vlsearch.queries`, when that module provides them."""
    try:
        from vlsearch import queries
    except ImportError:
        return {}
    tables = getattr(queries, "SYNONYMS", None)
    return tables if isinstance(tables, dict) else {}


def build_lexicon(products: Sequence) -> Lexicon:
    """Mine brands, categories (with sub/master category expansion), colours and genders."""
    lex = Lexicon()
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)  # (level, name) → article types
    for p in products:
        for fname, raw in (("brand", p.brand), ("category", p.category),
                           ("colour", (p.attributes or {}).get("colour")),
                           ("gender", (p.attributes or {}).get("gender"))):
            if raw:
                labels[fname].setdefault(normalize_value(raw), str(raw))
        cat = product_value(p, "category")
        if cat:
            for level in ("sub_category", "master_category"):
                group = (p.attributes or {}).get(level)
                if group:
                    groups[(level, group)].add(cat)
    lex.labels = dict(labels)

    for value, label in labels.get("brand", {}).items():
        lex.add(terms_of(label), "brand", [value])
    for value, label in labels.get("colour", {}).items():
        lex.add(terms_of(label), "colour", [value])
    for value, label in labels.get("category", {}).items():
        for phrase in _phrase_variants(label):
            lex.add(phrase, "category", [value])
    for (_, group), cats in groups.items():
        for phrase in _phrase_variants(group):
            lex.add(phrase, "category", cats)
    genders = labels.get("gender", {})
    for value, spellings in GENDER_WORDS.items():
        if value in genders:
            for word in spellings:
                lex.add((word,), "gender", [value])

    # mocked-query phrasings: {field: {catalog value: [phrasings]}} for values in this catalog
    for fname, table in _synonym_tables().items():
        fname = "colour" if fname == "color" else fname
        if fname not in FIELD_PRIORITY:
            continue
        for value, phrasings in table.items():
            value = normalize_value(value)
            if value not in labels.get(fname, {}):
                continue
            for text in phrasings:
                lex.add(terms_of(text), fname, [value])
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
