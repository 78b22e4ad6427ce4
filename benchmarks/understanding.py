"""Query understanding from evidence, measured (issue 16).

    python benchmarks/understanding.py --workdir /work/cache/full --index /work/cache/index-full

Lexicon variants, all built here from the work directory's products and training click log:

* ``catalog``: exact catalog values only;
* ``hand tables``: catalog + the generator's phrase tables (the behaviour before mining);
* ``mined`` (the default): catalog + mined phrases;
* ``mined + hand tables``: ``[serve] synonyms = true``;
* ``mined, ambiguous soft``: agreeing multi-value terms become preferences, not unions.

1. **Constraint precision / recall per field** on the test split against the generator's
   known attributes. A hard constraint on field f is *correct* when every product value the
   query's own value accepts is allowed (it never removes a relevant product); precision =
   correct / constraints made, recall = correct / queries expressing f. Soft preferences are
   scored the same way, separately.
2. **Retrieval** on the test split (k = 100) with each variant's lexicon over the same index
   (qid table off, so every variant answers live): recall@100, strict relevance and category
   consistency at 10 and 100, queries with fewer than 10 exact results; the default also
   without the short-list fill and without the soft-preference boost, the hand tables also
   without the fill (the behaviour before this work).
3. **Phrased queries** (``benchmarks/data/phrased_queries.jsonl``: words the generator never
   or rarely writes), judged by the relevance rule widened to value sets (a product is
   relevant when each attribute's value is one of the listed ones): strict relevance@10,
   set recall@100, result counts, and per query the constraints understood.

Writes ``benchmarks/results/understanding.json`` (rows are written as they finish).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, ROOT, load_average, log, write_json

os.environ.setdefault("OMP_NUM_THREADS", "1")

from vlsearch.model.hashing import HashingEncoder  # after the thread setting: it imports torch

FIELDS = ("brand", "category", "colour", "gender", "usage")
PHRASED = ROOT / "benchmarks" / "data" / "phrased_queries.jsonl"


def build_lexicons(workdir, index_config):
    from vlsearch.index.builder import click_rows
    from vlsearch.index.evidence import mine_terms
    from vlsearch.index.understanding import build_lexicon
    from vlsearch.queries.phrases import SYNONYMS

    products = workdir.products()
    clicks = click_rows(workdir.clicks())
    started = time.perf_counter()
    full = build_lexicon(products, SYNONYMS)
    mined = mine_terms(products, clicks, index_config, known=full.phrases)
    full.add_mined(mined)
    seconds = time.perf_counter() - started
    soft_cfg = dataclasses.replace(index_config, mine_ambiguous="soft")
    soft = build_lexicon(products, SYNONYMS)
    soft.add_mined(mine_terms(products, clicks, soft_cfg, known=soft.phrases))
    bare = dataclasses.replace(full, mined={}, soft=set())
    variants = {  # name -> (lexicon, synonyms on)
        "catalog": (bare, False),
        "hand tables": (bare, True),
        "mined": (full, False),
        "mined + hand tables": (full, True),
        "mined, ambiguous soft": (soft, False),
    }
    kinds: dict[str, int] = {}
    for term in mined:
        kinds[f"{term.field}/{term.kind}"] = kinds.get(f"{term.field}/{term.kind}", 0) + 1
    return variants, mined, {"seconds": round(seconds, 1), "mined_terms": len(mined), "by_field_kind": kinds}


def _accepted(field: str, values, known: set[str] | None = None) -> set[str]:
    """Product values the query values accept (those the catalog has, when ``known``)."""
    from vlsearch.vocabulary import accepted_values

    out = {a for v in values for a in accepted_values(field, v)}
    return out & known if known is not None else out


def constraint_quality(queries, lexicon, synonyms: bool) -> dict:
    from vlsearch.index.understanding import understand

    known = {f: set(lexicon.labels.get(f, {})) for f in FIELDS if lexicon.labels.get(f)}
    stats = {kind: {f: {"made": 0, "correct": 0, "expressed": 0} for f in FIELDS} for kind in ("hard", "soft")}
    for q in queries:
        truth = {f: v for f, v in (q.metadata.get("attributes") or {}).items() if v}
        got = understand(q.text, lexicon, synonyms=synonyms)
        for kind, found in (("hard", got.constraints), ("soft", got.preferences)):
            by_field = {c.field: set(c.values) for c in found}
            for f in FIELDS:
                s = stats[kind][f]
                s["expressed"] += f in truth
                if f in by_field:
                    s["made"] += 1
                    s["correct"] += f in truth and _accepted(f, [truth[f]], known.get(f)) <= by_field[f]
    out = {}
    for kind, per_field in stats.items():
        out[kind] = {f: {**s, "precision": round(s["correct"] / s["made"], 4) if s["made"] else None,
                         "recall": round(s["correct"] / s["expressed"], 4) if s["expressed"] else None}
                     for f, s in per_field.items()}
    return out


def hash_index(workdir, out: Path) -> Path:
    """A full-catalog index whose embedding channel is :class:`HashingEncoder` (no model):
    constraints, BM25 and fusion exactly as served."""
    from vlsearch.config import IndexConfig
    from vlsearch.index.builder import build_index_from_parts, click_rows, current_version

    if (out / "current").exists():
        return out
    products = workdir.products()
    clicks = workdir.clicks()
    enc = HashingEncoder()
    build_index_from_parts(
        out, products, lambda a, b: enc.encode_products(products[a:b]), enc.encode_queries,
        clicks.column("query").to_pylist()[:1000], clicks.column("qid").to_pylist()[:1000],  # qid table unused
        config=IndexConfig(kind="flat", qid_top_k=50, onnx_query_encoder=False), progress=False,
        clicks=click_rows(clicks))
    return current_version(out).parent.parent


def variant_index(index_dir: Path, lexicon, out: Path) -> Path:
    """A version directory sharing every part of the published index but the lexicon."""
    from vlsearch.index.builder import COMPLETE, current_version
    from vlsearch.io import atomic_write_json

    source = current_version(index_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for part in source.iterdir():
        if part.name not in ("lexicon.json", COMPLETE):
            (out / part.name).symlink_to(part.resolve())
    atomic_write_json(out / "lexicon.json", lexicon.to_json())
    (out / COMPLETE).write_text("complete\n")
    return out


def retrieval(engine, queries, qrels, products, k: int) -> dict:
    from vlsearch.evaluation import evaluate

    run, short, filled, seconds = {}, 0, 0, []
    for q in queries:
        t = time.perf_counter()
        res = engine.search(q.text, k=k)
        seconds.append(time.perf_counter() - t)
        run[q.id] = [h.product_id for h in res.hits]
        short += sum(not h.relaxed for h in res.hits) < 10
        filled += any(h.relaxed for h in res.hits)
    m = evaluate(run, qrels, queries, products, ks=(10, 100))["subsets"]["all"]["metrics"]
    keep = ("recall@100", "strict_relevance@10", "strict_relevance@100", "category_consistency@10",
            "category_consistency@100", "ndcg@10")
    return {**{name: round(m[name], 4) for name in keep if m.get(name) is not None},
            "queries": len(queries), "exact_under_10": short, "filled_queries": filled,
            "median_ms": round(1000 * sorted(seconds)[len(seconds) // 2], 2)}


def _relevant(product, attributes) -> bool:
    from vlsearch.vocabulary import product_value

    return all(product_value(product, f) in _accepted(f, vals) for f, vals in attributes.items())


def phrased(engine, products_list, queries, k: int) -> dict:
    rows, strict10, set_recall = [], [], []
    by_id = {p.id: p for p in products_list}
    for q in queries:
        attrs = q.metadata["attributes"]
        relevant = {p.id for p in products_list if _relevant(p, attrs)}
        res = engine.search(q.text, k=k)
        ids = [h.product_id for h in res.hits]
        top = ids[:10]
        s10 = sum(i in relevant for i in top) / len(top) if top else 0.0
        rec = len(relevant & set(ids)) / min(len(relevant), k) if relevant else None
        strict10.append(s10)
        if rec is not None:
            set_recall.append(rec)
        rows.append({"query": q.text, "word": q.metadata.get("word"), "relevant": len(relevant),
                     "constraints": [str(c) for c in res.constraints],
                     "preferences": [str(c) for c in res.preferences],
                     "relaxed": [str(c) for c in res.relaxed], "fill_relaxed": [str(c) for c in res.fill_relaxed],
                     "hits": len(ids), "exact_hits": sum(not h.relaxed for h in res.hits),
                     "strict@10": round(s10, 3), "set_recall@100": None if rec is None else round(rec, 3),
                     "top10_categories": sorted({by_id[i].category for i in top if by_id[i].category})})
    return {"strict_relevance@10": round(sum(strict10) / len(strict10), 4),
            "set_recall@100": round(sum(set_recall) / len(set_recall), 4),
            "queries_all_top10_relevant": sum(r["strict@10"] == 1.0 for r in rows), "queries": rows}


def main(argv=None) -> None:
    from vlsearch.config import IndexConfig, ServeConfig
    from vlsearch.evaluation import read_beir_queries, read_qrels
    from vlsearch.workdir import Workdir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/work/cache/full")
    ap.add_argument("--index", default="/work/cache/index-full", help="a published index of --workdir")
    ap.add_argument("--work", default=str(ROOT / "work" / "understanding"), help="variant index versions")
    ap.add_argument("--out", default=str(RESULTS_DIR / "understanding.json"))
    ap.add_argument("--max-queries", type=int, default=2000, help="test-split queries used for retrieval")
    ap.add_argument("--variants", default="", help="comma-separated subset of the variants for retrieval")
    ap.add_argument("--skip-retrieval", action="store_true", help="constraint quality only (no index)")
    ap.add_argument("--hash-index", action="store_true",
                    help="build and use a model-free index (hashing encoder) instead of --index")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    wd = Workdir.open(args.workdir)
    out = Path(args.out)
    result: dict = {"workdir": args.workdir, "index": args.index, "load_average_start": load_average(),
                    "index_config": {k: v for k, v in dataclasses.asdict(IndexConfig()).items()
                                     if k.startswith("mine_")}}
    log("mining")
    variants, mined, result["mining"] = build_lexicons(wd, IndexConfig())
    result["mined_examples"] = {" ".join(t.phrase): t.to_dict() for t in mined
                                if " ".join(t.phrase) in ("sneaker", "tee", "kurti", "polo", "formal", "ethnic",
                                                          "office", "gym", "casual", "navy", "slipper", "loafer")}
    test = read_beir_queries(wd.eval_dir("test") / "queries.jsonl")
    result["constraints"] = {name: constraint_quality(test, lex, syn) for name, (lex, syn) in variants.items()}
    write_json(out, result)
    log("constraint quality written")
    if args.skip_retrieval:
        return

    from vlsearch.evaluation import EvalQuery
    from vlsearch.serving.engine import Engine

    products_list = wd.products()
    products = {p.id: p for p in products_list}
    qrels = read_qrels(wd.eval_dir("test") / "qrels.tsv")
    queries = test[: args.max_queries]
    phrased_queries = [EvalQuery(id=r["_id"], text=r["text"], metadata=r["metadata"])
                       for r in map(json.loads, PHRASED.read_text().splitlines())]
    chosen = [v for v in args.variants.split(",") if v] or list(variants)
    retriever = None
    if args.hash_index:
        log("building the hashing-encoder index")
        args.index = str(hash_index(wd, Path(args.work) / "hash-index"))
        retriever = HashingEncoder()
        result["index"] = f"{args.index} (hashing encoder, no model)"
    result["retrieval"], result["phrased"] = {}, {}
    runs = [(name, variants[name], ServeConfig(synonyms=variants[name][1], qid_table=False)) for name in chosen]
    if "mined" in chosen:
        runs.append(("mined, no fill", variants["mined"],
                     ServeConfig(synonyms=False, qid_table=False, fill_relax_order=())))
        runs.append(("mined, no soft boost", variants["mined"],
                     ServeConfig(synonyms=False, qid_table=False, soft_weight=0.0)))
    if "hand tables" in chosen:
        runs.append(("hand tables, no fill", variants["hand tables"],
                     ServeConfig(synonyms=True, qid_table=False, fill_relax_order=())))
    for name, (lexicon, _), serve in runs:
        log(f"retrieval: {name}")
        path = variant_index(Path(args.index), lexicon, Path(args.work) / name.replace(" ", "_").replace(",", ""))
        engine = Engine.open(path, serve, retriever=retriever)
        result["retrieval"][name] = {**retrieval(engine, queries, qrels, products, 100),
                                     "load_average": load_average()}
        result["phrased"][name] = phrased(engine, products_list, phrased_queries, 100)
        write_json(out, result)
    log(f"written {out}")


if __name__ == "__main__":
    main()
