"""Speed benchmark: every figure beside a reference measured in the same run.

    .venv/bin/python benchmarks/speed.py --shared ../shared      # real catalog, about 15 min
    .venv/bin/python benchmarks/speed.py --smoke --out /tmp/s    # sample catalog, < 1 minute

Sections (each records the load average before and after; the machine is shared):

* ``compute``: torch float32 matmul peak (GFLOP/s), 1 thread and ``--threads``.
* ``training``: samples/s of ``vlsearch.training.train`` (median over logging windows, the
  first one dropped) and achieved FLOP/s against the matmul peak. FLOPs per sample are
  estimated as ``6 * sum over towers (non-embedding parameters of the tower * tokens the
  tower sees per sample)`` (query tower x query tokens, title tower x title tokens, image
  tower x patches; the usual 2 FLOPs per parameter per token forward, twice that backward),
  and counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real step (which
  includes what the formula leaves out: attention, the MLM/MPM passes and heads).
* ``encoding``: products/s of ``Retriever.encode_products`` (titles + cached image patches;
  titles + images through the CNN; titles only with the same MiniLM) against
  sentence-transformers encoding the same titles with the same base model, batch size and
  threads. Repeats are interleaved; medians.
* ``search``: single-query latency (p50/p99, sequential queries/s, ``serve``'s 1 thread)
  of a qid-table hit, encode + ANN, encode + ANN + brand filter (selective: runs inside the
  scan) and + gender filter (broad: over-fetch and post-filter), the default engine path,
  and the ANN alone beside FAISS exact search (IndexFlatIP) on the same vectors, with
  recall@100 against exact and an nprobe sweep.
* ``serving``: the issue-10 in-process targets (qid hit with default channels, misses with
  and without filters, ONNX vs torch encoder, parity), cases interleaved (serving_bench.py).
* ``synthetic``: the same ANN figures on random L2-normalised vectors (1M x 256).
* ``build``: index build time per stage and bytes per product of each part.
* ``http``: ``vlsearch serve`` under concurrent load from this process (see http_load.py).
* ``http_wrk``: ``vlsearch serve --workers 2`` and a bare FastAPI endpoint driven by ``wrk``
  (or a raw-socket client) from another process: logged queries and misses (http_wrk.py).
* ``backends``: the VectorStore backend column, FAISS vs Milvus (milvus-lite) on the same
  vectors, side by side (see backends.py).

Writes ``speed.json`` (after every section) and ``speed_nprobe.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backends as backends_bench
import common
import http_load
import http_wrk
import serving_bench


@dataclass(frozen=True)
class Sizes:
    """How much of everything each section measures (full run; ``SMOKE`` below)."""

    threads: int = 2  # torch threads of the throughput sections (both cores)
    serve_threads: int = 1  # torch threads of the latency sections (as `vlsearch serve`)
    matmul_size: int = 2048  # n of the n x n x n float32 matmul
    matmul_repeats: int = 10
    train_preset: str = "minilm"
    train_baseline: str = "full"  # one process: MBNS on, CDNS idle
    train_steps: int = 30
    train_log_every: int = 5
    train_batch_size: int = 32
    encode_products: int = 1024  # products encoded per repeat (cached patches, titles)
    encode_cnn_products: int = 128  # products encoded per repeat through the image CNN
    encode_repeats: int = 3
    latency_queries: int = 300  # queries timed per search path
    warmup_queries: int = 20
    k: int = 100
    synthetic_n: int = 1_000_000
    synthetic_dim: int = 256
    synthetic_nlist: int = 1024  # default_nlist(1M) = 4000 would need ~15 min of k-means here
    synthetic_queries: int = 200
    nprobe_sweep: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    http_requests: int = 2000
    http_concurrency: int = 8
    http_max_seconds: float = 300.0
    wrk_seconds: float = 60.0  # per workload of the http_wrk section (bare, logged, miss)
    wrk_workers: int = 2  # server worker processes of the http_wrk section


SMOKE = Sizes(
    threads=1, matmul_size=512, matmul_repeats=3, train_preset="tiny", train_steps=6,
    train_log_every=2, encode_products=128, encode_cnn_products=16, encode_repeats=2,
    latency_queries=30, warmup_queries=3, synthetic_n=20_000, synthetic_nlist=64,
    synthetic_queries=30, nprobe_sweep=(1, 4, 16, 64), http_requests=60, http_concurrency=4,
    http_max_seconds=60.0, wrk_seconds=3.0, wrk_workers=1,
)


@dataclass
class Inputs:
    """The prepared work dir, trained model and published index every section reads."""

    workdir: Path
    model: Path
    index: Path
    smoke: bool


# --------------------------------------------------------------------------------------
# compute peak and training


def matmul_peak(sizes: Sizes) -> dict[str, Any]:
    """Median GFLOP/s of an n x n float32 matmul (2 n^3 FLOPs) per thread count."""
    import torch

    n = sizes.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"n": n, "repeats": sizes.matmul_repeats, "gflops": {}}
    for threads in sorted({1, sizes.threads}):
        with common.threads(threads):
            torch.mm(a, b)  # warm-up
            seconds = [common.timed(lambda: torch.mm(a, b))[1] for _ in range(sizes.matmul_repeats)]
        rates = sorted(2 * n**3 / s / 1e9 for s in seconds)
        out["gflops"][str(threads)] = {"median": round(float(np.median(rates)), 1),
                                       "max": round(rates[-1], 1)}
    return out


def _tower_params(module) -> int:
    """Non-embedding parameters of a BERT tower (its transformer layers)."""
    return sum(p.numel() for p in module.bert.encoder.parameters())


def training_config(sizes: Sizes, workdir):
    from vlsearch.config import preset, update
    from vlsearch.model import apply_baseline

    config = preset(sizes.train_preset)
    config.data, config.images = workdir.config.data, workdir.config.images
    config = update(config, {"train": {
        "steps": sizes.train_steps, "batch_size": sizes.train_batch_size,
        "num_threads": sizes.threads, "log_every": sizes.train_log_every, "eval_every": 0,
        "eval_at_start": False, "checkpoint_every": 0, "keep_checkpoints": 1,
        "eval_max_products": 0, "device": "cpu"}})
    return apply_baseline(config, sizes.train_baseline)


def flops_per_sample(config, workdir, batches: int = 3) -> dict[str, Any]:
    """The formula estimate and FlopCounterMode's count for one training step."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vlsearch.model import Retriever
    from vlsearch.training import ClickStream, PretrainingObjective

    torch.manual_seed(config.train.seed)
    retriever = Retriever.build(config, workdir)
    stream = ClickStream(workdir, retriever, config, rank=0)
    objective = PretrainingObjective(retriever, config)
    model = retriever.model
    towers = {"query": (model.query_tower, "q_ids"), "title": (model.text, "t_ids")}
    n_params = {name: _tower_params(tower) for name, (tower, _) in towers.items()}
    tokens = {name: float(np.mean([getattr(stream.batch(s), field).shape[1] for s in range(batches)]))
              for name, (_, field) in towers.items()}
    if model.image is not None:
        n_params["image"] = _tower_params(model.image) + sum(
            p.numel() for p in model.image.patches.project.parameters())
        tokens["image"] = float(model.num_patches + 1)  # patches + [CLS]
    formula = 6 * sum(n_params[k] * tokens[k] for k in n_params)
    batch = stream.batch(0)
    with common.threads(config.train.num_threads), FlopCounterMode(display=False) as counter:
        out = objective(batch, torch.Generator().manual_seed(0))
        out.loss.backward()
    counted = counter.get_total_flops() / config.train.batch_size
    return {"formula": "6 * sum_tower(non_embedding_params * tokens_per_sample)",
            "tower_params": n_params, "tokens_per_sample": tokens,
            "formula_flops_per_sample": float(formula), "counted_flops_per_sample": float(counted),
            "all_params": sum(p.numel() for p in objective.parameters())}


def training_speed(sizes: Sizes, inputs: Inputs, peak: dict | None) -> dict[str, Any]:
    from vlsearch.training import train
    from vlsearch.workdir import Workdir

    workdir = Workdir.open(inputs.workdir)
    config = training_config(sizes, workdir)
    flops = flops_per_sample(config, workdir)
    with tempfile.TemporaryDirectory(prefix="speed-train-") as tmp:
        result = train(workdir, config, Path(tmp) / "model", progress=False)
    windows = [r["samples_per_s"] for r in result.history if "samples_per_s" in r][1:]
    rate = float(np.median(windows)) if windows else result.samples_per_s
    out = {
        "baseline": sizes.train_baseline, "preset": sizes.train_preset, "steps": result.steps,
        "batch_size": config.train.batch_size, "threads": config.train.num_threads,
        "samples_per_s_median": round(rate, 2), "samples_per_s_windows": [round(w, 2) for w in windows],
        "samples_per_s_whole_run": round(result.samples_per_s, 2), "flops": flops,
    }
    for kind in ("formula", "counted"):
        achieved = rate * flops[f"{kind}_flops_per_sample"] / 1e9
        out[f"achieved_gflops_{kind}"] = round(achieved, 1)
        if peak:
            reference = peak["gflops"][str(sizes.threads)]["median"]
            out[f"share_of_matmul_peak_{kind}"] = round(achieved / reference, 3)
    return out


# --------------------------------------------------------------------------------------
# product encoding


def encoding_speed(sizes: Sizes, inputs: Inputs) -> dict[str, Any]:
    """Products/s of our encoders and of sentence-transformers on the same titles."""
    from sentence_transformers import SentenceTransformer

    from vlsearch.config import preset
    from vlsearch.model import Retriever, zero_shot_minilm
    from vlsearch.text import minilm_dir
    from vlsearch.workdir import Workdir

    workdir = Workdir.open(inputs.workdir)
    products = workdir.products()[:sizes.encode_products]
    rows = np.arange(len(products))
    features = workdir.features()
    patches, has_image = features.patches(rows), features.has_image(rows)
    trained = Retriever.load(inputs.model)
    # both encoders get the same text: term-sorted when our tokenizer sorts terms
    from vlsearch.text import normalize_query

    sort = trained.config.data.sort_terms
    titles = [normalize_query(p.title) if sort else p.title for p in products]
    batch = trained.config.model.encode_batch_size
    titles_only = Retriever.build(zero_shot_minilm(preset("minilm")))
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    cnn_products = products[:sizes.encode_cnn_products]
    methods = {
        "ours_titles_and_cached_patches": (
            lambda: trained.encode_products(products, patches, has_image, batch_size=batch),
            len(products)),
        "ours_titles_and_images_via_cnn": (
            lambda: trained.encode_products(cnn_products, batch_size=batch), len(cnn_products)),
        "ours_titles_only_minilm": (
            lambda: titles_only.encode_products(products, batch_size=batch), len(products)),
        "sentence_transformers_titles": (
            lambda: st.encode(titles, batch_size=batch, show_progress_bar=False,
                              convert_to_numpy=True), len(products)),
    }
    rates: dict[str, list[float]] = {name: [] for name in methods}
    with common.threads(sizes.threads):
        for fn, _ in methods.values():
            fn()  # warm-up (lazy loads, allocator)
        for _ in range(sizes.encode_repeats):  # interleaved so drifting load hits all alike
            for name, (fn, n) in methods.items():
                rates[name].append(n / common.timed(fn)[1])
    out = {name: {"median_per_s": round(float(np.median(r)), 1), "min_per_s": round(min(r), 1),
                  "max_per_s": round(max(r), 1), "items": methods[name][1]}
           for name, r in rates.items()}
    reference = out["sentence_transformers_titles"]["median_per_s"]
    for figures in out.values():
        figures["ratio_to_sentence_transformers"] = round(figures["median_per_s"] / reference, 3)
    out["settings"] = {"batch_size": batch, "threads": sizes.threads, "repeats": sizes.encode_repeats,
                       "max_title_len": trained.config.model.max_title_len,
                       "st_max_seq_length": st.max_seq_length, "same_term_sorted_text": sort,
                       "ours_sorts_by_token_length": True}
    return out


# --------------------------------------------------------------------------------------
# search latency


def _latencies(fn, items: list, warmup: int) -> list[float]:
    for item in items[:warmup]:
        fn(item)
    return [common.timed(lambda it=item: fn(it))[1] for item in items]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, int((t >= 0).sum()))
                          for f, t in zip(found, truth)]))


def ann_figures(ann, vectors: np.ndarray, queries: np.ndarray, sizes: Sizes) -> dict[str, Any]:
    """ANN vs FAISS exact (IndexFlatIP) on the same vectors: single-query latency,
    recall@k against exact, and the nprobe sweep."""
    import faiss

    k = min(sizes.k, len(vectors))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, truth = exact.search(q, k)
    single = [q[i:i + 1] for i in range(len(q))]
    out = {"n": len(vectors), "dim": int(vectors.shape[1]), "k": k, "kind": ann.kind,
           "nlist": ann.nlist, "nprobe_default": ann.nprobe,
           "exact_flat": common.summarize_ms(_latencies(lambda x: exact.search(x, k), single,
                                                        sizes.warmup_queries)),
           "ann": common.summarize_ms(_latencies(lambda x: ann.search(x, k), single,
                                                 sizes.warmup_queries))}
    out["ann"]["recall_at_k_vs_exact"] = round(_recall(ann.search(q, k)[1], truth), 4)
    out["speedup_p50_vs_exact"] = round(out["exact_flat"]["p50_ms"] / out["ann"]["p50_ms"], 2)
    sweep = []
    if ann.kind == "ivf":
        for nprobe in sorted({min(p, ann.nlist) for p in sizes.nprobe_sweep}):  # nlist: exhaustive
            latency = common.summarize_ms(_latencies(lambda x, p=nprobe: ann.search(x, k, nprobe=p),
                                                     single, sizes.warmup_queries))
            recall = _recall(ann.search(q, k, nprobe=nprobe)[1], truth)
            sweep.append({"nprobe": nprobe, "recall_at_k": round(recall, 4), **latency})
    out["nprobe_sweep"] = sweep
    return out


def _pick_filters(products_path: Path, selective_fraction: float) -> dict[str, Any]:
    """The most common brand under the selective threshold, and the most common gender."""
    import pyarrow.parquet as pq

    table = pq.read_table(products_path, columns=["brand", "attributes"]).to_pydict()
    n = len(table["brand"])
    brands = {}
    for brand in table["brand"]:
        if brand:
            brands[brand] = brands.get(brand, 0) + 1
    brand = max((b for b, c in brands.items() if c / n < selective_fraction),
                key=lambda b: brands[b])
    genders = {}
    for raw in table["attributes"]:
        gender = json.loads(raw or "{}").get("gender")
        if gender:
            genders[gender] = genders.get(gender, 0) + 1
    gender = max(genders, key=genders.get)
    return {"brand": brand, "brand_share": round(brands[brand] / n, 4), "gender": gender,
            "gender_share": round(genders[gender] / n, 4)}


def search_speed(sizes: Sizes, inputs: Inputs) -> dict[str, Any]:

    from vlsearch.config import IndexConfig, ServeConfig
    from vlsearch.evaluation import read_beir_queries
    from vlsearch.index.ann import AnnIndex
    from vlsearch.index.builder import current_version
    from vlsearch.index.qid_table import QidTable
    from vlsearch.io import read_json
    from vlsearch.model import Retriever
    from vlsearch.serving.engine import Engine

    version = current_version(inputs.index)
    retriever = Retriever.load(version / "model")
    serve = ServeConfig(reload_check=False)
    engine = Engine.open(inputs.index, serve, retriever=retriever)
    live = Engine.open(inputs.index, dataclasses.replace(serve, qid_table=False), retriever=retriever)
    n = sizes.latency_queries
    unlogged = [q.text for q in read_beir_queries(inputs.workdir / "eval" / "test" / "queries.jsonl")][:n]
    logged_all = QidTable.load(version / "qid").queries
    rng = np.random.default_rng(0)
    logged = [logged_all[i] for i in rng.choice(len(logged_all), min(n, len(logged_all)), replace=False)]
    filters = _pick_filters(version / "products.parquet", serve.filter_selective_fraction)
    k = sizes.k
    paths: dict[str, list[str]] = {}

    def searcher(case: str, engine_, **kw):
        def one(text: str) -> None:
            paths.setdefault(case, []).append(engine_.search(text, k=k, **kw).embedding_path)
        return one

    cases = {
        "qid_hit": (engine, logged, {"channels": ["embedding"]}),
        "encode_ann": (live, unlogged, {"channels": ["embedding"], "auto_constraints": False}),
        "encode_ann_brand_filter": (live, unlogged, {"channels": ["embedding"], "auto_constraints": False,
                                                     "filters": {"brand": [filters["brand"]]}}),
        "encode_ann_gender_filter": (live, unlogged, {"channels": ["embedding"], "auto_constraints": False,
                                                      "filters": {"gender": [filters["gender"]]}}),
        "engine_default_unlogged": (engine, unlogged, {}),
        "engine_default_logged": (engine, logged, {}),
    }
    out: dict[str, Any] = {"products": engine.n_products, "version": version.name, "filters": filters,
                           "threads": sizes.serve_threads, "k": k}
    with common.threads(sizes.serve_threads):
        out["encode_query_only"] = common.summarize_ms(
            _latencies(lambda t: retriever.encode_queries([t]), unlogged, sizes.warmup_queries))
        for name, (engine_, texts, kw) in cases.items():
            out[name] = common.summarize_ms(_latencies(searcher(name, engine_, **kw), texts,
                                                       sizes.warmup_queries))
            counts: dict[str, int] = {}
            for p in paths.get(name, [])[sizes.warmup_queries:]:
                counts[p or "none"] = counts.get(p or "none", 0) + 1
            out[name]["embedding_paths"] = counts
        manifest = read_json(version / "manifest.json")
        config = IndexConfig(**{k_: v for k_, v in manifest["config"].items()
                                if k_ in IndexConfig.__dataclass_fields__})
        ann = AnnIndex.load(version / "ann.faiss", config)
        vectors = np.load(version / "vectors.npy").astype(np.float32)
        out["ann_vs_exact"] = ann_figures(ann, vectors, retriever.encode_queries(unlogged), sizes)
    return out


def synthetic_speed(sizes: Sizes) -> dict[str, Any]:
    """IVF over random L2-normalised vectors (the worst case for clustering)."""

    from vlsearch.config import IndexConfig
    from vlsearch.index.ann import AnnIndex

    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        x = rng.standard_normal((n, sizes.synthetic_dim), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    vectors, queries = unit(sizes.synthetic_n), unit(sizes.synthetic_queries)
    config = IndexConfig(kind="ivf", nlist=sizes.synthetic_nlist)
    with common.threads(sizes.threads):
        ann, build_s = common.timed(lambda: AnnIndex.build(vectors, config, seed=0))
    with common.threads(sizes.serve_threads):
        out = ann_figures(ann, vectors, queries, sizes)
    out.update(build_s=round(build_s, 1), build_threads=sizes.threads,
               search_threads=sizes.serve_threads, ann_bytes=ann.size_bytes())
    return out


# --------------------------------------------------------------------------------------
# index build and size


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_speed(sizes: Sizes, inputs: Inputs, encode_rate: float | None) -> dict[str, Any]:
    """Rebuild the index with the published vectors as the export (so the products are not
    encoded again) and time every other stage; the export is priced at the measured
    product-encoding rate. Bytes per product of each part of the published version."""

    from vlsearch.config import IndexConfig
    from vlsearch.index.builder import build_index_from_parts, current_version
    from vlsearch.io import read_json
    from vlsearch.model import Retriever
    from vlsearch.workdir import Workdir

    version = current_version(inputs.index)
    manifest = read_json(version / "manifest.json")
    config = IndexConfig(**{k: v for k, v in manifest["config"].items()
                            if k in IndexConfig.__dataclass_fields__})
    workdir = Workdir.open(inputs.workdir)
    products = workdir.products()
    vectors = np.load(version / "vectors.npy", mmap_mode="r")
    retriever = Retriever.load(version / "model")
    clicks = workdir.clicks()
    with common.threads(sizes.threads), tempfile.TemporaryDirectory(prefix="speed-index-") as tmp:
        report, wall = common.timed(lambda: build_index_from_parts(
            tmp, products, lambda lo, hi: np.asarray(vectors[lo:hi], dtype=np.float32),
            retriever.encode_queries, clicks.column("query").to_pylist(),
            clicks.column("qid").to_pylist(), config=config, model_dir=version / "model",
            seed=workdir.config.data.seed, progress=False))
    n = len(products)
    parts = {"vectors": version / "vectors.npy", "ann": version / "ann.faiss", "qid_table": version / "qid",
             "lexical": version / "lexical", "lexicon": version / "lexicon.json",
             "products_metadata": version / "products.parquet", "model": version / "model"}
    sizes_b = {name: _bytes(path) for name, path in parts.items()}
    per_product = {name: round(b / n, 1) for name, b in sizes_b.items() if name != "model"}
    core = ("vectors", "ann", "qid_table", "lexical")
    out = {
        "products": n, "logged_queries": report.qid_queries, "threads": sizes.threads,
        "stage_seconds": {k: round(v, 1) for k, v in report.seconds.items()},
        "wall_s_without_export": round(wall, 1),
        "ann_recall_at_100": report.ann.recall_at_100,
        "bytes": sizes_b, "bytes_per_product": per_product,
        "bytes_per_product_core": round(sum(sizes_b[c] for c in core) / n, 1),
        "core_parts": list(core), "dim": report.dim, "nlist": report.ann.nlist,
    }
    if encode_rate:
        out["export_seconds_estimated"] = round(n / encode_rate, 1)
        out["export_rate_products_per_s"] = encode_rate
    return out


# --------------------------------------------------------------------------------------
# HTTP


def http_speed(sizes: Sizes, inputs: Inputs, log_path: Path) -> dict[str, Any]:
    from vlsearch.evaluation import read_beir_queries

    texts = [q.text for q in read_beir_queries(inputs.workdir / "eval" / "test" / "queries.jsonl")]
    config = http_load.LoadConfig(requests=sizes.http_requests, concurrency=sizes.http_concurrency,
                                  k=sizes.k, max_seconds=sizes.http_max_seconds,
                                  warmup=sizes.warmup_queries)
    return http_load.run_load(inputs.index, texts, config, log_path)


# --------------------------------------------------------------------------------------
# plot, inputs, main


def plot_nprobe(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    series = (("search", "ann_vs_exact", "real catalog"), ("synthetic", None, "random vectors"))
    for section, key, label in series:
        data = results["sections"].get(section, {})
        data = data.get(key, {}) if key else data
        sweep = data.get("nprobe_sweep") or []
        if not sweep:
            continue
        name = f"{label}, n={data['n']}, nlist={data['nlist']}"
        line = ax.plot([s["p50_ms"] for s in sweep], [s["recall_at_k"] for s in sweep], marker="o",
                       label=name)[0]
        for s in sweep:
            ax.annotate(str(s["nprobe"]), (s["p50_ms"], s["recall_at_k"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
        ax.scatter([data["exact_flat"]["p50_ms"]], [1.0], marker="*", s=120, color=line.get_color(),
                   label=f"exact (IndexFlatIP), n={data['n']}")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("single-query latency p50 (ms, 1 thread)")
    ax.set_ylabel(f"recall@{results['sizes']['k']} vs exact")
    ax.set_title("IVF nprobe sweep (labels: nprobe)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def smoke_inputs(work: Path) -> Inputs:
    """Sample catalog → tiny model (a few steps) → published index, all under ``work``."""
    from vlsearch.index.builder import build_index
    from vlsearch.training import train

    workdir, config = common.prepare_smoke_workdir(work)
    model, index = work / "model", work / "index"
    if not (model / "config.json").exists():
        config.train.steps, config.train.eval_at_start, config.train.num_threads = 10, False, 1
        train(workdir, config, model, progress=False)
    if not (index / "current").exists():
        build_index(workdir, model, index, config.index, progress=False)
    return Inputs(workdir, model, index, smoke=True)


def real_inputs(args: argparse.Namespace) -> Inputs:
    """The lead's work dir, model and index (the index is built here when missing)."""
    from vlsearch.index.builder import build_index

    workdir, model, index = Path(args.workdir), Path(args.model), Path(args.index)
    if not (index / "current").exists():
        common.log(f"{index} has no published index; building one from {model}")
        build_index(workdir, model, index, progress=False)
    return Inputs(workdir, model, index, smoke=False)


def _kept_run(path: Path, wanted: list[str], fresh: dict[str, Any]) -> dict[str, Any]:
    """The run in ``path`` with ``wanted`` sections cleared for measuring again; the new
    invocation is recorded under ``reruns`` (its command, start, machine and sections)."""
    if not path.is_file():
        raise SystemExit(f"--keep-sections: {path} does not exist")
    kept = json.loads(path.read_text())
    for name in wanted:
        kept["sections"].pop(name, None)
        kept["errors"].pop(name, None)
    kept.setdefault("reruns", []).append({key: fresh[key] for key in ("command", "started", "machine")}
                                         | {"sections": wanted})
    return kept


SECTIONS = ("compute", "training", "encoding", "search", "serving", "synthetic", "build", "http",
            "http_wrk", "backends")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=common.default_shared(), help="shared folder (recorded only)")
    p.add_argument("--workdir", default=str(common.ROOT / "work" / "full"))
    p.add_argument("--model", default=str(common.ROOT / "work" / "model-full"))
    p.add_argument("--index", default=str(common.ROOT / "work" / "index-full"))
    p.add_argument("--out", help="results folder (default benchmarks/results; with --smoke, "
                   "work/bench/smoke-speed)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    p.add_argument("--smoke", action="store_true", help="sample catalog, tiny model, small sizes")
    p.add_argument("--threads", type=int, help="torch threads of the throughput sections (default "
                   f"{Sizes.threads}; use 1 while another process keeps a core busy: 2 threads "
                   "on a contended 2-core machine thrash)")
    p.add_argument("--wrk-seconds", type=float, help=f"seconds per http_wrk workload (default {Sizes.wrk_seconds})")
    p.add_argument("--keep-sections", action="store_true",
                   help="measure --sections again into the existing speed.json, keeping its other "
                   "sections (a section that failed in a run is rerun without repeating the rest)")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    if args.wrk_seconds:
        sizes = dataclasses.replace(sizes, wrk_seconds=args.wrk_seconds)
    if args.threads:
        sizes = dataclasses.replace(sizes, threads=args.threads)
    out_dir = Path(args.out or (common.WORK_DIR / "smoke-speed" if args.smoke else common.RESULTS_DIR))
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        p.error(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
    started = time.time()
    inputs = smoke_inputs(out_dir / "work") if args.smoke else real_inputs(args)
    results: dict[str, Any] = {
        "benchmark": "speed", "smoke": args.smoke, "command": " ".join(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": common.machine_info(),
        "sizes": dataclasses.asdict(sizes), "inputs": {k: str(v) for k, v in vars(inputs).items()},
        "sections": {}, "errors": {},
    }
    if args.keep_sections:
        results = _kept_run(out_dir / "speed.json", wanted, results)
    jobs = {
        "compute": lambda: matmul_peak(sizes),
        "training": lambda: training_speed(sizes, inputs, results["sections"].get("compute")),
        "encoding": lambda: encoding_speed(sizes, inputs),
        "search": lambda: search_speed(sizes, inputs),
        "serving": lambda: serving_bench.serving_speed(inputs.index, inputs.workdir, sizes.latency_queries,
                                                       sizes.warmup_queries, sizes.k),
        "synthetic": lambda: synthetic_speed(sizes),
        "build": lambda: build_speed(sizes, inputs, results["sections"].get("encoding", {}).get(
            "ours_titles_and_cached_patches", {}).get("median_per_s")),
        "backends": lambda: backends_bench.backend_speed(
            inputs.index, (out_dir / "work" if args.smoke else common.WORK_DIR) / "backends",
            sizes.latency_queries, sizes.warmup_queries, sizes.k),
        "http": lambda: http_speed(sizes, inputs, (out_dir / "work" if args.smoke
                                                   else common.WORK_DIR) / "speed-serve.log"),
        "http_wrk": lambda: http_wrk.http_figures(
            inputs.index, inputs.workdir, http_wrk.WrkConfig(seconds=sizes.wrk_seconds, workers=sizes.wrk_workers),
            out_dir / "work" if args.smoke else common.WORK_DIR),
    }
    for name in wanted:
        common.log(f"section {name}")
        before = common.load_average()
        try:
            value, seconds = common.timed(jobs[name])
            value.update(section_wall_s=round(seconds, 1), load_average_before=before,
                         load_average_after=common.load_average())
            results["sections"][name] = value
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            traceback.print_exc()
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
        this_run = results["reruns"][-1] if args.keep_sections else results
        this_run["elapsed_s"] = round(time.time() - started, 1)
        common.write_json(out_dir / "speed.json", results)
    plot_nprobe(results, out_dir / "speed_nprobe.png")
    common.log(f"done in {round(time.time() - started, 1)} s: {out_dir / 'speed.json'}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
