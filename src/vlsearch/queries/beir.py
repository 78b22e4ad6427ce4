"""BEIR evaluation sets and TREC runs: the one writer of ``queries.jsonl`` + ``qrels.tsv``
(used for mocked queries by ``generator.export_beir`` and here for the queries of a real
click log), the corpus file
``corpus.jsonl``, and the readers of BEIR queries, qrels and TREC runs (and the TREC writer).

Every query line carries the same ``metadata``: ``attributes`` (canonical), ``category``
(the intent category, or null), ``source_product`` and ``colour_only_in_image``.

The readers raise ``InputError`` naming the file and line at the first bad line (rows come
from ``vlsearch.tabular``; its bad-byte and malformed-line problems are raised as they come). TREC runs
are read with ties resolved deterministically: each query's lines are sorted by score
(descending), then by the rank written in the file (ascending), then by product id.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TypeVar

from vlsearch.errors import InputError
from vlsearch.io import atomic_write_text
from vlsearch.queries.splits import seeded_int
from vlsearch.tabular import jsonl_rows, raise_problem, text_lines
from vlsearch.vocabulary import ProductLike

if TYPE_CHECKING:  # annotations only
    from vlsearch.queries.clicklog import ClickLog

T = TypeVar("T")
PathLike = str | os.PathLike
Run = dict[str, list[str]]  # query id -> ranked product ids (best first)
Qrels = dict[str, dict[str, int]]  # query id -> product id -> grade

CORPUS_FILE = "corpus.jsonl"  # BEIR corpus file name, beside queries.jsonl and qrels.tsv
QUERIES_FILE = "queries.jsonl"
QRELS_FILE = "qrels.tsv"
QRELS_HEADER = ("query-id", "corpus-id", "score")  # optional first line of a BEIR qrels file
QRELS_HEADER_LINE = "\t".join(QRELS_HEADER) + "\n"
QRELS_COLUMNS = len(QRELS_HEADER)
TREC_RUN_COLUMNS = 6  # qid Q0 docid rank score tag
TREC_ITER_COLUMN = "Q0"  # the fixed second column of a TREC run line
DEFAULT_RUN_TAG = "vlsearch"  # last column of the TREC run lines we write
FIRST_RANK = 1  # TREC ranks are 1-based


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


def seeded_sample(items: Sequence[T], max_queries: int | None, seed: int) -> list[T]:
    """At most ``max_queries`` of ``items``: a seeded sample, their order kept."""
    chosen = list(items)
    if max_queries is not None and len(chosen) > max_queries:
        rng = random.Random(seeded_int(seed, "beir-sample"))
        keep = sorted(rng.sample(range(len(chosen)), max_queries))
        chosen = [chosen[i] for i in keep]
    return chosen


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
    chosen = seeded_sample(sorted(clicks), max_queries, seed)
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


# --- readers (and the TREC run writer) ---------------------------------------------------


@dataclass
class EvalQuery:
    """One BEIR query: its id, text and the metadata written by ``vlsearch prepare``."""

    id: str
    text: str
    metadata: dict = field(default_factory=dict)


def read_beir_queries(path: PathLike) -> list[EvalQuery]:
    """Read a BEIR ``queries.jsonl``: one JSON object a line with ``_id``, ``text`` and an
    optional ``metadata`` object. Blank lines are skipped; an empty file gives ``[]``.

    Raises ``InputError`` naming the file and line for bad JSON, a line that is not an
    object, a missing or non-string ``_id``/``text`` (integer ids are accepted and turned
    into strings), a ``metadata`` that is not an object, a duplicate ``_id`` and non-UTF-8
    bytes.
    """
    queries: list[EvalQuery] = []
    first_line: dict[str, int] = {}
    for number, obj, _, _ in jsonl_rows(path, raise_problem):
        where = f"{path}:{number}"
        qid = obj.get("_id")
        if isinstance(qid, int) and not isinstance(qid, bool):
            qid = str(qid)
        if not isinstance(qid, str) or not qid:
            raise InputError(f"{where} [_id]: expected a non-empty string query id, got {qid!r}")
        text = obj.get("text")
        if not isinstance(text, str):
            raise InputError(f"{where} [text]: expected a string query text, got {text!r}")
        metadata = obj.get("metadata", {})
        if metadata is None:
            metadata = {}
        if not isinstance(metadata, dict):
            raise InputError(
                f"{where} [metadata]: expected a JSON object, got {type(metadata).__name__}"
            )
        if qid in first_line:
            raise InputError(
                f"{where} [_id]: duplicate query id {qid!r} (first on line {first_line[qid]})"
            )
        first_line[qid] = number
        queries.append(EvalQuery(id=qid, text=text, metadata=metadata))
    return queries


def _split_columns(line: str) -> list[str]:
    """Columns of a qrels line: tab-separated, or whitespace-separated when it has no tab."""
    return line.split("\t") if "\t" in line else line.split()


def read_qrels(path: PathLike) -> Qrels:
    """Read a BEIR ``qrels.tsv`` (``query-id<TAB>corpus-id<TAB>score``) into ``Qrels``.

    The header line is optional. Blank lines are skipped; an empty file gives ``{}``.
    Raises ``InputError`` naming the file and line for a wrong column count, an empty id,
    a non-integer grade, a (query, product) pair listed twice and non-UTF-8 bytes.
    """
    qrels: Qrels = {}
    first_line: dict[tuple[str, str], int] = {}
    seen_content = False
    for number, line, _, _ in text_lines(path, raise_problem):
        where = f"{path}:{number}"
        columns = [column.strip() for column in _split_columns(line)]
        if not seen_content:
            seen_content = True
            if tuple(column.lower() for column in columns) == QRELS_HEADER:
                continue
        if len(columns) != QRELS_COLUMNS:
            raise InputError(
                f"{where}: expected {QRELS_COLUMNS} tab-separated columns "
                f"({' '.join(QRELS_HEADER)}), got {len(columns)}"
            )
        qid, doc, grade_text = columns
        if not qid or not doc:
            raise InputError(f"{where}: expected non-empty query-id and corpus-id")
        try:
            grade = int(grade_text)
        except ValueError:
            raise InputError(
                f"{where} [score]: expected an integer grade, got {grade_text!r}"
            ) from None
        if (qid, doc) in first_line:
            raise InputError(
                f"{where}: duplicate judgement for query {qid!r} and product {doc!r} "
                f"(first on line {first_line[qid, doc]})"
            )
        first_line[qid, doc] = number
        qrels.setdefault(qid, {})[doc] = grade
    return qrels


def read_trec_run(path: PathLike) -> tuple[Run, dict[str, list[float]]]:
    """Read a TREC run (``qid Q0 docid rank score tag`` a line, whitespace-separated).

    Returns the ranked product ids of every query and their scores, aligned. Each query's
    lines are sorted by score (descending), ties by the file's rank (ascending), then by
    product id, so the order never depends on line order. Blank lines are skipped; an empty
    file gives empty dicts. Raises ``InputError`` naming the file and line for a wrong column
    count, a non-integer rank, a score that is not a number (NaN included) and non-UTF-8
    bytes. The second column is not checked (some tools write ``0`` instead of ``Q0``).
    """
    rows: dict[str, list[tuple[float, int, str]]] = {}
    for number, line, _, _ in text_lines(path, raise_problem):
        where = f"{path}:{number}"
        columns = line.split()
        if len(columns) != TREC_RUN_COLUMNS:
            raise InputError(
                f"{where}: expected {TREC_RUN_COLUMNS} whitespace-separated columns "
                f"(qid Q0 docid rank score tag), got {len(columns)}"
            )
        qid, _iteration, doc, rank_text, score_text, _tag = columns
        try:
            rank = int(rank_text)
        except ValueError:
            raise InputError(
                f"{where} [rank]: expected an integer rank, got {rank_text!r}"
            ) from None
        try:
            score = float(score_text)
        except ValueError:
            raise InputError(f"{where} [score]: expected a number, got {score_text!r}") from None
        if math.isnan(score):
            raise InputError(f"{where} [score]: expected a number, got NaN")
        rows.setdefault(qid, []).append((score, rank, doc))
    run: Run = {}
    scores: dict[str, list[float]] = {}
    for qid, entries in rows.items():
        entries.sort(key=lambda entry: (-entry[0], entry[1], entry[2]))
        run[qid] = [doc for _, _, doc in entries]
        scores[qid] = [score for score, _, _ in entries]
    return run, scores


def _check_token(value: str, what: str) -> None:
    """A TREC column must be non-empty and free of whitespace, or the file cannot be read back."""
    if not value or any(character.isspace() for character in value):
        raise ValueError(
            f"{what} {value!r} cannot be written to a TREC run: it is empty or has whitespace"
        )


def _trec_lines(
    run: Mapping[str, Sequence[str]], scores: Mapping[str, Sequence[float]] | None, tag: str
) -> Iterator[str]:
    _check_token(tag, "run tag")
    for qid, docs in run.items():
        _check_token(qid, "query id")
        if scores is None:
            query_scores: Sequence[float] = [
                float(len(docs) - position) for position in range(len(docs))
            ]
        else:
            if qid not in scores:
                raise ValueError(f"no scores for query {qid!r}")
            query_scores = scores[qid]
            if len(query_scores) != len(docs):
                raise ValueError(
                    f"query {qid!r}: {len(docs)} product ids but {len(query_scores)} scores"
                )
        previous = math.inf
        for position, (doc, score) in enumerate(zip(docs, query_scores)):
            _check_token(doc, f"product id (query {qid!r})")
            score = float(score)
            if math.isnan(score):
                raise ValueError(f"query {qid!r}: score of {doc!r} is NaN")
            if score > previous:
                raise ValueError(
                    f"query {qid!r}: scores must not increase down the ranking "
                    f"({doc!r} at rank {position + FIRST_RANK} scores {score!r} > {previous!r})"
                )
            previous = score
            yield f"{qid} {TREC_ITER_COLUMN} {doc} {position + FIRST_RANK} {score!r} {tag}\n"


def write_trec_run(
    out: PathLike | IO[str],
    run: Run,
    scores: dict[str, list[float]] | None = None,
    tag: str = DEFAULT_RUN_TAG,
) -> None:
    """Write ``run`` as TREC lines ``qid Q0 docid rank score tag`` (ranks from 1).

    ``out`` is a path (written atomically) or an open text file. Without ``scores`` each
    product scores ``n - position`` so the file reads back in the same order. Scores must not
    increase down a list (the list is best first); equal scores are fine, ``read_trec_run``
    keeps their order through the rank column. Scores are written with ``repr`` so they read
    back exactly. Raises ``ValueError`` for ids or a tag with whitespace, missing or
    misaligned scores and NaN scores; nothing is written to a path in that case.
    """
    text = "".join(_trec_lines(run, scores, tag))
    if isinstance(out, (str, os.PathLike)):
        atomic_write_text(out, text)
    else:
        out.write(text)
