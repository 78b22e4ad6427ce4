"""Offline evaluation, one concern a module:

* ``metrics``: the metrics on a run and qrels (definitions and conventions there);
* ``scoring``: the whole evaluation of a run, every metric by subset (``evaluate``);
* ``report``: an index on a query set (``evaluate_index``) and the plain-text report.

The BEIR/TREC readers and the TREC writer live in ``vlsearch.queries.beir``; they are
re-exported here, with the names callers of the former single module import.
"""

from __future__ import annotations

from vlsearch.evaluation.metrics import (
    CLICK_GRADE,
    DEFAULT_KS,
    RELEVANT_GRADE,
    category_consistency_at_k,
    mrr_at_k,
    ndcg_at_k,
    ndcg_exp_at_k,
    recall_at_k,
    set_recall_at_k,
    standard_metrics,
    strict_relevance_at_k,
    top_k,
)
from vlsearch.evaluation.report import evaluate_index, format_report, index_products
from vlsearch.evaluation.scoring import evaluate, evaluate_files
from vlsearch.queries.beir import (
    EvalQuery,
    Qrels,
    Run,
    read_beir_queries,
    read_qrels,
    read_trec_run,
    write_trec_run,
)

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
