"""BEIR evaluation sets: the one writer of ``queries.jsonl`` + ``qrels.tsv`` (used for mocked
queries and for the queries of a real click log) and the corpus file ``corpus.jsonl``.

Every query line carries the same ``metadata``: ``attributes`` (canonical), ``category``
(the intent category, or null), ``source_product`` and ``colour_only_in_image``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from vlsearch.io import atomic_write_text
from vlsearch.queries.phrases import names_colour
from vlsearch.queries.relevance import RelevanceIndex
from vlsearch.queries.splits import seeded_int
from vlsearch.vocabulary import ProductLike

if TYPE_CHECKING:  # annotations only: writing BEIR files never runs the generator
    from vlsearch.queries.clicklog import ClickLog
    from vlsearch.queries.generator import MockQuery

T = TypeVar("T")
CORPUS_FILE = "corpus.jsonl"  # BEIR corpus file name, beside queries.jsonl and qrels.tsv
QUERIES_FILE = "queries.jsonl"
QRELS_FILE = "qrels.tsv"
QRELS_HEADER_LINE = "query-id\tcorpus-id\tscore\n"


class BeirQuery(NamedTuple):
    """One query to write: its text, its metadata and its judged (product id, grade) pairs."""

    text: str
    metadata: dict[str, Any]
    judged: list[tuple[str, int]]


def beir_metadata(attributes: dict[str, str], category: str | None, source_product: str,
                  colour_only_in_image: bool) -> dict[str, Any]:
    """The ``metadata`` object of a query line (the fields ``vlsearch.evaluation`` reads)."""
    return {
        "attributes": attributes,
        "category": category,
        "source_product": source_product,
        "colour_only_in_image": colour_only_in_image,
    }


def write_beir(out_dir: str | Path, queries: Sequence[BeirQuery], id_prefix: str = "q") -> int:
    """Write ``queries.jsonl`` and ``qrels.tsv`` under ``out_dir`` (atomically), query ids
    ``{id_prefix}{n}``; return the number of queries."""
    query_lines: list[str] = []
    qrel_lines: list[str] = [QRELS_HEADER_LINE]
    for n, query in enumerate(queries):
        qid = f"{id_prefix}{n}"
        record = {"_id": qid, "text": query.text, "metadata": query.metadata}
        query_lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        qrel_lines.extend(f"{qid}\t{pid}\t{grade}\n" for pid, grade in query.judged)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / QUERIES_FILE, "".join(query_lines))
    atomic_write_text(out_dir / QRELS_FILE, "".join(qrel_lines))
    return len(queries)


def _seeded_sample(items: Sequence[T], max_queries: int | None, seed: int) -> list[T]:
    """At most ``max_queries`` of ``items``: a seeded sample, their order kept."""
    chosen = list(items)
    if max_queries is not None and len(chosen) > max_queries:
        rng = random.Random(seeded_int(seed, "beir-sample"))
        keep = sorted(rng.sample(range(len(chosen)), max_queries))
        chosen = [chosen[i] for i in keep]
    return chosen


def export_beir(
    queries: Sequence[MockQuery],
    products: Sequence[ProductLike],
    out_dir: str | Path,
    max_queries: int | None = None,
    seed: int = 0,
    id_prefix: str = "q",
) -> int:
    """Write ``queries.jsonl`` and ``qrels.tsv`` (BEIR layout) under ``out_dir``; return the
    number of queries written.

    At most ``max_queries`` queries are kept (a seeded sample, original order kept). Query
    ids are ``{id_prefix}{n}``. ``metadata``: ``attributes`` (canonical), ``category`` (the
    intent category in catalog spelling, or null), ``source_product``, and
    ``colour_only_in_image`` (the query names a colour that the source title does not).
    Qrels: score 2 for the source product (the "click"), 1 for every other product of
    ``products`` that satisfies all attributes (``relevant``), found by intersecting
    attribute posting sets (``RelevanceIndex``). Both files are written atomically.
    """
    index = RelevanceIndex(products)
    by_id = {p.id: p for p in index.products}
    out: list[BeirQuery] = []
    for q in _seeded_sample(queries, max_queries, seed):
        source = by_id.get(q.product_id)
        colour = q.attributes.get("colour")
        only_in_image = bool(colour) and source is not None and not names_colour(source.title, colour)
        metadata = beir_metadata(dict(q.attributes), q.attributes.get("category"), q.product_id,
                                 only_in_image)
        judged = [(q.product_id, 2)] if source is not None else []
        judged += [(pid, 1) for pid in index.matching(q.attributes) if pid != q.product_id]
        out.append(BeirQuery(q.text, metadata, judged))
    return write_beir(out_dir, out, id_prefix)


def _click_query(products: dict[str, ProductLike], clicks: dict[str, int],
                 spellings: dict[str, int]) -> BeirQuery:
    """One query of a click log: its most-clicked spelling, every clicked product at grade 2,
    the category holding most of its clicks as its intent."""
    text = max(spellings.items(), key=lambda kv: (kv[1], kv[0]))[0]
    category_mass: dict[str, int] = {}
    for pid, count in clicks.items():
        category = products[pid].category
        if category:
            category_mass[category] = category_mass.get(category, 0) + count
    top = max(clicks.items(), key=lambda kv: (kv[1], kv[0]))[0]
    category = max(category_mass, key=category_mass.get) if category_mass else None
    return BeirQuery(text, beir_metadata({}, category, top, False),
                     [(pid, 2) for pid in sorted(clicks)])


def export_click_beir(
    log: ClickLog,
    products: Sequence[ProductLike],
    out_dir: str | Path,
    max_queries: int | None = None,
    seed: int = 0,
    id_prefix: str = "q",
) -> int:
    """BEIR files for queries of a real click log; return the number of queries written.

    Each distinct query (by query id) becomes one query whose text is its most-clicked
    spelling. Every clicked product of a known id is judged with grade 2 (a click), so
    Recall@K is the papers' share of (query, clicked product) pairs found in the top K.
    ``metadata.category`` is the intent category from behaviour: the category holding the
    most clicks of the query (as the papers derive intents from statistics of behaviour);
    ``attributes`` is empty, since a real query's attributes are not known.
    """
    by_id = {p.id: p for p in products}
    clicks: dict[int, dict[str, int]] = {}
    spellings: dict[int, dict[str, int]] = {}
    for q, row in zip(log.qids().tolist(), log.rows()):
        if row.product_id not in by_id:
            continue
        per_product = clicks.setdefault(q, {})
        per_product[row.product_id] = per_product.get(row.product_id, 0) + row.count
        per_text = spellings.setdefault(q, {})
        per_text[row.query] = per_text.get(row.query, 0) + row.count
    chosen = _seeded_sample(sorted(clicks), max_queries, seed)
    out = [_click_query(by_id, clicks[q], spellings[q]) for q in chosen]
    return write_beir(out_dir, out, id_prefix)


def corpus_text(products: Sequence[ProductLike]) -> str:
    """The BEIR ``corpus.jsonl`` of ``products``: one line a product with ``_id``, ``title``,
    ``text`` (brand, category and attributes as ``key: value`` pairs, for tools that embed
    title + text) and ``metadata`` (brand, category, attributes)."""
    lines = []
    for p in products:
        attributes = dict(getattr(p, "attributes", None) or {})
        facts = {"brand": p.brand, "category": p.category, **attributes}
        text = "; ".join(f"{key}: {value}" for key, value in facts.items() if value)
        record = {"_id": str(p.id), "title": p.title, "text": text,
                  "metadata": {"brand": p.brand, "category": p.category, "attributes": attributes}}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def export_corpus(products: Sequence[ProductLike], out_dirs: Sequence[str | Path]) -> int:
    """Write the BEIR ``corpus.jsonl`` into each of ``out_dirs`` (every eval split, so each split
    folder is a complete BEIR dataset); return the number of products."""
    text = corpus_text(products)
    for out_dir in out_dirs:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / CORPUS_FILE, text)
    return len(products)
