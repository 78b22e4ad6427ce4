"""The backend column of the speed benchmark: the same published index version's product
vectors served by ``FaissStore`` and by ``MilvusStore`` (milvus-lite, embedded), side by side
in one run: p50/p99 of encode + ANN, + a selective brand filter, + a ~50 % filter, and
recall@100 against exact search, per backend. Queries alternate between the backends so
both see the same load. Also records build seconds and bytes per product of each store.

Run alone: ``python benchmarks/backends.py --index work/index-full`` (or as the ``backends``
section of ``benchmarks/speed.py``). milvus-lite is the protocol-faithful test double of a
Milvus cluster, not its performance: every call is a local gRPC round trip into a Python
engine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

MILVUS_TIMEOUT_S = 300.0  # milvus-lite on a shared 2-core box: a 44k filtered count can take > 10 s
MILVUS_KINDS = ("flat", "hnsw")  # milvus-lite IVF_PQ falls back to brute force; IVF is in the tests


def _filters(attributes: dict[str, list[str | None]], selective: float = 0.05) -> dict[str, dict]:
    """A brand filter (the most common brand under ``selective`` of the catalog) and a broad
    one (the values of one field, most common first, until about half the catalog)."""
    n = len(attributes["brand"])
    counts: dict[str, int] = {}
    for b in attributes["brand"]:
        if b:
            counts[b] = counts.get(b, 0) + 1
    brand = max((b for b, c in counts.items() if c / n < selective), key=counts.get)
    best = None
    for field in ("gender", "master_category", "usage", "sub_category"):
        col = [v for v in attributes[field] if v]
        order = sorted(set(col), key=col.count, reverse=True)
        chosen, total = [], 0
        for value in order:
            if total >= n / 2:
                break
            chosen.append(value)
            total += col.count(value)
        if best is None or abs(total / n - 0.5) < abs(best[2] - 0.5):
            best = (field, chosen, total / n)
    return {"brand": {"brand": [brand]}, "half": {best[0]: best[1]}}


def backend_speed(index_dir: Path, work: Path, n_queries: int = 200, warmup: int = 10, k: int = 100,
                  queries: list[str] | None = None) -> dict[str, Any]:
    import torch

    from vlsearch.config import IndexConfig
    from vlsearch.index.builder import current_version
    from vlsearch.index.milvus import MilvusStore
    from vlsearch.index.store import FaissStore, attributes_from_products_table, exact_top_k
    from vlsearch.io import read_json
    from vlsearch.model import Retriever

    torch.set_num_threads(1)
    version = current_version(index_dir)
    manifest = read_json(version / "manifest.json")
    config = IndexConfig(**{k_: v for k_, v in manifest["config"].items() if k_ in IndexConfig.__dataclass_fields__})
    vectors = np.load(version / "vectors.npy").astype(np.float32)
    attributes = attributes_from_products_table(version / "products.parquet")
    retriever = Retriever.load(version / "model")
    if queries is None:
        queries = read_json(version / "qid" / "queries.json")["queries"]
    rng = np.random.default_rng(0)
    queries = [queries[i] for i in rng.choice(len(queries), min(n_queries + warmup, len(queries)), replace=False)]
    filters = _filters(attributes)

    stores: dict[str, Any] = {}
    build_s: dict[str, float] = {}
    bytes_per_product: dict[str, float] = {}
    faiss_store, build_s[f"faiss-{config.kind}"] = common.timed(
        lambda: FaissStore.build(vectors, attributes, config))
    stores[f"faiss-{config.kind}"] = faiss_store
    bytes_per_product[f"faiss-{config.kind}"] = round((faiss_store.size_bytes() + vectors.nbytes) / len(vectors), 1)
    shares = {name: round(float(faiss_store.mask(f).mean()), 4) for name, f in filters.items()}
    allowed = {"ann": None, **{name: faiss_store.count(f) for name, f in filters.items()}}  # as the engine passes it
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for kind in MILVUS_KINDS:
        cfg = IndexConfig(kind=kind, backend="milvus", milvus_uri=str(work / f"milvus-{kind}.db"),
                          milvus_prefix="bench", hnsw_m=config.hnsw_m, hnsw_ef_search=config.hnsw_ef_search,
                          milvus_timeout_s=MILVUS_TIMEOUT_S)
        name = f"milvus-lite-{kind}"
        store, build_s[name] = common.timed(lambda c=cfg: MilvusStore.build(vectors, attributes, c, "v000001-bench"))
        stores[name] = store
        bytes_per_product[name] = round(store.size_bytes() / len(vectors), 1)

    encoded = retriever.encode_queries(queries)
    _, truth = exact_top_k(vectors, encoded[warmup:], k)
    timings: dict[str, dict[str, list[float]]] = {s: {"ann": [], "brand": [], "half": []} for s in stores}
    found: dict[str, list[np.ndarray]] = {s: [] for s in stores}
    before = common.load_average()
    for i, text in enumerate(queries):
        for name, store in stores.items():  # alternate: both backends under the same load
            for path, constraints in (("ann", None), ("brand", filters["brand"]), ("half", filters["half"])):
                started = time.perf_counter()
                vec = retriever.encode_queries([text])[0]
                mask = faiss_store.mask(constraints) if constraints and name.startswith("faiss") else None
                _, _, rows = store.constrained_search(vec, k, constraints, mask, allowed[path])
                seconds = time.perf_counter() - started
                if i >= warmup:
                    timings[name][path].append(seconds)
                    if path == "ann":
                        found[name].append(rows)
    out: dict[str, Any] = {"n": len(vectors), "dim": int(vectors.shape[1]), "k": k, "queries": len(queries) - warmup,
                           "filters": filters, "filter_share": shares, "load_average_before": before,
                           "load_average_after": common.load_average(), "backends": {}}
    for name in stores:
        recall = float(np.mean([len(set(t.tolist()) & set(f.tolist())) / len(t) for t, f in zip(truth, found[name])]))
        out["backends"][name] = {
            "encode_ann_ms": common.summarize_ms(timings[name]["ann"]),
            "encode_ann_brand_ms": common.summarize_ms(timings[name]["brand"]),
            "encode_ann_half_ms": common.summarize_ms(timings[name]["half"]),
            "recall_at_100_vs_exact": round(recall, 4),
            "build_s": round(build_s[name], 1),
            "bytes_per_product": bytes_per_product[name],
        }
    for store in stores.values():
        if hasattr(store, "drop"):
            store.drop()
    return out


def table(result: dict[str, Any]) -> str:
    """A markdown table of the backend column."""
    lines = [("| backend | encode+ANN p50 / p99 ms | + brand filter p50 / p99 | + ~50 % filter p50 / p99 "
              "| recall@100 vs exact | build s | bytes/product |"), "| --- | --- | --- | --- | --- | --- | --- |"]

    def cell(r: dict, key: str) -> str:
        return f"{r[key]['p50_ms']:.1f} / {r[key]['p99_ms']:.1f}"

    for name, r in result["backends"].items():
        lines.append(f"| {name} | {cell(r, 'encode_ann_ms')} | {cell(r, 'encode_ann_brand_ms')} | "
                     f"{cell(r, 'encode_ann_half_ms')} | {r['recall_at_100_vs_exact']:.4f} | {r['build_s']} | "
                     f"{r['bytes_per_product']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default=str(common.ROOT / "work" / "index-full"))
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--out", default=str(common.RESULTS_DIR / "backends.json"))
    args = p.parse_args(argv)
    result = backend_speed(Path(args.index), common.WORK_DIR / "backends", args.queries)
    result["machine"] = common.machine_info()
    common.write_json(Path(args.out), result)
    print(table(result))
    print(json.dumps(result["filter_share"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
