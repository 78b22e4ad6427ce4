"""The inverted index (tantivy): BM25 over titles and attributes (the lexical channel) and
Boolean attribute filters (the relevance-control constraints).

Schema: ``row`` (u64, fast: the product-table row), ``title`` and ``attrs`` (default
tokenizer, BM25), and one raw-tokenized field per filter field holding the normalised
value (``normalize_value``). A filter ``{field: [values]}`` is a term-set query per
field (OR within a field) joined by Must (AND across fields).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tantivy

from vlsearch.errors import InputError, WorkdirError
from vlsearch.queries import canonical
from vlsearch.queries import product_value as queries_product_value

FILTER_FIELDS = ("brand", "category", "gender", "colour", "usage", "master_category", "sub_category")
ROW, TITLE, ATTRS = "row", "title", "attrs"
MAX_TOKEN_CHARS = 40  # tantivy's default tokenizer drops longer tokens; the query side does too
WRITER_HEAP_BYTES = 64_000_000  # tantivy writer memory budget
QUERY_TERMS_MAX = 64  # query tokens used by BM25 at most

Filter = Mapping[str, Sequence[str]]


def normalize_value(value: object) -> str | None:
    """The form filter values are indexed and matched in (``vlsearch.queries.canonical``:
    NFKC, casefold, single spaces); None for missing-like values."""
    return canonical(value)


def product_value(product, field: str) -> str | None:
    """A product's canonical value for a filter field (the relevance rule's reading of it)."""
    return queries_product_value(product, field)


def check_filter(filters: Filter) -> dict[str, list[str]]:
    """Validate field names and normalise values; unknown fields raise InputError."""
    out: dict[str, list[str]] = {}
    for field, values in filters.items():
        if field not in FILTER_FIELDS:
            raise InputError(f"filter field {field!r}: expected one of {list(FILTER_FIELDS)}")
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, (list, tuple, set, frozenset)):
            raise InputError(f"filter field {field!r}: expected a value or a list of values")
        vals = sorted({v for v in (normalize_value(x) for x in values if isinstance(x, str)) if v})
        if not vals:
            raise InputError(f"filter field {field!r}: no value given")
        out[field] = vals
    return out


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field(ROW, stored=True, indexed=True, fast=True)
    builder.add_text_field(TITLE)
    builder.add_text_field(ATTRS)
    for field in FILTER_FIELDS:
        builder.add_text_field(field, tokenizer_name="raw")
    return builder.build()


def _analyzer() -> tantivy.TextAnalyzer:
    """The query-side twin of tantivy's default tokenizer (simple, remove_long, lowercase)."""
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_CHARS))
        .filter(tantivy.Filter.lowercase())
        .build()
    )


def build_lexical(products: Sequence, path: str | Path) -> None:
    """Index ``products`` (row i = products[i]) into a new tantivy index at ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    index = tantivy.Index(_schema(), path=str(path), reuse=False)
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
    for row, product in enumerate(products):
        doc = tantivy.Document()
        doc.add_unsigned(ROW, row)
        doc.add_text(TITLE, product.title or "")
        attrs = [product_value(product, f) for f in FILTER_FIELDS]
        doc.add_text(ATTRS, " ".join(a for a in attrs if a))
        for field, value in zip(FILTER_FIELDS, attrs):
            if value:
                doc.add_text(field, value)
        writer.add_document(doc)
    writer.commit()
    writer.wait_merging_threads()


class LexicalIndex:
    """Read side: BM25 search and filter evaluation; returns product-table rows."""

    def __init__(self, index: tantivy.Index):
        self.index = index
        self.index.reload()
        self.schema = index.schema
        self.searcher = index.searcher()
        self.n = int(self.searcher.num_docs)
        self.analyzer = _analyzer()

    @classmethod
    def open(cls, path: str | Path) -> LexicalIndex:
        try:
            return cls(tantivy.Index.open(str(path)))
        except (ValueError, OSError) as exc:
            raise WorkdirError(f"{path}: cannot open tantivy index ({exc})") from None

    def _filter_query(self, filters: Filter) -> tantivy.Query:
        clauses = [
            (tantivy.Occur.Must, tantivy.Query.term_set_query(self.schema, field, list(values)))
            for field, values in check_filter(filters).items()
        ]
        return tantivy.Query.boolean_query(clauses)

    def _rows(self, hits) -> np.ndarray:
        if not hits:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.searcher.fast_field_values(ROW, [a for _, a in hits]), dtype=np.int64)

    def filter_mask(self, filters: Filter) -> np.ndarray:
        """Boolean mask over rows of the products that satisfy every constraint."""
        mask = np.zeros(self.n, dtype=bool)
        if self.n:
            hits = self.searcher.search(self._filter_query(filters), limit=self.n, count=False).hits
            mask[self._rows(hits)] = True
        return mask

    def terms(self, text: str) -> list[str]:
        return list(dict.fromkeys(self.analyzer.analyze(text)))[:QUERY_TERMS_MAX]

    def search(self, text: str, k: int, filters: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-``k`` over title and attributes, restricted by ``filters``: (scores, rows)."""
        terms = self.terms(text)
        if not terms or k <= 0 or self.n == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        should = [
            (tantivy.Occur.Should, tantivy.Query.term_query(self.schema, field, term))
            for term in terms
            for field in (TITLE, ATTRS)
        ]
        query = tantivy.Query.boolean_query(should)
        if filters:
            query = tantivy.Query.boolean_query([
                (tantivy.Occur.Must, query),
                (tantivy.Occur.Must, tantivy.Query.const_score_query(self._filter_query(filters), 0.0)),
            ])
        hits = self.searcher.search(query, limit=int(k), count=False).hits
        scores = np.asarray([s for s, _ in hits], dtype=np.float32)
        return scores, self._rows(hits)
