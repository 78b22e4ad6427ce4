"""Keyword Enhancement (MAKE): click-log keywords appended to short queries.

Mining (ours; the paper leaves the form out). Every training click row ``(query, product,
count)`` is ``count`` events. With ``Q`` the query's term set and ``T`` the clicked title's
term set, over all events:

    n(q)    = events whose query has term q
    n(t)    = events whose clicked title has term t
    n(q, t) = events with both (t != q)
    PMI(q, t) = log( n(q, t) * N / (n(q) * n(t)) ),   N = all events

Kept: query terms with ``n(q) >= keyword_min_term_count``, pairs with ``n(q, t) >=
keyword_min_pair_count``; the top ``keywords_per_term`` title terms by PMI (ties: more
events, then alphabetical). A query of at most ``keyword_max_query_terms`` terms gets up to
``keywords_per_query`` keywords: its terms' lists merged by PMI, minus terms already in the
query. They enter the query tower as the second segment. Stored as ``keywords.json``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from vlsearch.config import ModelConfig
from vlsearch.errors import WorkdirError
from vlsearch.io import atomic_write_json, read_json
from vlsearch.text import query_terms, segment

KEYWORDS_FORMAT = 1


@dataclass
class KeywordTable:
    """Query term -> [(title term, PMI), ...], best first."""

    terms: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.terms)

    def keywords(self, query: str, per_query: int, max_query_terms: int) -> list[str]:
        """Keywords for ``query`` (empty for long queries or unknown terms)."""
        terms = query_terms(query)
        if not terms or len(terms) > max_query_terms or per_query <= 0:
            return []
        candidates = [(pmi, kw) for term in terms for kw, pmi in self.terms.get(term, ())]
        chosen: list[str] = []
        for _, kw in sorted(candidates, key=lambda c: -c[0]):  # stable: ties keep table order
            if kw not in terms and kw not in chosen:
                chosen.append(kw)
            if len(chosen) == per_query:
                break
        return chosen

    def to_json(self) -> dict:
        return {
            "format_version": KEYWORDS_FORMAT,
            "terms": {t: [[kw, pmi] for kw, pmi in kws] for t, kws in sorted(self.terms.items())},
        }

    @classmethod
    def from_json(cls, obj: dict, source: str = "keywords.json") -> KeywordTable:
        if not isinstance(obj, dict) or obj.get("format_version") != KEYWORDS_FORMAT:
            raise WorkdirError(f"{source}: expected keywords format version {KEYWORDS_FORMAT}")
        return cls({t: [(kw, float(pmi)) for kw, pmi in kws] for t, kws in obj["terms"].items()})

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> KeywordTable:
        return cls.from_json(read_json(path), str(path))


def mine_keywords(
    clicks: Iterable[tuple[str, str, int]],
    *,
    min_term_count: int = ModelConfig.keyword_min_term_count,
    min_pair_count: int = ModelConfig.keyword_min_pair_count,
    per_term: int = ModelConfig.keywords_per_term,
) -> KeywordTable:
    """Top-PMI title terms per query term from ``(query, clicked title, count)`` rows."""
    n_q: Counter[str] = Counter()
    n_t: Counter[str] = Counter()
    n_qt: Counter[tuple[str, str]] = Counter()
    total = 0
    for query, title, count in clicks:
        q_terms, t_terms = set(query_terms(query)), set(segment(title))
        total += count
        for q in q_terms:
            n_q[q] += count
        for t in t_terms:
            n_t[t] += count
        for q in q_terms:
            for t in t_terms:
                if t != q:
                    n_qt[q, t] += count
    table: dict[str, list[tuple[str, float, int]]] = {}
    for (q, t), n in n_qt.items():
        if n < min_pair_count or n_q[q] < min_term_count:
            continue
        table.setdefault(q, []).append((t, math.log(n * total / (n_q[q] * n_t[t])), n))
    return KeywordTable(
        {
            q: [(t, pmi) for t, pmi, _ in sorted(rows, key=lambda r: (-r[1], -r[2], r[0]))[:per_term]]
            for q, rows in table.items()
        }
    )


def mine_from_workdir(workdir, cfg: ModelConfig) -> KeywordTable:
    """Mine the work directory's training click log (joined to product titles)."""
    products = workdir.product_table()
    titles = dict(zip(products.column("id").to_pylist(), products.column("title").to_pylist()))
    clicks = workdir.clicks()
    rows = (
        (q, titles[pid], int(c))
        for q, pid, c in zip(
            clicks.column("query").to_pylist(),
            clicks.column("product_id").to_pylist(),
            clicks.column("count").to_pylist(),
        )
        if pid in titles
    )
    return mine_keywords(
        rows,
        min_term_count=cfg.keyword_min_term_count,
        min_pair_count=cfg.keyword_min_pair_count,
        per_term=cfg.keywords_per_term,
    )
