"""An index on a query set: search every query with the index's engine, evaluate with the
index's own products and held-out split, and the plain-text report of any evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vlsearch.evaluation.metrics import DEFAULT_KS
from vlsearch.evaluation.scoring import evaluate_files
from vlsearch.progress import stage
from vlsearch.queries.beir import PathLike, read_beir_queries

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from vlsearch.catalog import Product


HELDOUT_SPLIT = "heldout"  # value of the index products' ``split`` column for cold-start products


def index_products(index_dir: PathLike) -> tuple[dict[str, Product], set[str] | None]:
    """The products of the index version ``index_dir`` serves (``current``), by id, and the ids
    of its held-out products (``None`` for an index built before the ``split`` column)."""
    # heavy (pyarrow, FAISS): imported only when an index is evaluated, so that importing
    # vlsearch.evaluation (the CLI does at start) stays cheap
    import pyarrow.parquet as pq

    from vlsearch.index.builder import current_version
    from vlsearch.product_table import products_from_table

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
    # heavy (the model, FAISS) and a higher layer: imported only when an index is evaluated
    from vlsearch.serving.batch import search_queries_file
    from vlsearch.serving.engine import Engine

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
