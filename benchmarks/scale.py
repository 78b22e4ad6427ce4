"""A realistic million-product run on the FAISS backend: vectors made from the real product
vectors so that their cluster structure is kept, real logged queries from the real query tower.

Catalog: the real index's product vectors first, then noisy copies (source j, each real vector
plus Gaussian noise, renormalised) up to ``--n``; every copy takes its source's attributes, so
a brand or gender filter keeps its selectivity. The noise is calibrated so that a copy lies as
far from its source as a real product lies from its nearest real neighbour (median cosine):
the copies fill the clusters instead of stacking on their sources (``--noise`` sets it).

Figures: recall@100 against exact search (chunked brute force) over an nprobe sweep, ANN-only
latency per nprobe; then at the chosen nprobe (the smallest with recall >= the target) p50/p99
of query encoding + ANN, + a selective brand filter and + a ~50 % gender filter (the engine's
``constrained_search``: ID selector inside the scan / over-fetch + post-filter) with their
recall against exact filtered search; bytes per product and build time of IVF-Flat and of an
IVF-PQ option (<= 64 B per product). One thread throughout. Each stage rewrites the results
JSON (``benchmarks/results/scale.json``) as soon as it is done, so a stopped run keeps what
it measured; built indexes are cached under ``--work`` and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import numpy as np


@dataclass(frozen=True)
class Sizes:
    n: int = 1_000_000  # products of the synthetic catalog
    recall_queries: int = 500  # logged queries for recall@k against exact
    latency_queries: int = 200  # single queries timed per path
    warmup: int = 20  # untimed queries before each timed path
    k: int = 100  # results per query
    nlist: int = 1024  # IVF clusters (about sqrt(n); 0: the project default 4*sqrt(n), slow to train here)
    train_sample: int = 65_536  # vectors the k-means (and PQ) train on (64 per cluster)
    nprobe_sweep: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    recall_target: float = 0.95  # the chosen nprobe is the smallest reaching this recall@k
    pq_m: int = 32  # IVF-PQ sub-quantizers (bytes of code per product at 8 bits)
    chunk: int = 65_536  # rows per step when generating, adding and scanning exactly
    seed: int = 0


SMOKE = Sizes(n=20_000, recall_queries=100, latency_queries=30, warmup=3, nlist=0, train_sample=10_000,
              nprobe_sweep=(4, 16, 64), pq_m=16, chunk=8192)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def calibrate_noise(real: np.ndarray, sample: int, seed: int) -> dict[str, float]:
    """Median cosine of a real product to its nearest other real product, and the noise
    scale sigma that puts a copy at that cosine from its source: 1 / sqrt(1 + sigma^2)."""
    import faiss

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(real), min(sample, len(real)), replace=False)
    index = faiss.IndexFlatIP(real.shape[1])
    index.add(real)
    sims, _ = index.search(real[pick], 2)
    nn = float(np.median(sims[:, 1]))
    nn = min(nn, 0.999)
    return {"median_nn_cosine": round(nn, 4), "sigma": round(math.sqrt(1.0 / nn**2 - 1.0), 4)}


def synthesize(real: np.ndarray, n: int, sigma: float, path: Path, chunk: int, seed: int,
               source_name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``n`` vectors in a float32 memmap at ``path``: the real ones, then noisy copies;
    returns (vectors memmap, source row of each)."""
    n_real, d = real.shape
    source = np.concatenate([np.arange(n_real), np.random.default_rng(seed).integers(0, n_real, n - n_real)]) \
        if n > n_real else np.arange(n)
    done_flag = path.with_suffix(".done")
    meta = {"n": n, "sigma": sigma, "seed": seed, "n_real": n_real, "source": source_name}
    if path.exists() and done_flag.exists() and json.loads(done_flag.read_text()) == meta:
        return np.load(path, mmap_mode="r"), source
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(seed + 1)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        base = real[source[lo:hi]]
        noise = rng.standard_normal(base.shape, dtype=np.float32) * (sigma / math.sqrt(d))
        noise[np.arange(lo, hi) < n_real] = 0.0  # the real catalog is kept as it is
        out[lo:hi] = _unit(base + noise)
    out.flush()
    del out
    done_flag.write_text(json.dumps(meta))
    return np.load(path, mmap_mode="r"), source


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int,
               allowed: np.ndarray | None = None) -> np.ndarray:
    """Brute-force top-k rows by inner product (chunked: memory stays small)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_r = np.full((len(q), k), -1, np.int64)
    for lo in range(0, len(vectors), chunk):
        hi = min(len(vectors), lo + chunk)
        s = q @ np.asarray(vectors[lo:hi], np.float32).T
        if allowed is not None:
            s[:, ~allowed[lo:hi]] = -np.inf
        rows = np.broadcast_to(np.arange(lo, hi), s.shape)
        all_s = np.concatenate([best_s, s], axis=1)
        all_r = np.concatenate([best_r, rows], axis=1)
        top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, top, 1)
        best_r = np.take_along_axis(all_r, top, 1)
    best_r[~np.isfinite(best_s)] = -1
    return best_r


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
                          for f, t in zip(found, truth)]))


def build_ivf(vectors: np.ndarray, sizes: Sizes, path: Path, kind: str, quantizer_from=None):
    """IVF-Flat or IVF-PQ over ``vectors`` (trained on a sample), cached at ``path``;
    returns (faiss index, seconds to train, seconds to add)."""
    import faiss

    from vlsearch.index.ann import default_nlist

    if path.exists():
        return faiss.read_index(str(path)), None, None
    n, d = vectors.shape
    nlist = default_nlist(n, sizes.nlist)
    rng = np.random.default_rng(sizes.seed)
    sample = np.ascontiguousarray(vectors[np.sort(rng.choice(n, min(n, sizes.train_sample), replace=False))])
    started = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = sizes.seed
        index.train(sample)
    else:  # PQ codes over the same coarse clusters (only the PQ codebooks are trained)
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(quantizer_from.quantizer.reconstruct_n(0, quantizer_from.nlist))
        index = faiss.IndexIVFPQ(quantizer, d, quantizer_from.nlist, sizes.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    for lo in range(0, n, sizes.chunk):
        index.add(np.ascontiguousarray(vectors[lo:min(n, lo + sizes.chunk)]))
    add_s = time.perf_counter() - started
    faiss.write_index(index, str(path))
    return index, train_s, add_s


def sweep(ann, queries: np.ndarray, truth: np.ndarray, sizes: Sizes) -> list[dict[str, Any]]:
    rows = []
    single = [queries[i:i + 1] for i in range(min(sizes.latency_queries, len(queries)))]
    for nprobe in [p for p in sizes.nprobe_sweep if p <= ann.nlist]:
        _, found = ann.search(queries, sizes.k, nprobe=nprobe)
        for x in single[:sizes.warmup]:
            ann.search(x, sizes.k, nprobe=nprobe)
        times = [common.timed(lambda x=x, p=nprobe: ann.search(x, sizes.k, nprobe=p))[1] for x in single]
        rows.append({"nprobe": nprobe, "recall_at_k": round(recall(found, truth), 4),
                     "ann_only": common.summarize_ms(times)})
        common.log(f"  nprobe {nprobe}: recall@{sizes.k} {rows[-1]['recall_at_k']}, "
                   f"p50 {rows[-1]['ann_only']['p50_ms']} ms")
    return rows


def end_to_end(ann, vectors, retriever, texts: list[str], masks: dict[str, np.ndarray | None],
               truths: dict[str, np.ndarray], qvecs: np.ndarray, sizes: Sizes) -> dict[str, Any]:
    """encode + constrained ANN per query (one thread), per filter case, with recall."""
    from vlsearch.config import ServeConfig
    from vlsearch.index.ann import FilterPolicy, constrained_search

    serve = ServeConfig()
    policy = FilterPolicy(serve.filter_selective_fraction, serve.overfetch_factor, serve.filter_widen_search)
    out = {}
    for case, mask in masks.items():
        enc_t, ann_t, paths, found = [], [], {}, []
        for text in texts[:sizes.warmup]:
            constrained_search(ann, vectors, retriever.encode_queries([text])[0], sizes.k, mask, policy)
        for text in texts[:sizes.latency_queries]:
            t0 = time.perf_counter()
            vec = retriever.encode_queries([text])[0]
            t1 = time.perf_counter()
            path, _, _ = constrained_search(ann, vectors, vec, sizes.k, mask, policy)
            t2 = time.perf_counter()
            enc_t.append(t1 - t0)
            ann_t.append(t2 - t1)
            paths[path] = paths.get(path, 0) + 1
        total = [a + b for a, b in zip(enc_t, ann_t)]
        for q in qvecs:
            found.append(np.pad(constrained_search(ann, vectors, q, sizes.k, mask, policy)[2],
                                (0, sizes.k), constant_values=-1)[:sizes.k])
        out[case] = {"encode_plus_ann": common.summarize_ms(total), "encode": common.summarize_ms(enc_t),
                     "ann": common.summarize_ms(ann_t), "paths": paths,
                     "allowed_share": None if mask is None else round(float(mask.mean()), 4),
                     "recall_at_k_vs_exact": round(recall(np.asarray(found), truths[case]), 4)}
        common.log(f"  {case}: encode+ann p50 {out[case]['encode_plus_ann']['p50_ms']} ms, "
                   f"p99 {out[case]['encode_plus_ann']['p99_ms']} ms, recall {out[case]['recall_at_k_vs_exact']}")
    return out


def _filters(products_path: Path, source: np.ndarray, selective: float) -> tuple[dict, dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    table = pq.read_table(products_path, columns=["brand", "attributes"]).to_pydict()
    brands = np.asarray([b or "" for b in table["brand"]], dtype=object)
    genders = np.asarray([json.loads(a or "{}").get("gender", "") for a in table["attributes"]], dtype=object)
    counts: dict[str, int] = {}
    for b in brands:
        if b:
            counts[b] = counts.get(b, 0) + 1
    n = len(brands)
    brand = max((b for b, c in counts.items() if c / n < selective), key=counts.get)
    values, freq = np.unique(genders[genders != ""], return_counts=True)
    gender = str(values[np.argmax(freq)])
    real_masks = {"brand": brands == brand, "gender": genders == gender}
    masks = {name: m[source] for name, m in real_masks.items()}
    return {"brand": brand, "gender": gender}, masks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default=str(common.ROOT / "work" / "index-full"),
                   help="a published real index (product vectors, products, model)")
    p.add_argument("--workdir", default=str(common.ROOT / "work" / "full"), help="prepared work dir (click log)")
    p.add_argument("--work", default=str(common.WORK_DIR / "scale"), help="cache for vectors and indexes")
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    p.add_argument("--n", type=int, help="catalog size (default 1,000,000)")
    p.add_argument("--noise", type=float, help="noise sigma (default: calibrated, see the docstring)")
    p.add_argument("--smoke", action="store_true", help="small sizes (tests)")
    p.add_argument("--model-note", default="", help="what the index's model is (recorded with the figures)")
    p.add_argument("--vectors", help="product vectors .npy instead of the index's (e.g. a finished export)")
    p.add_argument("--products", help="products.parquet matching --vectors row for row")
    p.add_argument("--model", help="model directory matching --vectors")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    if args.n:
        sizes = dataclasses.replace(sizes, n=args.n)

    import faiss
    import torch

    from vlsearch.config import ServeConfig
    from vlsearch.index.ann import AnnIndex
    from vlsearch.index.builder import current_version
    from vlsearch.model import Retriever
    from vlsearch.workdir import Workdir

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out or common.RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "scale.json"
    if args.smoke:  # sample catalog, tiny model, published index (built once under --work)
        import speed

        inputs = speed.smoke_inputs(work / "inputs")
        args.index, args.workdir = str(inputs.index), str(inputs.workdir)
    if args.vectors:  # an export before its index is built: vectors + products + model given apart
        version = Path(args.vectors).resolve().parent
        vectors_path, products_path, model_dir = Path(args.vectors), Path(args.products), Path(args.model)
    else:
        version = current_version(args.index)
        vectors_path, products_path, model_dir = version / "vectors.npy", version / "products.parquet", \
            version / "model"
    results: dict[str, Any] = {
        "benchmark": "scale", "command": " ".join(["python", *sys.argv]), "smoke": args.smoke,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": common.machine_info(),
        "sizes": dataclasses.asdict(sizes), "index": str(version), "stages": {},
        "inputs": {"vectors": None, "products": None, "model": None},
    }

    def stage(name: str, value: dict) -> None:
        value["load_average"] = common.load_average()
        results["stages"][name] = value
        results["elapsed_s"] = round(time.time() - started, 1)
        common.write_json(out_path, results)

    results["inputs"] = {"vectors": str(vectors_path), "products": str(products_path), "model": str(model_dir)}
    started = time.time()
    real = np.ascontiguousarray(np.load(vectors_path), dtype=np.float32)
    noise = {"sigma": args.noise} if args.noise is not None else calibrate_noise(real, 2000, sizes.seed)
    common.log(f"catalog: {sizes.n} vectors from {len(real)} real ones, noise {noise}")
    t = time.perf_counter()
    vectors, source = synthesize(real, sizes.n, noise["sigma"], work / f"vectors-{sizes.n}.npy", sizes.chunk,
                                 sizes.seed, str(version))
    selected, masks = _filters(products_path, source, ServeConfig().filter_selective_fraction)
    stage("catalog", {"n": sizes.n, "real": len(real), "dim": int(real.shape[1]), "noise": noise,
                      "filters": selected, "filter_shares": {k: round(float(m.mean()), 4) for k, m in masks.items()},
                      "seconds": round(time.perf_counter() - t, 1)})

    clicks = Workdir.open(args.workdir).clicks().column("query").to_pylist()
    distinct = list(dict.fromkeys(clicks))
    rng = np.random.default_rng(sizes.seed)
    texts = [distinct[i] for i in rng.choice(len(distinct), min(sizes.recall_queries, len(distinct)), replace=False)]
    from vlsearch.model.onnx_query import load_query_encoder

    serve = ServeConfig()
    torch_retriever = Retriever.load(model_dir)
    # the query encoder `vlsearch serve` uses (ONNX when the version has model/query.onnx)
    retriever = load_query_encoder(torch_retriever, model_dir, serve.query_encoder, serve.onnx_threads)
    results["query_encoder"] = type(retriever).__name__
    results["model_note"] = args.model_note
    qvecs = retriever.encode_queries(texts)
    t = time.perf_counter()
    truth_path = work / f"truth-{sizes.n}-{len(texts)}-{noise['sigma']}-{version.name}.npz"
    if truth_path.exists():  # the same catalog and queries: the exact answers of an earlier run
        truth = dict(np.load(truth_path))
    else:
        truth = {"none": exact_topk(vectors, qvecs, sizes.k, sizes.chunk)}
        for name, mask in masks.items():
            truth[name] = exact_topk(vectors, qvecs, sizes.k, sizes.chunk, mask)
        np.savez(truth_path, **truth)
    exact_s = time.perf_counter() - t
    stage("exact", {"queries": len(texts), "logged_queries_distinct": len(distinct),
                    "seconds_for_3_filter_cases": round(exact_s, 1)})
    common.log(f"exact ground truth in {exact_s:.0f} s")

    tag = f"{sizes.n}-{version.name}"
    ivf, train_s, add_s = build_ivf(vectors, sizes, work / f"ivf-flat-{tag}.faiss", "flat")
    ann = AnnIndex(ivf, "ivf", nprobe=16)
    stage("ivf_flat_build", {"nlist": ann.nlist, "train_sample": sizes.train_sample, "train_s": train_s,
                             "add_s": add_s, "bytes_per_product": round(
                                 (work / f"ivf-flat-{tag}.faiss").stat().st_size / sizes.n, 1),
                             "note": None if train_s is not None else "index reused from the cache"})
    common.log(f"IVF-Flat nlist {ann.nlist}: train {train_s} s, add {add_s} s")
    rows = sweep(ann, qvecs, truth["none"], sizes)
    chosen = next((r["nprobe"] for r in rows if r["recall_at_k"] >= sizes.recall_target), rows[-1]["nprobe"])
    stage("ivf_flat_nprobe_sweep", {"rows": rows, "chosen_nprobe": chosen})
    ann.nprobe = chosen
    e2e = end_to_end(ann, vectors, retriever, texts, {"none": None, "brand": masks["brand"],
                                                       "gender": masks["gender"]}, truth, qvecs, sizes)
    stage("ivf_flat_end_to_end", {"nprobe": chosen, "cases": e2e})

    pq, train_s, add_s = build_ivf(vectors, sizes, work / f"ivf-pq{sizes.pq_m}-{tag}.faiss", "pq", ivf)
    pq_ann = AnnIndex(pq, "ivf", nprobe=chosen)
    pq_rows = sweep(pq_ann, qvecs, truth["none"], sizes)
    stage("ivf_pq", {"m": sizes.pq_m, "bits": 8, "code_bytes": sizes.pq_m, "train_s": train_s, "add_s": add_s,
                     "bytes_per_product": round(
                         (work / f"ivf-pq{sizes.pq_m}-{tag}.faiss").stat().st_size / sizes.n, 1),
                     "rows": pq_rows})
    stage("milvus", {"run": False, "reason": "MilvusStore (issue 9) was not on main when this ran"})
    common.log(f"done in {time.time() - started:.0f} s: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
