"""Quality benchmark: the rows of the papers' Table 1 and the ablations, trained under one
budget on one subset of the real catalog and scored with ``vlsearch.evaluation``.

    .venv/bin/python benchmarks/quality.py --shared ../shared       # full run (about 55 min here)
    .venv/bin/python benchmarks/quality.py --smoke --out /tmp/q     # sample catalog, < 1 minute

Every row gets the same data (the first ``--products`` products of the real catalog,
prepared once into ``work/bench/subset-N``), the same budget (``--steps`` optimiser steps of
``--batch-size`` pairs, the preset's learning rate) and the same seed(s); rows that need
CDNS run as 2 processes under torchrun (1 thread each, ``batch-size / 2`` pairs per process,
so every row sees the same number of pairs per step). Each row is scored on the same test
split (overall and its colour_only_in_image subset), on the heldout split (queries about
products never trained on) and on a colour probe (one query per product whose title names
no colour, so only its image shows it: ``vlsearch.queries.colour_probe_queries``), against
the same corpus (every product of the subset) with exact inner-product search. A row whose
model is trained but whose test bed changed is scored again from its saved model. BM25 is
the lexical channel of the index alone (tantivy, no filters).

Results are written row by row: ``work/bench/quality/rows/*.json`` (one file per row and
seed; a rerun reuses rows whose settings did not change) and, after each row,
``benchmarks/results/quality.json`` (rows not finished yet have ``"status": "pending"``),
``quality.md`` and ``quality_curves.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlsearch.io import atomic_write, atomic_write_text
from vlsearch.model.product_text import ATTRIBUTE_TEXT
from vlsearch.workdir import COLOUR_PROBE_SPLIT

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import st_baseline


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    name: str  # key in the results
    label: str  # method column of the Markdown table
    baseline: str | None  # key of vlsearch.model.BASELINES (kind "vlsearch" only)
    processes: int = 1  # training processes (torchrun when > 1)
    table: str = "table1"  # table1 (the papers' comparison) | ablation
    kind: str = "vlsearch"  # vlsearch | bm25 (the lexical channel) | st (sentence-transformers)
    product_text: tuple[str, ...] = ()  # st rows: attribute-text template after the title
    st_train: bool = False  # st rows: fine-tune (MNRL) for the row budget; False: zero-shot
    smoke: bool = True  # in --smoke's default rows (False: its code path is another row's)


ROWS: tuple[Row, ...] = (  # single-process rows first, then one torchrun group
    Row("bm25", "BM25 (lexical channel alone)", None, kind="bm25"),
    Row("zero-shot-minilm", "all-MiniLM-L6-v2 zero-shot, titles", "zero-shot-minilm"),
    Row("st-zero-shot-attrs", "all-MiniLM-L6-v2 zero-shot (sentence-transformers), titles + attributes",
        None, kind="st", product_text=ATTRIBUTE_TEXT),
    Row("st-finetune", "sentence-transformers MNRL fine-tune, titles", None, kind="st", st_train=True,
        smoke=False),
    Row("st-finetune-attrs", "sentence-transformers MNRL fine-tune, titles + attributes", None,
        kind="st", product_text=ATTRIBUTE_TEXT, st_train=True),
    Row("uni-encoder", "uni-encoder (FashionBERT-like)", "uni-encoder"),
    Row("dual-encoder", "dual-encoder (CLIP-like)", "dual-encoder"),
    Row("mixed-encoder", "mixed-encoder (CommerceMM-like)", "mixed-encoder"),
    Row("make", "MAKE", "make"),
    Row("make+contrastive-mpm", "MAKE + contrastive MPM", "make+contrastive-mpm"),
    Row("make+mbns", "MAKE + MBNS", "make+mbns"),
    Row("make+attrs", "MAKE, title + attribute text", "make+attrs"),
    Row("make-2proc", "MAKE, 2 processes, no CDNS (CDNS control)", "make", 2),
    Row("make+cdns", "MAKE + CDNS", "make+cdns", 2),
    Row("full", "full: MAKE + contrastive MPM + MBNS + CDNS", "full", 2),
    Row("full+attrs", "full, title + attribute text", "full+attrs", 2, smoke=False),
    Row("title-only", "full, title only (no image)", "title-only", 2, "ablation"),
    Row("title-only+attrs", "full, title only (no image), + attribute text", "title-only+attrs", 2,
        "ablation", smoke=False),
    Row("no-ma", "full without Modal Adaptation", "no-ma", 2, "ablation"),
    Row("no-ke", "full without Keyword Enhancement", "no-ke", 2, "ablation"),
    Row("no-sort", "full, terms in natural order (not sorted)", "no-sort", 2, "ablation", smoke=False),
)
ROW_BY_NAME = {row.name: row for row in ROWS}
# Bumped whenever the test bed (eval sets, metrics) changes; finished rows are then scored
# again from their saved models. 2: the colour probe. 3: the single-attribute split and the
# serving engine's channels x query-understanding matrix.
TEST_BED_VERSION = 3
# Eval split built by the benchmark from the catalog alone (vlsearch.queries.single_attribute_queries).
SINGLE_ATTRIBUTE = "single_attribute"
# The serving engine over a row's vectors: name -> (channels, query-understanding constraints).
# "embedding" alone without constraints is the row's exact search, the main table.
ENGINE_DENSE = {"embedding+qu": (("embedding",), True), "both": (("embedding", "lexical"), False),
                "both+qu": (("embedding", "lexical"), True)}
ENGINE_LEXICAL = {"lexical+qu": (("lexical",), True)}
# Row fields that shape its trained model (label and table only change the report).
TRAIN_ROW_FIELDS = ("name", "baseline", "processes", "kind", "product_text", "st_train")
# Config sections that shape a trained model (index and serving settings do not).
MODEL_SHAPING_SECTIONS = ("data", "images", "model", "train")
# The work dir's eval split of queries naming the colour, category and gender of a product
# whose title names no colour (vlsearch.queries.colour_probe_queries): only the image shows it.
COLOUR_PROBE = COLOUR_PROBE_SPLIT


TABLE_COLUMNS = (  # (header, split, metric)
    ("R@10", "test", "recall@10"),
    ("R@100", "test", "recall@100"),
    ("R@500", "test", "recall@500"),
    ("set R@100", "test", "set_recall@100"),
    ("NDCG@10", "test", "ndcg@10"),
    ("Rel@100", "test", "strict_relevance@100"),
    ("Cate@100", "test", "category_consistency@100"),
    ("held-out R@100", "heldout", "recall@100"),
    ("colour probe R@100", COLOUR_PROBE, "recall@100"),
    ("single-attr Rel@100", SINGLE_ATTRIBUTE, "strict_relevance@100"),
)
# The engine table: (header, split, metric) for each ENGINE_* setting.
ENGINE_COLUMNS = (("R@100", "test", "recall@100"), ("colour probe R@100", COLOUR_PROBE, "recall@100"),
                  ("single-attr Rel@100", SINGLE_ATTRIBUTE, "strict_relevance@100"))


@dataclass(frozen=True)
class Defaults:
    """Budget of the full run and of ``--smoke``."""

    products: int = 10_000  # first N products of the real catalog
    steps: int = 150  # optimiser steps per trained row
    batch_size: int = 32  # (query, product) pairs per step, all processes together
    preset: str = "minilm"  # model size (vlsearch.config.PRESETS)
    backbone: str = "efficientnet-lite0"  # image backbone of the prepared subset
    eval_queries: int = 1000  # queries per eval split (test, heldout)
    log_every: int = 10  # steps between metrics.jsonl lines
    threads: int = 2  # CPU threads per row (both cores of this machine)
    smoke_threads: int = 1  # smoke runs share the CPU with other work; 2 threads thrash there
    # single-process rows run 2 at a time with 1 thread each: one thread per process keeps
    # training fast when another program takes a core (2-thread processes then collapse)
    parallel: int = 2
    smoke_parallel: int = 1
    smoke_steps: int = 6
    smoke_eval_queries: int = 200
    smoke_engine_queries: int = 40  # queries per split through the serving engine (--smoke)
    # --smoke runs the engine matrix only for these rows (one of each kind of vectors)
    smoke_engine_rows: tuple[str, ...] = ("bm25", "st-finetune-attrs", "make+attrs")
    smoke_log_every: int = 2
    validation_products: int = 0  # extra products in the trainer's own validation corpus


DEFAULTS = Defaults()


# --------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalSplit:
    name: str
    queries: list
    qrels: dict


class Evaluation:
    """The fixed test bed: corpus (every product of the work dir) and the eval splits."""

    def __init__(self, workdir, max_queries: int, ks: tuple[int, ...], test_bed_dir: Path,
                 engine_queries: int | None = None):
        from vlsearch.evaluation import read_beir_queries, read_qrels
        from vlsearch.queries.generator import export_beir
        from vlsearch.queries.generator import single_attribute_queries

        self.ks = ks
        self.engine_queries = engine_queries  # first N queries of each split in the engine matrix
        self.products = workdir.products()
        self.by_id = {p.id: p for p in self.products}
        splits = workdir.product_table().column("split").to_pylist()
        self.heldout_ids = {p.id for p, s in zip(self.products, splits) if s == "heldout"}
        directories = {name: workdir.eval_dir(name) for name in ("test", "heldout", COLOUR_PROBE)}
        # one query per attribute value, every product with it relevant: from the catalog
        # alone, so it joins the test bed without touching the training data
        directories[SINGLE_ATTRIBUTE] = test_bed_dir / SINGLE_ATTRIBUTE
        export_beir(single_attribute_queries(self.products), self.products,
                    directories[SINGLE_ATTRIBUTE], max_queries=max_queries, id_prefix="attr")
        self.splits = []
        for name, directory in directories.items():
            queries = read_beir_queries(directory / "queries.jsonl")[:max_queries]
            self.splits.append(EvalSplit(name, queries, read_qrels(directory / "qrels.tsv")))
        self._workdir = workdir
        self._patches = None

    def patches(self) -> tuple[np.ndarray, np.ndarray]:
        if self._patches is None:
            features = self._workdir.features()
            self._patches = (features.patches(), features.has_image())
        return self._patches

    def score(self, runs: dict[str, dict[str, list[str]]], splits: list[EvalSplit] | None = None
              ) -> dict[str, Any]:
        """Metrics of every split/subset, keyed test | colour_only_in_image | heldout |
        colour_probe (and colour_probe_heldout: its queries about held-out products)."""
        from vlsearch.evaluation import evaluate

        metrics, counts = {}, {}
        for split in splits or self.splits:
            result = evaluate(runs[split.name], split.qrels, split.queries, self.by_id, ks=self.ks,
                              heldout=self.heldout_ids)
            subsets = result["subsets"]
            keep = {"test": {"all": "test", "colour_only_in_image": "colour_only_in_image"},
                    "heldout": {"all": "heldout"},
                    COLOUR_PROBE: {"all": COLOUR_PROBE, "heldout": f"{COLOUR_PROBE}_heldout"},
                    SINGLE_ATTRIBUTE: {"all": SINGLE_ATTRIBUTE},
                    }[split.name]
            for subset, key in keep.items():
                metrics[key] = subsets[subset]["metrics"]
                counts[key] = subsets[subset]["queries"]
        return {"metrics": metrics, "queries": counts, "corpus": len(self.products)}

    def dense(self, retriever, with_engine: bool = True) -> dict[str, Any]:
        """Encode every product and query with a vlsearch Retriever; exact top-K; score."""
        patches = has_image = None
        if retriever.config.model.use_images:
            patches, has_image = self.patches()
        vectors, weights = retriever.encode_products(self.products, patches, has_image,
                                                     return_weights=True)
        out = self.exact(vectors, retriever.encode_queries)
        if with_engine:
            out["engine"] = self.engine(vectors, retriever, ENGINE_DENSE)
        out["modal_weights"] = {m: round(float(w), 4)
                                for m, w in zip(retriever.modalities, weights.mean(axis=0))}
        return out

    def exact(self, vectors: np.ndarray, encode_queries) -> dict[str, Any]:
        """Exact inner-product top-K of every split's queries over the product vectors."""
        import torch

        corpus = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
        k = min(max(self.ks), len(self.products))
        runs = {}
        for split in self.splits:
            q = torch.from_numpy(np.asarray(encode_queries([x.text for x in split.queries]), np.float32))
            top = (q @ corpus.T).topk(k, dim=1).indices.numpy()
            runs[split.name] = {x.id: [self.products[j].id for j in row]
                                for x, row in zip(split.queries, top)}
        return self.score(runs)

    def engine(self, vectors: np.ndarray, encoder, settings: dict[str, tuple]) -> dict[str, Any]:
        """Every split searched by the serving engine (exact Flat index over ``vectors``, no
        qid table, so every query is encoded) under each of ``settings``: name -> (channels,
        query-understanding constraints); metrics per setting as ``score`` gives them."""
        from vlsearch.config import IndexConfig, ServeConfig
        from vlsearch.index.builder import build_index_from_parts
        from vlsearch.serving.engine import Engine

        k = min(max(self.ks), len(self.products))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        splits = [EvalSplit(split.name, split.queries[:self.engine_queries], split.qrels)
                  for split in self.splits]
        texts = sorted({x.text for split in splits for x in split.queries})
        cached = _CachedQueries(texts, encoder.encode_queries)
        out = {}
        with tempfile.TemporaryDirectory(prefix="engine-") as tmp:
            build_index_from_parts(tmp, self.products, lambda lo, hi: vectors[lo:hi],
                                   cached.encode_queries, [], [],
                                   config=IndexConfig(kind="flat", recall_sample_queries=0),
                                   progress=False)
            engine = Engine.open(tmp, ServeConfig(qid_table=False, reload_check=False,
                                                  max_k=max(k, 1)), retriever=cached)
            for name, (channels, constraints) in settings.items():
                runs = {split.name: {x.id: [h.product_id for h in engine.search(
                            x.text, k, channels=channels, auto_constraints=constraints).hits]
                            for x in split.queries} for split in splits}
                out[name] = self.score(runs, splits)["metrics"]
        return out

    def bm25(self, with_engine: bool = True) -> dict[str, Any]:
        """The lexical channel of the index (tantivy BM25 over titles and attributes)."""
        from vlsearch.index.lexical import LexicalIndex, build_lexical

        k = min(max(self.ks), len(self.products))
        with tempfile.TemporaryDirectory(prefix="bm25-") as tmp:
            build_lexical(self.products, tmp)
            lexical = LexicalIndex.open(tmp)
            runs = {}
            for split in self.splits:
                runs[split.name] = {
                    x.id: [self.products[r].id for r in lexical.search(x.text, k)[1]]
                    for x in split.queries
                }
        out = self.score(runs)
        if not with_engine:
            return out
        out["engine"] = self.engine(np.zeros((len(self.products), 1), np.float32),
                                    _CachedQueries([], lambda t: np.zeros((len(t), 1), np.float32)),
                                    ENGINE_LEXICAL)
        return out


class _CachedQueries:
    """Query vectors encoded once in batches, looked up by text (the engine encodes one query
    per search); texts not seen before are encoded on the spot."""

    def __init__(self, texts: list[str], encode):
        self._encode = encode
        vectors = np.asarray(encode(texts), np.float32) if texts else np.zeros((0, 0), np.float32)
        self._vectors = dict(zip(texts, vectors))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, np.asarray(self._encode(missing), np.float32)))
        return np.stack([self._vectors[t] for t in texts])


# --------------------------------------------------------------------------------------
# the run


@dataclass
class Context:
    """Everything a row needs; built the same way by the main process and torchrun workers."""

    args: argparse.Namespace
    workdir: Any  # vlsearch.workdir.Workdir
    base: Any  # Config: the preset with the work dir's data/image settings
    run_dir: Path
    out_dir: Path
    seeds: list[int]
    rows: list[Row]  # rows this process runs
    report_rows: list[Row]  # rows the report lists (--rows)
    invocations: list[dict] = dataclasses.field(default_factory=list)  # runs behind the report
    current: dict | None = None  # this process's entry of ``invocations`` (main run only)
    _evaluation: Evaluation | None = None

    @property
    def evaluation(self) -> Evaluation:
        if self._evaluation is None:
            self._evaluation = Evaluation(self.workdir, self.args.eval_queries, self.args.ks,
                                          self.run_dir / "test_bed", self.args.engine_queries)
        return self._evaluation

    def row_file(self, row: Row, seed: int) -> Path:
        return self.run_dir / "rows" / f"{row.name}-seed{seed}.json"

    def model_dir(self, row: Row, seed: int) -> Path:
        return self.run_dir / "models" / f"{row.name}-seed{seed}"

    def seeds_of(self, row: Row) -> list[int]:
        """Every seed for trained rows (those of --seed-rows when given); deterministic rows
        (BM25, untrained models) run once."""
        chosen = self.args.seed_rows is None or row.name in self.args.seed_rows
        return self.seeds if self.trains(row) and chosen else self.seeds[:1]

    def trains(self, row: Row) -> bool:
        if row.kind == "st":
            return row.st_train and self.args.steps > 0
        return row.kind == "vlsearch" and self.row_config(row, self.seeds[0])[0].train.steps > 0

    def row_threads(self, row: Row) -> int:
        """Threads per training process: ``--threads`` shared by a row's processes, or by the
        ``--parallel`` single-process rows that run at once."""
        share = row.processes if row.processes > 1 else self.args.parallel
        return max(1, self.args.threads // share)

    def eval_threads(self, row: Row) -> int:
        """Rank 0 of a multi-process row evaluates alone (the other ranks wait)."""
        return self.args.threads if row.processes > 1 else self.row_threads(row)

    def budget_overrides(self, row: Row, seed: int) -> dict[str, Any]:
        a = self.args
        return {"train": {
            "steps": a.steps, "seed": seed, "batch_size": a.batch_size // row.processes,
            "num_threads": self.row_threads(row),
            # the memory bank holds the same number of vectors whatever the process count
            "memory_bank_batches": self.base.train.memory_bank_batches * row.processes,
            "log_every": a.log_every, "eval_every": 0, "eval_at_start": False,
            "eval_max_products": DEFAULTS.validation_products,
            "checkpoint_every": 0, "keep_checkpoints": 1, "device": "cpu",
        }}

    def row_config(self, row: Row, seed: int):
        from vlsearch.config import update
        from vlsearch.model import BASELINES, apply_baseline

        budget = self.budget_overrides(row, seed)
        config = update(self.base, budget, source="benchmark budget")
        if row.baseline is not None:
            config = apply_baseline(config, row.baseline)
        overrides = {"preset": self.args.preset, "budget": budget,
                     "baseline": BASELINES.get(row.baseline) if row.baseline else None}
        if row.kind == "st":
            overrides["sentence_transformers"] = dataclasses.asdict(st_baseline.StSettings())
        return config, overrides

    def train_key(self, row: Row, seed: int) -> str:
        """Changes whenever anything that affects the row's trained model changes."""
        from vlsearch.config import Config

        config, overrides = self.row_config(row, seed)
        # fields at their defaults are left out, so a new config field whose default keeps
        # today's behaviour does not retrain finished rows
        defaults = Config().to_dict()
        shaping = {k: {f: v for f, v in values.items() if defaults[k].get(f) != v}
                   for k, values in config.to_dict().items() if k in MODEL_SHAPING_SECTIONS}
        if row.kind != "vlsearch":  # the budget and data are all that shape other rows
            budget = config.train
            shaping = {"train": {k: getattr(budget, k) for k in ("steps", "batch_size", "seed")},
                       "st": overrides.get("sentence_transformers")}
        # the row fields that shape its model (label and table do not)
        fields = {k: v for k, v in dataclasses.asdict(row).items() if k in TRAIN_ROW_FIELDS}
        return _digest({"row": fields, "config": shaping, "data": self.workdir.manifest.get("stages")})

    def spec_key(self, row: Row, seed: int) -> str:
        """Changes whenever anything that affects the row's numbers changes: its model or
        the test bed."""
        bed = {"train": self.train_key(row, seed), "test_bed": TEST_BED_VERSION,
               "eval_queries": self.args.eval_queries, "ks": list(self.args.ks)}
        if self.args.engine_queries is not None:
            bed["engine_queries"] = self.args.engine_queries
        return _digest(bed)


def _digest(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_context(args: argparse.Namespace, prepare: bool) -> Context:
    """Open (and with ``prepare``, first create) the work dir the rows share."""
    from vlsearch.config import preset
    from vlsearch.workdir import Workdir
    from vlsearch.workdir import prepare as prepare_workdir

    work = Path(args.work)
    if args.smoke:
        data = common.SmokeData()
        path = work / "workdir"
        if prepare:
            common.prepare_smoke_workdir(work, data)
    else:
        path = work / f"subset-{args.products}"
        if prepare:
            config = preset(args.preset)
            config.data.limit = args.products
            config.data.max_eval_queries = args.eval_queries
            config.images.backbone = args.backbone
            catalog = Path(args.shared) / common.REAL_CATALOG
            common.log(f"preparing {path} from the first {args.products} products of {catalog}")
            print(prepare_workdir(catalog, path, config, progress=False).format(), file=sys.stderr)
    workdir = Workdir.open(path)
    base = preset(args.preset)
    base.data, base.images = workdir.config.data, workdir.config.images
    seeds = [args.seed + i for i in range(args.seeds)]
    selected = [ROW_BY_NAME[name] for name in args.rows]
    rows = [row for row in selected if not args.only or row.name in args.only]
    return Context(args, workdir, base, work / "quality", Path(args.out), seeds, rows, selected,
                   previous_invocations(Path(args.out)))


def previous_invocations(out_dir: Path) -> list[dict]:
    """The runs recorded in an existing report (kept when rows are added or re-reported)."""
    try:
        old = json.loads((out_dir / "quality.json").read_text())
    except (OSError, ValueError):
        return []
    return list(old.get("invocations", []))


def run_row(ctx: Context, row: Row, seed: int) -> None:
    """Train (every rank) and evaluate (rank 0) one row; write its result file."""
    from vlsearch.distributed import barrier, is_main
    from vlsearch.model import Retriever
    from vlsearch.model.retriever import WEIGHTS_FILE
    from vlsearch.training import train

    path = ctx.row_file(row, seed)
    key, train_key = ctx.spec_key(row, seed), ctx.train_key(row, seed)
    previous = json.loads(path.read_text()) if path.exists() and not ctx.args.fresh else {}
    config, overrides = ctx.row_config(row, seed)
    model_dir = ctx.model_dir(row, seed)
    trained = ctx.trains(row)
    saved = st_baseline.is_saved(model_dir) if row.kind == "st" else (model_dir / WEIGHTS_FILE).exists()
    # the same model, a changed test bed: score the saved model again
    rescore = trained and previous.get("train_key") == train_key and saved
    barrier()  # every rank decided from the same file before rank 0 rewrites it
    if previous.get("spec_key") == key:
        if is_main():
            common.log(f"{row.name} seed {seed}: reusing {path}")
        return
    record: dict[str, Any] = {
        "row": row.name, "seed": seed, "spec_key": key, "train_key": train_key, "status": "done",
        "config_overrides": overrides, "processes": row.processes,
        "rows_at_once": 1 if row.processes > 1 else ctx.args.parallel,
        "threads_per_process": config.train.num_threads,
        "batch_per_process": config.train.batch_size, "load_average_before": common.load_average(),
    }
    started = time.perf_counter()
    if rescore:
        if is_main():
            common.log(f"{row.name} seed {seed}: scoring the saved model {model_dir} again")
        record["train"] = previous["train"]
    elif trained:
        if is_main():
            common.log(f"{row.name} seed {seed}: start ({row.processes} process(es))")
            if model_dir.exists():
                shutil.rmtree(model_dir)  # a killed earlier attempt
        barrier()
        if row.kind == "st":
            with common.threads(ctx.row_threads(row)):
                record["train"] = st_baseline.train(
                    ctx.workdir, model_dir, row.product_text, config.train.steps,
                    config.train.batch_size, seed, log_every=config.train.log_every)
        else:
            result = train(ctx.workdir, config, model_dir, progress=False)
            record["train"] = _train_record(result)
        if is_main():  # trained: a failed evaluation is retried from the saved model
            common.write_json(path, {**record, "spec_key": "", "status": "trained"})
    else:
        record["train"] = {"steps": 0, "wall_s": 0.0}
    if is_main():
        with common.threads(ctx.eval_threads(row)):
            evaluated = time.perf_counter()
            with_engine = not ctx.args.smoke or row.name in DEFAULTS.smoke_engine_rows
            if row.kind == "bm25":
                scores = ctx.evaluation.bm25(with_engine)
            elif row.kind == "st":
                encoder = st_baseline.StEncoder.load(model_dir if trained else None, row.product_text)
                vectors = encoder.encode_products(ctx.evaluation.products)
                scores = ctx.evaluation.exact(vectors, encoder.encode_queries)
                if with_engine:
                    scores["engine"] = ctx.evaluation.engine(vectors, encoder, ENGINE_DENSE)
            else:
                retriever = (Retriever.load(model_dir) if trained
                             else Retriever.build(config, ctx.workdir))
                scores = ctx.evaluation.dense(retriever, with_engine)
            record["eval_wall_s"] = round(time.perf_counter() - evaluated, 1)

        record.update(scores)
        record["wall_s"] = round(time.perf_counter() - started, 1)
        record["load_average_after"] = common.load_average()
        common.write_json(path, record)
        if trained and not ctx.args.keep_checkpoints:
            shutil.rmtree(model_dir / "checkpoints", ignore_errors=True)
        k = 100 if 100 in ctx.args.ks else max(ctx.args.ks)
        common.log(f"{row.name} seed {seed}: done in {record['wall_s']} s; test R@{k} "
                   f"{scores['metrics']['test'][f'recall@{k}']:.4f}")
        write_report(ctx)
    barrier()


def _train_record(result) -> dict[str, Any]:
    return {
        "steps": result.steps, "wall_s": round(result.seconds, 1),
        "steps_per_s": round(result.steps_per_s, 3), "samples_per_s": round(result.samples_per_s, 2),
        "final_loss": result.final_loss, f"val_recall@{result.eval_k}": result.val_recall,
        "metrics_jsonl": str(result.metrics_path), "curve": result.history,
    }


def _worker_command(rows: list[Row]) -> list[str]:
    return [str(Path(__file__).resolve()), *sys.argv[1:], "--worker",
            "--only", ",".join(row.name for row in rows)]


def launch_workers(rows: list[Row]) -> int:
    """Run ``rows`` (all with the same process count) in one torchrun job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={rows[0].processes}", *_worker_command(rows)]
    common.log("torchrun: " + ", ".join(row.name for row in rows))
    return subprocess.run(cmd, check=False).returncode


def run_parallel(ctx: Context, rows: list[Row]) -> int:
    """Single-process rows, ``--parallel`` at a time, each in its own process; failures."""
    pending, running, failures = list(rows), [], 0
    while pending or running:
        while pending and len(running) < ctx.args.parallel:
            row = pending.pop(0)
            running.append((row, subprocess.Popen([sys.executable, *_worker_command([row])])))
        time.sleep(1)
        for row, proc in list(running):
            if proc.poll() is not None:
                running.remove((row, proc))
                if proc.returncode:
                    common.log(f"{row.name}: worker exited with status {proc.returncode}")
                    failures += 1
    return failures


def worker_main(args: argparse.Namespace) -> None:
    from vlsearch.distributed import cleanup, init_distributed

    init_distributed(device="cpu")
    try:
        ctx = build_context(args, prepare=False)
        for row in ctx.rows:
            for seed in ctx.seeds_of(row):
                run_row(ctx, row, seed)
    finally:
        cleanup()


def main_run(args: argparse.Namespace) -> int:
    started = time.time()
    ctx = build_context(args, prepare=True)
    ctx.current = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "started_epoch": started, "elapsed_s": 0.0, "finished": False}
    ctx.invocations.append(ctx.current)
    write_report(ctx)
    failures = 0
    index = 0
    while index < len(ctx.rows):  # consecutive rows with the same process count form a group
        group = [ctx.rows[index]]
        while index + len(group) < len(ctx.rows) and \
                ctx.rows[index + len(group)].processes == group[0].processes:
            group.append(ctx.rows[index + len(group)])
        index += len(group)
        if group[0].processes > 1:
            rc = launch_workers(group)
            if rc != 0:
                common.log(f"torchrun exited with status {rc}; rows without results stay pending")
                failures += 1
        elif ctx.args.parallel > 1:
            failures += run_parallel(ctx, group)
        else:
            for row in group:
                for seed in ctx.seeds_of(row):
                    run_row(ctx, row, seed)
    write_report(ctx, finished=True)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------
# report


def _aggregate(records: list[dict]) -> tuple[dict, dict]:
    """Mean of each metric over seeds, and the spread (std, min, max) when there are several."""
    mean: dict[str, dict] = {}
    spread: dict[str, dict] = {}
    for key in records[0]["metrics"]:
        mean[key], spread[key] = {}, {}
        for name in records[0]["metrics"][key]:
            values = [r["metrics"][key][name] for r in records if r["metrics"][key][name] is not None]
            mean[key][name] = float(np.mean(values)) if values else None
            if len(values) > 1:
                spread[key][name] = {"std": float(np.std(values, ddof=1)),
                                     "min": float(min(values)), "max": float(max(values))}
    return mean, (spread if len(records) > 1 else {})


def collect(ctx: Context) -> list[dict]:
    rows = []
    for row in ctx.report_rows:
        records = []
        for seed in ctx.seeds_of(row):
            path = ctx.row_file(row, seed)
            if path.exists():
                record = json.loads(path.read_text())
                if record.get("spec_key") == ctx.spec_key(row, seed):
                    records.append(record)
        entry = {**dataclasses.asdict(row), "seeds": [r["seed"] for r in records],
                 "status": "done" if len(records) == len(ctx.seeds_of(row)) else
                 ("partial" if records else "pending"), "runs": records}
        if records:
            entry["metrics"], entry["spread"] = _aggregate(records)
        rows.append(entry)
    return rows


def write_report(ctx: Context, finished: bool = False) -> None:
    rows = collect(ctx)
    a = ctx.args
    if ctx.current is not None:
        ctx.current.update(elapsed_s=round(time.time() - ctx.current["started_epoch"], 1),
                           finished=finished)
    budget = {
        "catalog": "sample (generated, --smoke)" if a.smoke else f"first {a.products} products",
        "products": len(ctx.workdir.products()), "preset": a.preset, "steps": a.steps,
        "batch_size": a.batch_size, "lr": ctx.base.train.lr, "seeds": ctx.seeds,
        "seed_rows": sorted(a.seed_rows) if a.seed_rows else "every trained row",
        "threads": a.threads, "parallel_rows": a.parallel, "eval_queries_per_split": a.eval_queries, "ks": list(a.ks),
        "search": "exact inner product over the whole subset", "backbone": ctx.base.images.backbone,
        "engine_queries_per_split": a.engine_queries or "all",
    }
    report = {
        "benchmark": "quality", "complete": all(r["status"] == "done" for r in rows),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "invocations": ctx.invocations,
        "budget": budget, "workdir": str(ctx.workdir.path), "machine": common.machine_info(),
        "rows": rows,
    }
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(ctx.out_dir / "quality.json", report)
    atomic_write_text(ctx.out_dir / "quality.md", markdown(report))
    plot_curves(rows, ctx.out_dir / "quality_curves.png")


def _cell(row: dict, split: str, metric: str) -> str:
    if row["status"] == "pending":
        return "…"
    value = row["metrics"].get(split, {}).get(metric)
    if value is None:
        return "n/a"
    spread = row.get("spread", {}).get(split, {}).get(metric)
    return f"{value:.4f}" + (f" ± {spread['std']:.4f}" if spread else "")


def _runs(invocations: list[dict]) -> list[str]:
    """One entry per command; interrupted attempts of a command folded into the next run."""
    out: list[str] = []
    interrupted = 0
    for i, run in enumerate(invocations):
        following = invocations[i + 1]["command"] if i + 1 < len(invocations) else None
        if not run["finished"] and following == run["command"]:
            interrupted += 1
            continue
        notes = [f"{run['elapsed_s'] / 60:.0f} min"] + ([] if run["finished"] else ["unfinished"])
        if interrupted:
            notes.append(f"after {interrupted} interrupted attempt{'s' * (interrupted > 1)}")
        out.append(f"`{run['command']}` ({', '.join(notes)})")
        interrupted = 0
    return out


def markdown(report: dict) -> str:
    b = report["budget"]
    header = "| Method | " + " | ".join(c[0] for c in TABLE_COLUMNS) + " | train s |"
    rule = "|---|" + "---:|" * (len(TABLE_COLUMNS) + 1)
    lines = [
        "# Quality benchmark",
        "",
        (f"{b['catalog']} ({b['products']} products), preset {b['preset']}, {b['steps']} steps "
         f"at batch {b['batch_size']}, lr {b['lr']}, seeds {b['seeds']} "
         f"({b['seed_rows'] if isinstance(b['seed_rows'], str) else ', '.join(b['seed_rows'])}; "
         f"others the first; ± is the std over seeds), {b['threads']} threads "
         f"({b['parallel_rows']} single-process rows at a time, threads split evenly); "
         f"{b['eval_queries_per_split']} queries per split; {b['search']}. "
         "R@K: hit rate of the clicked product; Rel: strict attribute relevance; Cate: category "
         "consistency. Columns 1-7 on the test split; held-out: queries about products never "
         "trained on; colour probe: one query (colour, category, gender) per product whose "
         "title names no colour, so only the image shows it."),
        "",
        (f"Status: {'complete' if report['complete'] else 'INCOMPLETE (pending rows marked …)'}; "
         f"updated {report['updated']}; load average {report['machine']['load_average']}."),
        "",
        "Runs: " + "; ".join(_runs(report["invocations"])) + ".",
    ]
    for table, title in (("table1", "Table 1: methods"), ("ablation", "Ablations of full")):
        lines += ["", f"## {title}", "", header, rule]
        for row in report["rows"]:
            if row["table"] != table and not (table == "ablation" and row["name"] == "full"):
                continue
            walls = [r["train"]["wall_s"] for r in row.get("runs", [])]
            train_s = f"{np.mean(walls):.0f}" if walls else "…"
            cells = " | ".join(_cell(row, split, metric) for _, split, metric in TABLE_COLUMNS)
            lines.append(f"| {row['label']} | {cells} | {train_s} |")
    lines += _engine_table(report["rows"])
    return "\n".join(lines) + "\n"


def _engine_mean(row: dict, setting: str, split: str, metric: str) -> float | None:
    values = [r["engine"][setting][split][metric] for r in row.get("runs", [])
              if setting in r.get("engine", {}) and r["engine"][setting][split].get(metric) is not None]
    return float(np.mean(values)) if values else None


def _engine_table(rows: list[dict]) -> list[str]:
    """The serving engine over each row's vectors: its own channel alone (the main table's
    exact search), with query-understanding constraints (QU), fused with BM25, and both."""
    settings = (("alone", None), ("+ QU", "embedding+qu"), ("+ BM25", "both"), ("+ BM25 + QU", "both+qu"))
    header = "| Method | " + " | ".join(f"{h} {name}" for h, _, _ in ENGINE_COLUMNS for name, _ in settings) + " |"
    lines = ["", "## Channels x query-understanding constraints (serving engine, exact search)", "",
             ("Each row's dense channel alone (as above), with the constraints query understanding "
              "derives from the query (QU, with the engine's relaxation), fused with the BM25 "
              "channel, and both; the BM25 row is the lexical channel alone and with QU."), "",
             header, "|---|" + "---:|" * (len(ENGINE_COLUMNS) * len(settings))]
    for row in rows:
        if not any("engine" in r for r in row.get("runs", [])):
            continue
        cells = []
        for _, split, metric in ENGINE_COLUMNS:
            for _, setting in settings:
                if setting is None:
                    value = row["metrics"].get(split, {}).get(metric)
                else:
                    if row["kind"] == "bm25":
                        setting = {"embedding+qu": "lexical+qu"}.get(setting)
                    value = _engine_mean(row, setting, split, metric) if setting else None
                cells.append("—" if value is None else f"{value:.4f}")
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def plot_curves(rows: list[dict], path: Path) -> None:
    """Total and QPM training loss against step for the Table-1 rows (first seed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    drawn = 0
    for row in rows:
        runs = row.get("runs") or []
        curve = [p for p in (runs[0]["train"].get("curve") or []) if "loss" in p] if runs else []
        if row["table"] != "table1" or not curve:
            continue
        steps = [p["step"] for p in curve]
        axes[0].plot(steps, [p["loss"] for p in curve], label=row["name"])
        qpm = [(p["step"], p["loss_qpm"]) for p in curve if p.get("loss_qpm") is not None]
        if qpm:
            axes[1].plot(*zip(*qpm), label=row["name"])
        drawn += 1
    for ax, title in zip(axes, ("total loss (weighted objectives)", "QPM (matching) loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))


# --------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=common.default_shared(), help="folder with data/fashion-products")
    p.add_argument("--products", type=int, default=d.products, help="first N catalog products")
    p.add_argument("--steps", type=int, help=f"steps per trained row (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per step, all processes")
    p.add_argument("--seeds", type=int, default=1, help="seeds per trained row (spread reported when > 1)")
    p.add_argument("--seed", type=int, default=13, help="first seed")
    p.add_argument("--seed-rows", help="comma-separated rows that get all --seeds (default: every "
                   "trained row); the others run with the first seed")
    p.add_argument("--threads", type=int, help="CPU threads per row, split across its processes "
                   f"(default {d.threads}; {d.smoke_threads} with --smoke)")
    p.add_argument("--parallel", type=int, help="single-process rows run at once, each in its own "
                   f"process with threads/parallel threads (default {d.parallel}; "
                   f"{d.smoke_parallel} with --smoke: in this process)")
    p.add_argument("--eval-queries", type=int, help=f"queries per eval split (default {d.eval_queries})")
    p.add_argument("--ks", default="10,100,500", help="cut-offs")
    p.add_argument("--engine-queries", type=int, help="queries per split searched through the "
                   f"serving engine (default: all; {d.smoke_engine_queries} with --smoke)")
    p.add_argument("--rows", help="comma-separated row names (default: every row; with --smoke, "
                   "the rows marked smoke)")
    p.add_argument("--preset", help=f"model preset (default {d.preset}; tiny with --smoke)")
    p.add_argument("--backbone", default=d.backbone, help="image backbone of the prepared subset")
    p.add_argument("--work", help="cache folder (default work/bench; with --smoke, OUT/work)")
    p.add_argument("--out", help="results folder (default benchmarks/results; with --smoke, "
                   "work/bench/smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="generated sample catalog, tiny preset, random-cnn, a few steps")
    p.add_argument("--fresh", action="store_true", help="recompute rows that have results")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report files from the finished rows; train nothing")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each row's final checkpoint")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.ks = tuple(int(k) for k in args.ks.split(","))
    if args.rows is None:
        args.rows = ",".join(r.name for r in ROWS if r.smoke or not args.smoke)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROW_BY_NAME]
    if unknown:
        p.error(f"unknown rows {unknown}; expected some of {list(ROW_BY_NAME)}")
    args.only = set(args.only.split(",")) if args.only else None
    args.seed_rows = set(args.seed_rows.split(",")) if args.seed_rows else None
    args.preset = args.preset or ("tiny" if args.smoke else d.preset)
    args.steps = args.steps if args.steps is not None else (d.smoke_steps if args.smoke else d.steps)
    args.eval_queries = args.eval_queries or (d.smoke_eval_queries if args.smoke else d.eval_queries)
    args.threads = args.threads or (d.smoke_threads if args.smoke else d.threads)
    if args.engine_queries is None and args.smoke:
        args.engine_queries = d.smoke_engine_queries
    args.parallel = args.parallel or (d.smoke_parallel if args.smoke else d.parallel)
    args.log_every = d.smoke_log_every if args.smoke else d.log_every
    args.out = args.out or str(common.WORK_DIR / "smoke" if args.smoke else common.RESULTS_DIR)
    args.work = args.work or str(Path(args.out) / "work" if args.smoke else common.WORK_DIR)
    if args.batch_size % 2:
        p.error("--batch-size must be even (2-process rows split it)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        write_report(build_context(args, prepare=False))
        return 0
    if args.worker:
        worker_main(args)
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
