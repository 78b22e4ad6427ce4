"""Offline retrieval metrics on a run (query id -> ranked product ids) and qrels.

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
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vlsearch.queries.beir import FIRST_RANK, Qrels, Run
from vlsearch.queries.relevance import relevant

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from vlsearch.catalog import Product

CLICK_GRADE = 2  # qrels grade of the clicked product (the one a query was mocked from)
RELEVANT_GRADE = 1  # lowest qrels grade that counts as relevant
DEFAULT_KS: tuple[int, ...] = (10, 100, 500)  # cut-offs reported by ``evaluate``
DEFAULT_NDCG_K = 10  # cut-off of ``ndcg_at_k`` when none is given
MIN_K = 1  # smallest cut-off a metric accepts


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < MIN_K:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def top_k(ranked: Iterable[str], k: int) -> list[str]:
    """The first ``k`` distinct product ids of ``ranked`` (a duplicate keeps its first position)."""
    check_k(k)
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
    import ir_measures  # loads pytrec_eval: imported when a standard measure is computed

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
    import ir_measures  # loads pytrec_eval: imported when a standard measure is computed

    ks = [int(k) for k in ks]
    for k in ks:
        check_k(k)
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
    check_k(k)
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
    check_k(k)
    qids = [qid for qid, attributes in query_attributes.items() if attributes]
    if not qids:
        return None
    if rule is None:
        rule = relevant

    def good(qid: str, doc: str) -> bool:
        product = products.get(doc)
        return product is not None and bool(rule(product, query_attributes[qid]))

    return _share_at_k(run, qids, k, good)
