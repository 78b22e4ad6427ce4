"""The prepared work directory: its layout, its manifest, and the `prepare` pipeline that fills it.

``prepare(catalog, out, config)`` runs catalog loading, brand mining, query mocking (or a
real click log), splits, sampling probabilities, BEIR export and image-feature extraction
into ``out``. It is idempotent: every stage records a fingerprint of its inputs in
``manifest.json``, and a second run over the same inputs does no work. Image extraction
resumes where a killed run stopped (see :mod:`vlsearch.images`).

``Workdir.open(path)`` is the read side used by training, indexing and evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlsearch.catalog import Product, load_catalog
from vlsearch.config import Config, DataConfig, ImageConfig, update
from vlsearch.errors import WorkdirError
from vlsearch.io import atomic_write, atomic_write_json, read_json
from vlsearch.product_table import (
    products_from_table,
    products_to_table,
)
from vlsearch.queries.beir import export_click_beir, export_corpus
from vlsearch.queries.clicklog import ClickLog, read_click_log, sampling_probabilities
from vlsearch.queries.generator import colour_probe_queries, export_beir, generate_queries
from vlsearch.queries.phrases import SYNONYMS
from vlsearch.queries.splits import split_click_log, split_products, split_queries

FORMAT_VERSION = 1
COLOUR_PROBE_SPLIT = "colour_probe"  # eval split of queries.colour_probe_queries
EVAL_SPLITS = ("valid", "test", "heldout", COLOUR_PROBE_SPLIT)
# Part of the queries stage's fingerprint: bumped when the stage writes something new, so
# that existing work directories gain it. 2: eval/colour_probe.
QUERIES_STAGE_VERSION = 2
# ImageConfig fields that change the cached features (threads and batch sizes do not).
IMAGE_OUTPUT_FIELDS = ("backbone", "width", "height")


def _fingerprint(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def catalog_signature(catalog: Path) -> dict[str, Any]:
    """What identifies a catalog's contents: its path, a hash of each table file and the
    names and sizes of its images. Modification times are left out on purpose: a catalog
    copied or re-mounted with fresh times (``cp``, ``rsync`` without ``-t``, a new CI
    checkout) must not throw away hours of prepared features."""
    catalog = catalog.resolve()
    signature: dict[str, Any] = {"path": str(catalog)}
    tables = [catalog / "styles.csv"] if catalog.is_dir() else [catalog]
    for path in tables:
        if path.is_file():
            signature[path.name] = _content_hash(path)
    images = catalog / "images"
    if catalog.is_dir() and images.is_dir():
        listing = hashlib.blake2b(digest_size=16)
        for entry in sorted(os.scandir(images), key=lambda e: e.name):
            listing.update(f"{entry.name}\t{entry.stat().st_size}\n".encode())
        signature["images"] = listing.hexdigest()
    return signature


def _content_hash(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _write_parquet(path: Path, table: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


@dataclass
class PrepareSummary:
    """What `prepare` did and found; printed by the CLI and stored in the manifest."""

    workdir: Path
    products: int = 0
    products_with_image: int = 0
    heldout_products: int = 0
    brands: int = 0
    top_brands: list[tuple[str, int]] = field(default_factory=list)
    categories: int = 0
    training_clicks: int = 0
    distinct_training_queries: int = 0
    eval_queries: dict[str, int] = field(default_factory=dict)
    image_problems: int = 0
    catalog_report: str = ""
    click_log_notes: list[str] = field(default_factory=list)
    stages_run: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, workdir: Path, manifest: dict[str, Any], stages_run: list[str],
                      seconds: dict[str, float]) -> PrepareSummary:
        """The summary of a prepared directory from what its stages recorded in the manifest."""
        counts = manifest.get("counts", {})
        return cls(
            workdir=workdir,
            products=counts.get("products", 0),
            products_with_image=manifest.get("products_with_image", 0),
            heldout_products=counts.get("heldout_products", 0),
            brands=counts.get("brands", 0),
            top_brands=[tuple(x) for x in manifest.get("top_brands", [])],
            categories=len(manifest.get("categories", [])),
            training_clicks=counts.get("training_clicks", 0),
            distinct_training_queries=counts.get("distinct_training_queries", 0),
            eval_queries=manifest.get("eval_queries", {}),
            image_problems=manifest.get("image_problems", 0),
            catalog_report=manifest.get("catalog_summary", ""),
            click_log_notes=list(manifest.get("click_log_notes", [])),
            stages_run=stages_run,
            seconds=seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["workdir"] = str(self.workdir)
        return out

    def format(self) -> str:
        ran = ", ".join(self.stages_run) if self.stages_run else "nothing (up to date)"
        lines = [
            f"work directory   {self.workdir}",
            f"stages run       {ran}",
            (f"products         {self.products} ({self.products_with_image} with an image, "
             f"{self.heldout_products} held out for cold-start evaluation)"),
            f"brands mined     {self.brands}; top 10: "
            + ", ".join(f"{name} ({count})" for name, count in self.top_brands[:10]),
            f"categories       {self.categories}",
            (f"training clicks  {self.training_clicks} rows, "
             f"{self.distinct_training_queries} distinct queries"),
            "eval queries     " + ", ".join(f"{k}: {v}" for k, v in self.eval_queries.items()),
            f"image problems   {self.image_problems}",
        ]
        if self.catalog_report:
            lines.append("catalog report   " + self.catalog_report.replace("\n", "\n                 "))
        for note in self.click_log_notes:
            lines.append("click log        " + note.replace("\n", "\n                 "))
        if self.seconds:
            lines.append(
                "seconds          " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())
            )
        return "\n".join(lines)


class Workdir:
    """Read access to a prepared work directory (see docs/interfaces.md for the layout)."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.config = update(Config(), manifest.get("config", {}), source=str(path / "manifest.json"))
        self._products = None

    @classmethod
    def open(cls, path: str | Path) -> Workdir:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.exists():
            raise WorkdirError(
                f"{path}: not a prepared work directory (no manifest.json); "
                "run `vlsearch prepare --catalog CATALOG --out DIR` first"
            )
        manifest = read_json(manifest_path)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise WorkdirError(
                f"{manifest_path}: work directory format version {version!r}, this vlsearch reads "
                f"version {FORMAT_VERSION}; prepare it again with this version"
            )
        missing = [s for s in ("catalog", "queries") if s not in manifest.get("stages", {})]
        if missing:
            raise WorkdirError(f"{path}: preparation incomplete (stages missing: {missing})")
        return cls(path, manifest)

    # --- products -------------------------------------------------------------------------
    def product_table(self) -> pa.Table:
        return pq.read_table(self.path / "products.parquet")

    def products(self) -> list:
        """All products, in feature-row order."""
        if self._products is None:
            self._products = products_from_table(self.product_table())
        return self._products

    def categories(self) -> list[str]:
        """Sorted distinct product categories (the QPC label set)."""
        return list(self.manifest["categories"])

    def brands(self) -> list[str]:
        return list(read_json(self.path / "brands.json").get("brands", []))

    # --- queries --------------------------------------------------------------------------
    def clicks(self) -> pa.Table:
        """The training click stream: query, product_id, count, qid."""
        return pq.read_table(self.path / "clicks" / "train.parquet")

    def phrase_tables(self) -> dict[str, dict[str, tuple[str, ...]]]:
        """The mocked-query generator's phrase tables ({field: {value: phrasings}}): the
        optional hand-written synonym layer of query understanding (off by default)."""
        return SYNONYMS

    def eval_dir(self, split: str) -> Path:
        if split not in EVAL_SPLITS:
            raise WorkdirError(f"unknown eval split {split!r}; expected one of {EVAL_SPLITS}")
        return self.path / "eval" / split

    # --- images ---------------------------------------------------------------------------
    def features(self):
        from vlsearch.images import FeatureCache  # local: vlsearch.images loads torch (heavy)

        if "features" not in self.manifest.get("stages", {}):
            raise WorkdirError(
                f"{self.path}: no image feature cache; run `vlsearch prepare` to completion "
                "(it resumes where it stopped)"
            )
        return FeatureCache.open(self.path / "features")


# --- prepare ------------------------------------------------------------------------------


def prepare(
    catalog: str | Path,
    out: str | Path,
    config: Config | None = None,
    clicks: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> PrepareSummary:
    """Fill ``out`` from ``catalog`` (and a real click log if given, else mocked queries).

    Stages and their fingerprints:
      - ``catalog``: catalog signature + DataConfig → products.parquet, brands.json, report
      - ``queries``: catalog fingerprint + click-log signature + stage version → clicks/, eval/
      - ``features``: catalog fingerprint + ImageConfig → features/ (resumable)
    """
    config = config or Config()
    catalog, out = Path(catalog), Path(out)
    click_log = Path(clicks) if clicks else None
    out.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out, log)
    stages: dict[str, Any] = manifest.get("stages", {})
    catalog_fp = _fingerprint({"catalog": catalog_signature(catalog), "data": config.data.__dict__})
    click_sig = catalog_signature(click_log) if click_log else None
    image_output = {k: getattr(config.images, k) for k in IMAGE_OUTPUT_FIELDS}
    if config.images.colour_levels:  # (left out when off: earlier work dirs keep their fingerprint)
        image_output["colour_levels"] = config.images.colour_levels
    plan: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("catalog", catalog_fp, lambda: _prepare_catalog(catalog, out, config.data)),
        ("queries",
         _fingerprint({"catalog": catalog_fp, "clicks": click_sig, "version": QUERIES_STAGE_VERSION}),
         lambda: _prepare_queries(out, config.data, click_log)),
        ("features", _fingerprint({"catalog": catalog_fp, "images": image_output}),
         lambda: _prepare_features(out, config.images, progress)),
    ]
    stages_run: list[str] = []
    seconds: dict[str, float] = {}
    for stage, fingerprint, run in plan:
        if stages.get(stage, {}).get("fingerprint") == fingerprint:
            continue
        started = time.perf_counter()
        if stage == "catalog":  # everything after the catalog is made from it
            stages.pop("queries", None)
            stages.pop("features", None)
        _merge(manifest, run())
        stages[stage] = {"fingerprint": fingerprint}
        manifest.update(format_version=FORMAT_VERSION, config=config.to_dict(), stages=stages)
        atomic_write_json(out / "manifest.json", manifest)
        stages_run.append(stage)
        seconds[stage] = time.perf_counter() - started
    return PrepareSummary.from_manifest(out, manifest, stages_run, seconds)


def _read_manifest(out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The manifest of an earlier run, or {} (none yet, or one of another format version)."""
    path = out / "manifest.json"
    manifest: dict[str, Any] = read_json(path) if path.exists() else {}
    if manifest and manifest.get("format_version") != FORMAT_VERSION:
        log(f"{out}: work directory from format version {manifest.get('format_version')}; rebuilding")
        return {}
    return manifest


def _merge(manifest: dict[str, Any], stage_result: dict[str, Any]) -> None:
    """Record a stage's results; ``counts`` accumulate across stages, other keys are replaced."""
    manifest.setdefault("counts", {}).update(stage_result.pop("counts", {}))
    manifest.update(stage_result)


def _prepare_catalog(catalog: Path, out: Path, cfg: DataConfig) -> dict[str, Any]:
    """Load, validate and split the catalog; write products.parquet and brands.json."""
    loaded = load_catalog(catalog, limit=cfg.limit, brand_min_products=cfg.brand_min_products)
    products = loaded.products
    if not products:
        raise WorkdirError(f"{catalog}: no usable products\n{loaded.report.summary()}")
    heldout = set(split_products(products, cfg.heldout_product_fraction, cfg.seed).heldout)
    splits = ["heldout" if p.id in heldout else "train" for p in products]
    _write_parquet(out / "products.parquet", products_to_table(products, splits=splits, sampling={}))
    atomic_write_json(out / "prepare_report.json", loaded.report.to_dict())
    brand_counts: dict[str, int] = {}
    for p in products:
        if p.brand:
            brand_counts[p.brand] = brand_counts.get(p.brand, 0) + 1
    top = sorted(brand_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    atomic_write_json(out / "brands.json", {"brands": sorted(brand_counts), "counts": dict(top)})
    return {
        "counts": {"products": len(products), "heldout_products": len(heldout), "brands": len(top)},
        "top_brands": top[:30],
        "categories": sorted({p.category for p in products if p.category}),
        "catalog_summary": loaded.report.summary(),
    }


def _prepare_queries(out: Path, cfg: DataConfig, clicks: Path | None) -> dict[str, Any]:
    """Training click stream, Q(p), and the BEIR evaluation splits.

    Mocked queries (no click log): generated from training products, split by intent into
    train/valid/test; the held-out split is mocked from held-out products. A real click log:
    split by query id; clicks on held-out products become the cold-start split and never
    enter training; rows naming unknown products are counted and left out.
    """
    table = pq.read_table(out / "products.parquet")
    products = products_from_table(table)
    split_col = table.column("split").to_pylist()
    heldout_ids = {p.id for p, s in zip(products, split_col) if s == "heldout"}
    eval_dir = out / "eval"
    notes: list[str] = []
    if clicks is not None:
        train_log, eval_counts = _click_log_splits(clicks, products, heldout_ids, cfg, eval_dir,
                                                   notes)
    else:
        train_log, eval_counts = _mocked_splits(products, heldout_ids, cfg, eval_dir)
    # From the catalog alone, whatever the click source: colours that only images show.
    eval_counts[COLOUR_PROBE_SPLIT] = export_beir(
        colour_probe_queries(products, cfg.seed), products, eval_dir / COLOUR_PROBE_SPLIT,
        max_queries=cfg.max_eval_queries, seed=cfg.seed, id_prefix="colour",
    )

    export_corpus(products, [eval_dir / split for split in eval_counts])
    train_log.write_parquet(out / "clicks" / "train.parquet")
    # Q(p): each product's share of the training click mass, stored beside the product.
    mass = sampling_probabilities(train_log)
    table = table.set_column(
        table.schema.get_field_index("sampling_prob"),
        "sampling_prob",
        pa.array([mass.get(p.id, 0.0) for p in products], type=pa.float64()),
    )
    _write_parquet(out / "products.parquet", table)
    return {
        "counts": {
            "training_clicks": len(train_log),
            "distinct_training_queries": len(set(train_log.query)),
        },
        "eval_queries": eval_counts,
        "click_log_notes": notes,
    }


def _click_log_splits(clicks: Path, products: list[Product], heldout_ids: set[str],
                      cfg: DataConfig, eval_dir: Path,
                      notes: list[str]) -> tuple[ClickLog, dict[str, int]]:
    """A real click log split by query id: the training log and the valid/test/heldout
    BEIR splits written under ``eval_dir`` (their query counts); problems go to ``notes``."""
    log = read_click_log(clicks)
    if log.problems:
        notes.append(log.summary())
    known = {p.id for p in products}
    unknown = {pid for pid in log.product_id if pid not in known}
    if unknown:
        notes.append(f"{clicks}: clicks on {len(unknown)} product ids not in the catalog left out")
    on_heldout = log.take([i for i, pid in enumerate(log.product_id) if pid in heldout_ids])
    train_log, valid_log, test_log = split_click_log(
        log.without_products(heldout_ids | unknown),
        cfg.valid_query_fraction, cfg.test_query_fraction, cfg.seed,
    )
    eval_counts = {
        split: export_click_beir(part, products, eval_dir / split,
                                 max_queries=cfg.max_eval_queries, seed=cfg.seed)
        for split, part in (("valid", valid_log), ("test", test_log), ("heldout", on_heldout))
    }
    return train_log, eval_counts


def _mocked_splits(products: list[Product], heldout_ids: set[str], cfg: DataConfig,
                   eval_dir: Path) -> tuple[ClickLog, dict[str, int]]:
    """Mocked queries: the training clicks and the valid/test/heldout BEIR splits written
    under ``eval_dir`` (their query counts)."""
    train_products = [p for p in products if p.id not in heldout_ids]
    heldout_products = [p for p in products if p.id in heldout_ids]
    train_queries, valid_queries, test_queries = split_queries(
        generate_queries(train_products, cfg, cfg.seed),
        cfg.valid_query_fraction, cfg.test_query_fraction, cfg.seed,
    )
    mocked_eval = {
        "valid": valid_queries,
        "test": test_queries,
        "heldout": generate_queries(heldout_products, cfg, cfg.seed + 1),
    }
    eval_counts = {
        split: export_beir(mocked, products, eval_dir / split,
                           max_queries=cfg.max_eval_queries, seed=cfg.seed)
        for split, mocked in mocked_eval.items()
    }
    return ClickLog.from_queries(train_queries), eval_counts


def _prepare_features(out: Path, cfg: ImageConfig, progress: bool) -> dict[str, Any]:
    from vlsearch.images import extract_features  # local: vlsearch.images loads torch (heavy)

    table = pq.read_table(out / "products.parquet")
    ids = table.column("id").to_pylist()
    several = "image_paths" in table.column_names  # products with several images (product_table)
    paths = table.column("image_paths" if several else "image_path").to_pylist()
    cache = extract_features(ids, paths, out / "features", cfg, progress=progress, overwrite=True)
    has_image = cache.has_image(np.arange(cache.n))
    return {
        "products_with_image": int(np.sum(has_image)),
        "image_problems": len(cache.problems),
    }
