"""The inverted index (tantivy): BM25 over titles and attributes (the lexical channel) and
Boolean attribute filters (the relevance-control constraints).

Schema: ``row`` (u64, fast: the product-table row), ``title`` and ``attrs`` (BM25), and
one raw-tokenized field per filter field holding the normalised value (``normalize_value``).
A filter ``{field: [values]}`` is a term-set query per field (OR within a field) joined by
Must (AND across fields).

Text analysis (written to ``analysis.json`` in the index directory, so the query side always
matches the index it opens): tantivy's simple tokenizer, long tokens removed, lower-cased,
then tantivy's Snowball stemmer (``stemmer``, default English: "shoes" and "Shoe" meet at
"shoe"); Han/hiragana runs are cut into words by jieba first (``text.space_cjk``), on the
titles and on the query, since a Chinese title has no spaces. An index without
``analysis.json`` (built before stemming) is read with the unstemmed analyzer it was built with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tantivy

from vlsearch.errors import InputError, WorkdirError
from vlsearch.io import atomic_write_json, read_json
from vlsearch.text import has_cjk, space_cjk, warm_cjk
from vlsearch.vocabulary import canonical
from vlsearch.vocabulary import product_value as vocabulary_product_value

FILTER_FIELDS = ("brand", "category", "gender", "colour", "usage", "master_category", "sub_category")
ROW, TITLE, ATTRS = "row", "title", "attrs"
MAX_TOKEN_CHARS = 40  # tantivy's default tokenizer drops longer tokens; the query side does too
WRITER_HEAP_BYTES = 64_000_000  # tantivy writer memory budget
QUERY_TERMS_MAX = 64  # query tokens used by BM25 at most
TEXT_TOKENIZER = "vlsearch_text"  # name the title/attrs analyzer is registered under
ANALYSIS_FILE = "analysis.json"

Filter = Mapping[str, Sequence[str]]


def normalize_value(value: object) -> str | None:
    """The form filter values are indexed and matched in (``vlsearch.vocabulary.canonical``:
    NFKC, casefold, single spaces); None for missing-like values."""
    return canonical(value)


def product_value(product, field: str) -> str | None:
    """A product's canonical value for a filter field (the relevance rule's reading of it)."""
    return vocabulary_product_value(product, field)


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


def _schema(analysis: dict | None) -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field(ROW, stored=True, indexed=True, fast=True)
    tokenizer = TEXT_TOKENIZER if analysis else "default"
    builder.add_text_field(TITLE, tokenizer_name=tokenizer)
    builder.add_text_field(ATTRS, tokenizer_name=tokenizer)
    for field in FILTER_FIELDS:
        builder.add_text_field(field, tokenizer_name="raw")
    return builder.build()


def _analyzer(analysis: dict | None) -> tantivy.TextAnalyzer:
    """The title/attrs analyzer: simple, remove_long, lowercase (tantivy's default
    tokenizer), plus the stemmer of ``analysis`` when it names one."""
    builder = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_CHARS))
        .filter(tantivy.Filter.lowercase())
    )
    if analysis and analysis.get("stemmer"):
        builder = builder.filter(tantivy.Filter.stemmer(analysis["stemmer"]))
    return builder.build()


def _prepare_text(text: str, analysis: dict | None) -> str:
    """What the analyzer sees: CJK runs cut into words when the index was built that way."""
    if analysis and analysis.get("cjk") == "jieba":
        return space_cjk(text)
    return text


def lexical_fields(product) -> tuple[str, list[str | None]]:
    """What a product's document is made of: its title and its canonical value of each
    filter field (``FILTER_FIELDS`` order). Products with equal fields have the same document."""
    return product.title or "", [product_value(product, f) for f in FILTER_FIELDS]


def _document(row: int, product, analysis: dict | None) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_unsigned(ROW, row)
    title, attrs = lexical_fields(product)
    doc.add_text(TITLE, _prepare_text(title, analysis))
    doc.add_text(ATTRS, _prepare_text(" ".join(a for a in attrs if a), analysis))
    for field, value in zip(FILTER_FIELDS, attrs):
        if value:
            doc.add_text(field, value)
    return doc


def build_lexical(products: Sequence, path: str | Path, stemmer: str = "english") -> None:
    """Index ``products`` (row i = products[i]) into a new tantivy index at ``path``;
    ``stemmer``: a tantivy Snowball language ("" for none)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    analysis = {"stemmer": stemmer or "", "cjk": "jieba"}
    try:
        _analyzer(analysis)
    except ValueError as exc:
        raise InputError(f"lexical stemmer {stemmer!r}: not a tantivy stemmer language ({exc})") from None
    index = tantivy.Index(_schema(analysis), path=str(path), reuse=False)
    index.register_tokenizer(TEXT_TOKENIZER, _analyzer(analysis))
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
    for row, product in enumerate(products):
        writer.add_document(_document(row, product, analysis))
    writer.commit()
    writer.wait_merging_threads()
    analysis["catalog_has_cjk"] = any(has_cjk(p.title or "") for p in products)
    atomic_write_json(path / ANALYSIS_FILE, analysis)


def update_lexical(path: str | Path, remove_rows: Sequence[int], add: Mapping[int, object]) -> None:
    """In the index at ``path`` (analysed as its ``analysis.json`` says): delete the documents
    of ``remove_rows`` and index ``add`` (row -> product), in one commit (a reader sees all
    of it or none)."""
    path = Path(path)
    analysis = read_json(path / ANALYSIS_FILE) if (path / ANALYSIS_FILE).is_file() else None
    index = tantivy.Index.open(str(path))
    if analysis:
        index.register_tokenizer(TEXT_TOKENIZER, _analyzer(analysis))
    writer = index.writer(heap_size=WRITER_HEAP_BYTES, num_threads=1)
    schema = index.schema
    for row in sorted({int(r) for r in remove_rows} | {int(r) for r in add}):
        # by query: delete_documents_by_term does not match u64 terms (tantivy-py 0.27)
        writer.delete_documents_by_query(tantivy.Query.term_query(schema, ROW, row))
    for row, product in sorted(add.items()):
        writer.add_document(_document(int(row), product, analysis))
    writer.commit()
    writer.wait_merging_threads()
    if (analysis is not None and not analysis.get("catalog_has_cjk")
            and any(has_cjk(p.title or "") for p in add.values())):
        atomic_write_json(path / ANALYSIS_FILE, {**analysis, "catalog_has_cjk": True})


class LexicalIndex:
    """Read side: BM25 search and filter evaluation; returns product-table rows."""

    def __init__(self, index: tantivy.Index, analysis: dict | None = None):
        self.index = index
        self.analysis = analysis
        self.analyzer = _analyzer(analysis)
        if analysis:
            self.index.register_tokenizer(TEXT_TOKENIZER, self.analyzer)
        self.index.reload()
        self.schema = index.schema
        self.searcher = index.searcher()
        self.n = int(self.searcher.num_docs)

    @classmethod
    def open(cls, path: str | Path) -> LexicalIndex:
        path = Path(path)
        analysis = read_json(path / ANALYSIS_FILE) if (path / ANALYSIS_FILE).is_file() else None
        if analysis and analysis.get("catalog_has_cjk"):
            warm_cjk()  # jieba's dictionary loads now, not on the first Chinese query
        try:
            return cls(tantivy.Index.open(str(path)), analysis)
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
        return list(dict.fromkeys(self.analyzer.analyze(_prepare_text(text, self.analysis))))[:QUERY_TERMS_MAX]

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
