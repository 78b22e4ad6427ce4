"""Offline retrieval metrics and the readers/writers of their inputs (BEIR queries, qrels, TREC runs).

The metrics follow section 4.1 of the Delving paper, with the forms the paper leaves out
fixed here:

* **Recall@K** (``recall_at_k``) is the papers' hit rate: the share of (query, clicked
  product) pairs whose product is among the query's top K. Clicked means a qrels grade of
  at least ``min_grade`` (2 in the prepared eval sets: the product the query was mocked
  from).
* **Set recall@K** (``set_recall_at_k``): per query ``|relevant ∩ top K| / min(|relevant|, K)``
  with relevant meaning grade >= 1, averaged over queries. The denominator is capped at K
  so that a perfect ranking scores 1 even when more products are relevant than fit in the
  top K (a query such as "red dress" can have thousands of relevant products).
* **Standard measures** (``ndcg@K``, ``trec_recall@K``, ``mrr@K``) are computed by
  `ir-measures <https://ir-measur.es>`_ over ``pytrec_eval`` (trec_eval's own C code), so they
  are the numbers of BEIR tables: nDCG with linear gain ``g`` (trec_eval's ``ndcg_cut``),
  recall ``|relevant ∩ top K| / |relevant|`` and the reciprocal rank of the first relevant
  product in the top K, relevant meaning grade >= 1. ir-measures rather than ranx: it runs
  trec_eval's reference implementation itself (ranx re-implements the measures and compiles
  them with numba at first use, tens of seconds on a small CPU).
* **nDCG@K with exponential gain** (``ndcg_exp@K``, vlsearch's earlier nDCG): graded gains
  ``2^g - 1``, discount ``1 / log2(rank + 1)``, normalised by the ideal ordering of the
  query's judged products. Not comparable with BEIR tables; kept under its own name.
* **Category consistency@K** (the paper's second relevance metric): the share of the top K
  whose category is one of the query's intent categories, averaged over queries that have
  an intent.
* **Strict relevance@K** (our stand-in for the paper's relevance-model metric): the share
  of the top K that satisfies every attribute of the query, judged by
  ``vlsearch.queries.relevant``.

Conventions shared by every metric:

* A query missing from the run has an empty result list and scores 0; it is never skipped.
* A product listed twice for one query counts once, at its first position.
* Lists longer than K are cut to K (after removing duplicates).
* The share metrics divide by the number of products actually retrieved (at most K), as
  the paper divides by the size of the retrieval set; an empty result scores 0.
* A metric that is undefined on its input (no clicked pair, no query with a relevant
  product, no query with an intent) is ``None``, never NaN.
* Queries without relevant products are skipped by set recall, nDCG, recall and MRR, and
  ``evaluate`` reports how many were skipped. The standard measures give a query missing
  from the run 0 too (trec_eval itself would leave it out of the mean).

TREC runs are read with ties resolved deterministically: each query's lines are sorted by
score (descending), then by the rank written in the file (ascending), then by product id.
"""

from __future__ import annotations

import heapq
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from vlsearch.errors import InputError

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from vlsearch.catalog import Product

Run = dict[str, list[str]]  # query id -> ranked product ids (best first)
Qrels = dict[str, dict[str, int]]  # query id -> product id -> grade

CLICK_GRADE = 2  # qrels grade of the clicked product (the one a query was mocked from)
RELEVANT_GRADE = 1  # lowest qrels grade that counts as relevant
DEFAULT_KS: tuple[int, ...] = (10, 100, 500)  # cut-offs reported by ``evaluate``
DEFAULT_NDCG_K = 10  # cut-off of ``ndcg_at_k`` when none is given
DEFAULT_RUN_TAG = "vlsearch"  # last column of the TREC run lines we write

QRELS_HEADER = ("query-id", "corpus-id", "score")  # optional first line of a BEIR qrels file
QRELS_COLUMNS = len(QRELS_HEADER)
TREC_RUN_COLUMNS = 6  # qid Q0 docid rank score tag
TREC_ITER_COLUMN = "Q0"  # the fixed second column of a TREC run line
FIRST_RANK = 1  # TREC ranks are 1-based
FIRST_LINE = 1  # line numbers in messages are 1-based
MIN_K = 1  # smallest cut-off a metric accepts
UTF8_BOM = "\ufeff"

SUBSET_ALL = "all"
SUBSET_COLOUR_ONLY_IN_IMAGE = "colour_only_in_image"
SUBSET_HELDOUT = "heldout"

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------
# Readers and writers
# --------------------------------------------------------------------------------------


@dataclass
class EvalQuery:
    """One BEIR query: its id, text and the metadata written by ``vlsearch prepare``."""

    id: str
    text: str
    metadata: dict = field(default_factory=dict)


def _lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its line ending) for a UTF-8 file.

    Decoding is done line by line so a bad byte is reported at its own line.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with handle:
        for number, raw in enumerate(handle, start=FIRST_LINE):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"{path}:{number}: expected UTF-8 text, found byte 0x{raw[exc.start]:02x} "
                    f"at column {exc.start + 1}"
                ) from None
            if number == FIRST_LINE:
                text = text.removeprefix(UTF8_BOM)
            yield number, text.rstrip("\r\n")


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
    for number, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(
                f"{where}: expected a JSON object, got invalid JSON ({exc.msg})"
            ) from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
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
    for number, line in _lines(path):
        if not line.strip():
            continue
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
    for number, line in _lines(path):
        if not line.strip():
            continue
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
        from vlsearch.io import atomic_write_text

        atomic_write_text(out, text)
    else:
        out.write(text)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def top_k(ranked: Iterable[str], k: int) -> list[str]:
    """The first ``k`` distinct product ids of ``ranked`` (a duplicate keeps its first position)."""
    _check_k(k)
    seen: set[str] = set()
    result: list[str] = []
    for doc in ranked:
        if doc in seen:
            continue
        seen.add(doc)
        result.append(doc)
        if len(result) == k:
            break
    return result


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _recall_hits(run: Run, qrels: Qrels, k: int, min_grade: int) -> tuple[int, int]:
    """(clicked pairs found in the top k, clicked pairs)."""
    hits = pairs = 0
    for qid, judged in qrels.items():
        clicked = [doc for doc, grade in judged.items() if grade >= min_grade]
        if not clicked:
            continue
        retrieved = set(top_k(run.get(qid, ()), k))
        pairs += len(clicked)
        hits += sum(doc in retrieved for doc in clicked)
    return hits, pairs


def recall_at_k(run: Run, qrels: Qrels, k: int, min_grade: int = CLICK_GRADE) -> float | None:
    """Recall@K as in the papers (hit rate): the share of (query, clicked product) pairs, a
    pair being a qrels entry with grade >= ``min_grade``, whose product is in the top ``k``
    of its query. ``None`` when qrels hold no such pair.
    """
    hits, pairs = _recall_hits(run, qrels, k, min_grade)
    return hits / pairs if pairs else None


def _set_recall(run: Run, qrels: Qrels, k: int) -> tuple[float | None, int]:
    """(mean set recall over queries with a relevant product, number of queries skipped)."""
    values: list[float] = []
    skipped = 0
    for qid, judged in qrels.items():
        n_relevant = sum(grade >= RELEVANT_GRADE for grade in judged.values())
        if not n_relevant:
            skipped += 1
            continue
        retrieved = top_k(run.get(qid, ()), k)
        found = sum(judged.get(doc, RELEVANT_GRADE - 1) >= RELEVANT_GRADE for doc in retrieved)
        values.append(found / min(n_relevant, k))
    return _mean(values), skipped


def set_recall_at_k(run: Run, qrels: Qrels, k: int) -> float | None:
    """Mean over queries of ``|relevant ∩ top k| / min(|relevant|, k)``, relevant meaning
    grade >= 1.

    The denominator is capped at ``k`` so a ranking whose top ``k`` is all relevant scores 1
    even when the query has more relevant products than ``k``. Queries of ``qrels`` without
    a relevant product (no entries, or only grades <= 0) are skipped; ``evaluate`` reports
    how many. ``None`` when every query is skipped.
    """
    value, _skipped = _set_recall(run, qrels, k)
    return value


def _gain(grade: int) -> float:
    return float(2**grade - 1) if grade > 0 else 0.0


def _discount(position: int) -> float:
    """Discount of the 0-based ``position``: ``1 / log2(rank + 1)`` with ``rank = position + 1``."""
    return 1.0 / math.log2(position + FIRST_RANK + 1)


def _ndcg(run: Run, qrels: Qrels, k: int) -> tuple[float | None, int]:
    """(mean nDCG@k over queries with a positive grade, number of queries skipped)."""
    values: list[float] = []
    skipped = 0
    for qid, judged in qrels.items():
        ideal_grades = heapq.nlargest(k, (grade for grade in judged.values() if grade > 0))
        ideal = sum(
            _gain(grade) * _discount(position) for position, grade in enumerate(ideal_grades)
        )
        if ideal <= 0:
            skipped += 1
            continue
        dcg = sum(
            _gain(judged.get(doc, 0)) * _discount(position)
            for position, doc in enumerate(top_k(run.get(qid, ()), k))
        )
        values.append(dcg / ideal)
    return _mean(values), skipped


def ndcg_exp_at_k(run: Run, qrels: Qrels, k: int = DEFAULT_NDCG_K) -> float | None:
    """Mean nDCG@k with exponential gains ``2^g - 1`` and discount ``1 / log2(rank + 1)``
    (not trec_eval's definition: see :func:`ndcg_at_k` for that one).

    The ideal DCG ranks all of the query's judged products by grade. Unjudged products gain
    0. Queries without a positive grade are skipped (their ideal DCG is 0); ``None`` when
    every query is skipped.
    """
    value, _skipped = _ndcg(run, qrels, k)
    return value


# --- the standard measures, computed by ir-measures (trec_eval) ----------------------------

STANDARD_MEASURES = ("ndcg", "trec_recall", "mrr")  # metric names computed by the library


def _library_measures(k: int) -> dict[str, Any]:
    """vlsearch metric name -> ir-measures measure at cut-off ``k``."""
    import ir_measures

    return {"ndcg": ir_measures.nDCG @ k, "trec_recall": ir_measures.R @ k, "mrr": ir_measures.RR @ k}


def _library_run(run: Run, qids: Iterable[str], depth: int) -> dict[str, dict[str, float]]:
    """The run as ir-measures wants it: scores that reproduce our order exactly (``depth -
    position`` over the de-duplicated top ``depth``, so trec_eval's tie-breaking never acts)."""
    out: dict[str, dict[str, float]] = {}
    for qid in qids:
        docs = top_k(run.get(qid, ()), depth)
        if docs:
            out[qid] = {doc: float(depth - position) for position, doc in enumerate(docs)}
    return out


def standard_metrics(run: Run, qrels: Qrels, ks: Sequence[int]) -> dict[str, float | None]:
    """``ndcg@k``, ``trec_recall@k`` and ``mrr@k`` for every ``k``, by ir-measures.

    Averaged over the queries of ``qrels`` with a product of grade >= 1; such a query that the
    run misses (or answers with nothing) scores 0. ``None`` when no query has a relevant
    product.
    """
    import ir_measures

    ks = [int(k) for k in ks]
    for k in ks:
        _check_k(k)
    judged = {qid: {doc: int(g) for doc, g in docs.items()} for qid, docs in qrels.items()
              if any(g >= RELEVANT_GRADE for g in docs.values())}
    names = {(name, k): measure for k in ks for name, measure in _library_measures(k).items()}
    if not judged:
        return {f"{name}@{k}": None for name, k in names}
    by_measure = {str(measure): key for key, measure in names.items()}
    sums = dict.fromkeys(names, 0.0)
    lib_run = _library_run(run, judged, max(ks))
    if lib_run:
        for row in ir_measures.iter_calc(list(names.values()), judged, lib_run):
            sums[by_measure[str(row.measure)]] += float(row.value)
    return {f"{name}@{k}": sums[(name, k)] / len(judged) for name, k in names}


def ndcg_at_k(run: Run, qrels: Qrels, k: int = DEFAULT_NDCG_K) -> float | None:
    """Mean nDCG@k as trec_eval (and BEIR) define it: linear gain, computed by ir-measures.

    Queries without a product of grade >= 1 are skipped; ``None`` when every query is."""
    return standard_metrics(run, qrels, [k])[f"ndcg@{k}"]


def mrr_at_k(run: Run, qrels: Qrels, k: int) -> float | None:
    """Mean reciprocal rank of the first product of grade >= 1 within the top k (ir-measures)."""
    return standard_metrics(run, qrels, [k])[f"mrr@{k}"]


def _share_at_k(
    run: Run, qids: Iterable[str], k: int, good: Callable[[str, str], bool]
) -> float | None:
    """Mean over ``qids`` of the share of the top k for which ``good(qid, doc)`` holds."""
    values: list[float] = []
    for qid in qids:
        retrieved = top_k(run.get(qid, ()), k)
        values.append(
            sum(good(qid, doc) for doc in retrieved) / len(retrieved) if retrieved else 0.0
        )
    return _mean(values)


def category_consistency_at_k(
    run: Run,
    intent_categories: Mapping[str, set[str]],
    product_category: Mapping[str, str | None],
    k: int,
) -> float | None:
    """The share of the top ``k`` whose category is one of the query's intent categories,
    averaged over the queries of ``intent_categories`` with a non-empty intent.

    The share divides by the number of products retrieved (at most ``k``); an empty result
    scores 0. A product without a known category is not consistent. ``None`` when no
    query has an intent.
    """
    _check_k(k)
    qids = [qid for qid, intent in intent_categories.items() if intent]
    return _share_at_k(
        run, qids, k, lambda qid, doc: product_category.get(doc) in intent_categories[qid]
    )


def strict_relevance_at_k(
    run: Run,
    query_attributes: Mapping[str, Mapping[str, str]],
    products: Mapping[str, Product],
    k: int,
    *,
    rule: Callable[[Product, Mapping[str, str]], bool] | None = None,
) -> float | None:
    """The share of the top ``k`` that satisfies every attribute of the query, averaged over
    the queries of ``query_attributes`` with at least one attribute (a query without
    attributes would trivially score 1).

    Judged by ``rule`` (default: ``vlsearch.queries.relevant``). A product id missing from
    ``products`` is not relevant. The share divides by the number of products retrieved (at
    most ``k``); an empty result scores 0. ``None`` when no query has an attribute.
    """
    _check_k(k)
    qids = [qid for qid, attributes in query_attributes.items() if attributes]
    if not qids:
        return None
    if rule is None:
        from vlsearch.queries.relevance import relevant as rule

    def good(qid: str, doc: str) -> bool:
        product = products.get(doc)
        return product is not None and bool(rule(product, query_attributes[qid]))

    return _share_at_k(run, qids, k, good)


# --------------------------------------------------------------------------------------
# Whole evaluation
# --------------------------------------------------------------------------------------


def _intent(query: EvalQuery) -> set[str]:
    """The query's intent categories: ``metadata.category``, else ``metadata.attributes.category``."""
    category = query.metadata.get("category") or (query.metadata.get("attributes") or {}).get(
        "category"
    )
    return {category} if category else set()


def _source_products(query: EvalQuery, qrels: Qrels) -> set[str]:
    """The product a query was mocked from (``metadata.source_product``), else its clicked ones."""
    source = query.metadata.get("source_product")
    if source:
        return {str(source)}
    return {doc for doc, grade in qrels.get(query.id, {}).items() if grade >= CLICK_GRADE}


def _evaluate_subset(
    run: Run,
    qrels: Qrels,
    queries: Sequence[EvalQuery],
    products: Mapping[str, Product] | None,
    ks: Sequence[int],
) -> dict[str, Any]:
    sub_qrels: Qrels = {query.id: qrels.get(query.id, {}) for query in queries}
    intents = {query.id: _intent(query) for query in queries}
    attributes = {query.id: dict(query.metadata.get("attributes") or {}) for query in queries}
    clicked_pairs = sum(
        grade >= CLICK_GRADE for judged in sub_qrels.values() for grade in judged.values()
    )
    without_relevant = sum(
        not any(grade >= RELEVANT_GRADE for grade in judged.values())
        for judged in sub_qrels.values()
    )
    product_category = (
        {pid: product.category for pid, product in products.items()}
        if products is not None
        else None
    )
    metrics: dict[str, float | None] = {}
    standard = standard_metrics(run, sub_qrels, ks)
    for k in ks:
        metrics[f"recall@{k}"] = recall_at_k(run, sub_qrels, k)
        metrics[f"set_recall@{k}"] = set_recall_at_k(run, sub_qrels, k)
        for name in STANDARD_MEASURES:
            metrics[f"{name}@{k}"] = standard[f"{name}@{k}"]
        metrics[f"ndcg_exp@{k}"] = ndcg_exp_at_k(run, sub_qrels, k)
        metrics[f"category_consistency@{k}"] = (
            category_consistency_at_k(run, intents, product_category, k)
            if product_category is not None
            else None
        )
        metrics[f"strict_relevance@{k}"] = (
            strict_relevance_at_k(run, attributes, products, k) if products is not None else None
        )
    return {
        "queries": len(queries),
        "clicked_pairs": clicked_pairs,
        "queries_without_relevant": without_relevant,
        "queries_without_results": sum(not run.get(query.id) for query in queries),
        "queries_with_intent": sum(bool(intent) for intent in intents.values()),
        "queries_with_attributes": sum(bool(attrs) for attrs in attributes.values()),
        "metrics": metrics,
    }


def evaluate(
    run: Run,
    qrels: Qrels,
    queries: list[EvalQuery],
    products: dict[str, Product] | None,
    ks: Sequence[int] = DEFAULT_KS,
    heldout: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Every metric at every ``k`` for the queries in ``queries``, overall and by subset.

    Subsets: ``"all"``; ``"colour_only_in_image"`` (queries whose metadata flag is true);
    ``"heldout"`` when ``heldout`` product ids are given (queries whose source product, from
    ``metadata.source_product`` or else their clicked products, is held out). Each subset
    reports its number of queries, clicked pairs, queries without a relevant product
    (skipped by set recall and nDCG), queries without results, queries with an intent
    category and with attributes, and ``metrics`` keyed ``"<name>@<k>"``. Category
    consistency and strict relevance need ``products`` and are ``None`` without them;
    every undefined metric is ``None``, so the output is NaN-free and JSON-serialisable.

    Only queries in ``queries`` are scored: qrels and run entries of other query ids are
    ignored and counted in ``"qrels_queries_not_in_queries"`` and
    ``"run_queries_not_in_queries"``.
    """
    ks = [int(k) for k in ks]
    for k in ks:
        _check_k(k)
    query_ids = {query.id for query in queries}
    subsets: dict[str, list[EvalQuery]] = {
        SUBSET_ALL: list(queries),
        SUBSET_COLOUR_ONLY_IN_IMAGE: [
            q for q in queries if q.metadata.get("colour_only_in_image") is True
        ],
    }
    if heldout is not None:
        held = set(heldout)
        subsets[SUBSET_HELDOUT] = [q for q in queries if _source_products(q, qrels) & held]
    return {
        "ks": ks,
        "qrels_queries_not_in_queries": sum(qid not in query_ids for qid in qrels),
        "run_queries_not_in_queries": sum(qid not in query_ids for qid in run),
        "subsets": {
            name: _evaluate_subset(run, qrels, members, products, ks)
            for name, members in subsets.items()
        },
    }


def evaluate_files(
    run_path_or_run: PathLike | Run,
    queries_path: PathLike,
    qrels_path: PathLike,
    products: dict[str, Product] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    heldout: Iterable[str] | None = None,
) -> dict[str, Any]:
    """``evaluate`` on a TREC run file (or an in-memory run) and a BEIR query/qrels pair.

    The result is JSON-serialisable and records the input paths under ``"inputs"``.
    """
    if isinstance(run_path_or_run, Mapping):
        run: Run = {str(qid): list(docs) for qid, docs in run_path_or_run.items()}
        run_source = None
    else:
        run, _scores = read_trec_run(run_path_or_run)
        run_source = str(run_path_or_run)
    result = evaluate(
        run,
        read_qrels(qrels_path),
        read_beir_queries(queries_path),
        products,
        ks=ks,
        heldout=heldout,
    )
    result["inputs"] = {"run": run_source, "queries": str(queries_path), "qrels": str(qrels_path)}
    return result


# --------------------------------------------------------------------------------------
# An index on a query set, and the readable report
# --------------------------------------------------------------------------------------

HELDOUT_SPLIT = "heldout"  # value of the index products' ``split`` column for cold-start products


def index_products(index_dir: PathLike) -> tuple[dict[str, Product], set[str] | None]:
    """The products of the index version ``index_dir`` serves (``current``), by id, and the ids
    of its held-out products (``None`` for an index built before the ``split`` column)."""
    import pyarrow.parquet as pq

    from vlsearch.index.builder import current_version
    from vlsearch.workdir import products_from_table

    table = pq.read_table(current_version(index_dir) / "products.parquet")
    products = products_from_table(table)
    heldout = None
    if "split" in table.column_names:
        splits = table.column("split").to_pylist()
        heldout = {p.id for p, split in zip(products, splits) if split == HELDOUT_SPLIT}
    return {p.id: p for p in products}, heldout


def evaluate_index(
    index_dir: PathLike,
    queries_path: PathLike,
    qrels_path: PathLike,
    ks: Sequence[int] = DEFAULT_KS,
    config=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Search every query of ``queries_path`` with the index (top ``max(ks)``), then
    ``evaluate`` with the index's own products and held-out split, so that every metric and
    subset is filled. ``config`` is the ServeConfig of the engine."""
    from vlsearch.progress import stage
    from vlsearch.serving.engine import Engine, search_queries_file

    with stage(f"opening index {index_dir} (loading the model)", progress):
        engine = Engine.open(index_dir, config)
    n = sum(1 for _ in read_beir_queries(queries_path))
    with stage(f"searching {n} queries (top {max(ks)})", progress):
        run = search_queries_file(engine, queries_path, k=max(ks))
    products, heldout = index_products(index_dir)
    report = evaluate_files(run, queries_path, qrels_path, products=products, ks=ks, heldout=heldout)
    report["inputs"]["index"] = str(index_dir)
    report["index_version"] = engine.version
    return report


METRIC_LABELS = {  # metric name -> row label of format_report, in display order
    "recall": "Recall (hit rate of the click)",
    "set_recall": "set recall",
    "ndcg": "nDCG (trec_eval, linear gain)",
    "trec_recall": "recall (trec_eval)",
    "mrr": "MRR (trec_eval)",
    "ndcg_exp": "nDCG (exponential gain)",
    "category_consistency": "category consistency",
    "strict_relevance": "strict relevance",
}
MISSING_VALUE = "-"  # how format_report shows an undefined metric


def format_report(report: Mapping[str, Any]) -> str:
    """The report of ``evaluate``/``evaluate_index`` as plain-text tables, one per non-empty
    subset: a row per metric, a column per cut-off; an undefined metric shows as ``-``."""
    ks = list(report["ks"])
    width = max(len(label) for label in METRIC_LABELS.values()) + 2
    lines: list[str] = []
    inputs = report.get("inputs") or {}
    source = inputs.get("index") or inputs.get("run") or "in-memory run"
    lines.append(f"{source} on {inputs.get('queries', '?')}")
    for name, subset in report["subsets"].items():
        lines.append("")
        if not subset["queries"]:
            lines.append(f"{name}: no queries in this subset")
            continue
        lines.append(f"{name}: {subset['queries']} queries, {subset['clicked_pairs']} clicked pairs, "
                     f"{subset['queries_without_results']} without results")
        lines.append(" " * width + "".join(f"{'@' + str(k):>9}" for k in ks))
        for metric, label in METRIC_LABELS.items():
            cells = []
            for k in ks:
                value = subset["metrics"].get(f"{metric}@{k}")
                cells.append(f"{MISSING_VALUE if value is None else f'{value:.4f}':>9}")
            lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)


__all__ = [
    "CLICK_GRADE",
    "DEFAULT_KS",
    "RELEVANT_GRADE",
    "EvalQuery",
    "Qrels",
    "Run",
    "category_consistency_at_k",
    "evaluate",
    "evaluate_files",
    "evaluate_index",
    "format_report",
    "index_products",
    "mrr_at_k",
    "ndcg_at_k",
    "ndcg_exp_at_k",
    "read_beir_queries",
    "read_qrels",
    "read_trec_run",
    "recall_at_k",
    "set_recall_at_k",
    "standard_metrics",
    "strict_relevance_at_k",
    "top_k",
    "write_trec_run",
]
