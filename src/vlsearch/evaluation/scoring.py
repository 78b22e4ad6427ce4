"""The whole evaluation of a run: every metric at every cut-off, overall and by subset
(all queries, colour only in the image, held-out products), as a JSON-serialisable report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vlsearch.evaluation.metrics import (
    CLICK_GRADE,
    DEFAULT_KS,
    RELEVANT_GRADE,
    STANDARD_MEASURES,
    category_consistency_at_k,
    check_k,
    ndcg_exp_at_k,
    recall_at_k,
    set_recall_at_k,
    standard_metrics,
    strict_relevance_at_k,
)
from vlsearch.queries.beir import (
    EvalQuery,
    PathLike,
    Qrels,
    Run,
    read_beir_queries,
    read_qrels,
    read_trec_run,
)

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from vlsearch.catalog import Product

SUBSET_ALL = "all"
SUBSET_COLOUR_ONLY_IN_IMAGE = "colour_only_in_image"
SUBSET_HELDOUT = "heldout"


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
        check_k(k)
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
