"""Quality benchmark, what is measured: the rows (methods and ablations), the table columns,
the engine settings, the test-bed version and the run budget (``DEFAULTS``).

Used by ``benchmarks/quality.py`` (see its docstring for the benchmark itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlsearch.model.product_text import ATTRIBUTE_TEXT
from vlsearch.workdir import COLOUR_PROBE_SPLIT


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
    Row("dual-encoder+ma", "dual-encoder + MA, in-batch matching only (MNRL-like, with the image)",
        "dual-encoder+ma", smoke=False),
    Row("dual-encoder-title-only", "dual-encoder, in-batch matching only, title only (no image)",
        "dual-encoder-title-only", table="ablation", smoke=False),
    Row("dual-encoder+attrs", "dual-encoder + MA, in-batch matching only, title + attribute text",
        "dual-encoder+attrs", smoke=False),
    Row("dual-encoder+tia", "dual-encoder + MA + title-image alignment (image vector finds its title)",
        "dual-encoder+tia"),
    Row("make", "MAKE", "make"),
    Row("make+contrastive-mpm", "MAKE + contrastive MPM", "make+contrastive-mpm"),
    Row("make+mbns", "MAKE + MBNS", "make+mbns"),
    Row("make+attrs", "MAKE, title + attribute text", "make+attrs"),
    Row("make+bf16", "MAKE, bf16 autocast on CPU (train.cpu_bf16)", "make+bf16", table="ablation", smoke=False),
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
    Row("no-sort+attrs", "full, terms in natural order, + attribute text", "no-sort+attrs", 2, "ablation",
        smoke=False),
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
    colour_levels: int = 0  # per-patch colour histograms of the prepared subset (images.colour_levels)
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
