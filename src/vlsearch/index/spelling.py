"""Spelling correction of query terms against the catalog's own vocabulary (symspellpy).

The vocabulary is built at index time from the product titles, the query-understanding
lexicon (brands, categories, colours, ...: every term of its phrases) and the terms of the
logged queries that enough distinct queries share (``IndexConfig.spell_min_query_count``),
each term counted by the number of titles it occurs in, and saved as ``spelling.json`` in
the index version.
At search time a query term that is not in the vocabulary, is at least
``ServeConfig.spell_min_term_chars`` long and is not a number is replaced by the most
frequent vocabulary term at the smallest Damerau-Levenshtein distance (symspellpy's
``Verbosity.CLOSEST``), up to ``spell_max_edit_distance`` edits (one edit for terms shorter
than ``spell_two_edit_chars``). Terms with no such neighbour are reported as unknown, so
the caller can say that nothing in the catalog matched them ("连衣裙" in an English
catalog) instead of showing unrelated products silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlsearch.config import ServeConfig
from vlsearch.io import atomic_write_json, read_json
from vlsearch.text import segment

SPELLING_FILE = "spelling.json"  # the vocabulary in an index version
SPELLING_FORMAT = 1
SYMSPELL_PREFIX_LENGTH = 7  # symspellpy's default prefix length (memory vs speed)


def build_vocabulary(
    titles: Iterable[str],
    lexicon_phrases: Iterable[Iterable[str]] = (),
    queries: Iterable[str] = (),
    min_query_count: int = 0,
) -> dict[str, int]:
    """Term -> number of titles containing it. Lexicon terms are added with at least count 1;
    with ``min_query_count`` > 0, so is every term found in at least that many distinct
    logged ``queries`` (words shoppers use that titles lack: "mens", "festive"; a typo in a
    few logged queries stays out)."""
    counts: Counter[str] = Counter()
    for title in titles:
        counts.update(set(segment(title or "")))
    for phrase in lexicon_phrases:
        for term in phrase:
            counts[term] = max(counts[term], 1)
    if min_query_count > 0:
        in_queries: Counter[str] = Counter()
        for query in set(queries):
            in_queries.update(set(segment(query)))
        for term, n in in_queries.items():
            if n >= min_query_count:
                counts[term] = max(counts[term], 1)
    return dict(sorted(counts.items()))


def save_vocabulary(path: str | Path, vocabulary: Mapping[str, int]) -> None:
    atomic_write_json(Path(path), {"format": SPELLING_FORMAT, "terms": dict(vocabulary)})


def load_vocabulary(path: str | Path) -> dict[str, int]:
    data = read_json(Path(path))
    return {str(term): int(count) for term, count in data["terms"].items()}


@dataclass
class Correction:
    """What the corrector did to one query."""

    text: str  # the query to search: corrected, or the input unchanged
    original: str  # the query as typed
    changes: list[tuple[str, str]] = field(default_factory=list)  # (typed term, replacement)
    unknown: list[str] = field(default_factory=list)  # terms neither known nor correctable

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class SpellCorrector:
    """Corrects query terms against a vocabulary (see the module docstring)."""

    def __init__(self, vocabulary: Mapping[str, int], config: ServeConfig | None = None):
        from symspellpy import SymSpell

        self.config = config or ServeConfig()
        self.vocabulary = dict(vocabulary)
        self._symspell = SymSpell(max_dictionary_edit_distance=self.config.spell_max_edit_distance,
                                  prefix_length=SYMSPELL_PREFIX_LENGTH)
        for term, count in self.vocabulary.items():
            self._symspell.create_dictionary_entry(term, max(int(count), 1))

    @classmethod
    def load(cls, path: str | Path, config: ServeConfig | None = None) -> SpellCorrector:
        return cls(load_vocabulary(path), config)

    def _suggest(self, term: str) -> str | None:
        from symspellpy import Verbosity

        cfg = self.config
        distance = cfg.spell_max_edit_distance if len(term) >= cfg.spell_two_edit_chars else 1
        distance = min(distance, cfg.spell_max_edit_distance)
        found = self._symspell.lookup(term, Verbosity.CLOSEST, max_edit_distance=distance)
        return found[0].term if found else None

    def correct(self, text: str) -> Correction:
        """Correct each unknown term of ``text``; the result keeps the term order."""
        terms = segment(text)
        out = Correction(text=text, original=text)
        fixed: list[str] = []
        for term in terms:
            if term in self.vocabulary or term.isdigit():
                fixed.append(term)
                continue
            suggestion = self._suggest(term) if len(term) >= self.config.spell_min_term_chars else None
            if suggestion is None:
                out.unknown.append(term)
                fixed.append(term)
            else:
                out.changes.append((term, suggestion))
                fixed.append(suggestion)
        if out.changes:
            out.text = " ".join(fixed)
        return out
