"""Build a self-contained index version and publish it atomically.

``OUT/versions/<vNNNNNN-stamp>/`` gets: ``vectors.npy`` (exported product vectors),
the vector store's files (FAISS backend: ``ann.faiss`` + ``attributes.parquet``; Milvus
backend: a collection ``<prefix>_<version>``, see ``index/milvus.py``), ``qid/`` (qid
table, with the short-list fill lists of narrow logged queries: ``index/fill_lists.py``)
and ``query_vectors.npy`` (its query vectors, for live updates), ``lexical/`` (tantivy),
``lexicon.json`` (query understanding), ``evidence.json`` (the mined phrases with their
support and confidence), ``products.parquet`` (product metadata incl. image paths),
``model/`` (the Retriever the engine encodes queries with), ``manifest.json`` and last the
``COMPLETE`` marker. Publishing points ``OUT/current`` (a relative symlink) at the new
version by renaming a temporary symlink over it, so a reader resolving ``current`` sees the
old complete version or the new complete one, never a half-written one (the Milvus backend
first switches the alias ``<prefix>_current`` to the new collection). Old versions beyond
``IndexConfig.keep_versions`` are removed (never the current one), and so are the
half-written versions of killed builds: a ``BUILDING`` marker names the process writing a
version, and a version whose process is gone is removed by the next build. The vector
export is staged in ``OUT/export/`` and resumes there after a killed build.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank exports its shard of the catalog
(``index.export.export_sharded``); rank 0 merges the shards and builds and publishes the
version alone, the other ranks return a :class:`ShardReport`. A killed sharded build leaves
``current`` as it was; rerunning resumes each shard.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlsearch import distributed
from vlsearch.config import IndexConfig
from vlsearch.errors import WorkdirError
from vlsearch.index.ann import AnnReport
from vlsearch.index.evidence import mine_terms
from vlsearch.index.export import export_sharded, export_vectors, shard_rows
from vlsearch.index.fill_lists import build_fill_lists, fill_searches
from vlsearch.index.lexical import LexicalIndex, build_lexical
from vlsearch.index.masks import ConstraintMasks
from vlsearch.index.qid_table import QidTable
from vlsearch.index.spelling import SPELLING_FILE, build_vocabulary, save_vocabulary
from vlsearch.index.store import (
    FaissStore,
    build_store,
    exact_store,
    publish_store,
    sweep_stores,
    write_backend_qid_table,
)
from vlsearch.index.understanding import (
    LEXICON_FILE,
    build_lexicon,
    constraint_signature,
    understand_many,
)
from vlsearch.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_text,
    fsync_dir,
    normalize_modes,
    read_json,
)
from vlsearch.model import Retriever
from vlsearch.model.onnx_query import export_query_onnx, onnx_available
from vlsearch.product_table import products_to_table
from vlsearch.progress import stage
from vlsearch.workdir import Workdir

FORMAT_VERSION = 1
COMPLETE = "COMPLETE"
BUILDING = "BUILDING"  # JSON {pid, host} of the build writing a version; removed when complete
CURRENT = "current"
QUERY_VECTORS = "query_vectors.npy"  # float32 [qid entries, d]: the qid table's query vectors
VERSIONS = "versions"
_VERSION_RE = re.compile(r"^v(\d{6})-")


@dataclass
class IndexReport:
    """What ``build_index`` built and measured."""

    version: str
    path: str
    products: int
    dim: int
    ann: AnnReport
    qid_queries: int
    qid_top_k: int
    lexicon_phrases: int
    qid_fill_lists: int = 0  # stored short-list fill steps (index/fill_lists.py)
    mined_phrases: dict[str, int] = field(default_factory=dict)  # mined phrases by kind
    seconds: dict[str, float] = field(default_factory=dict)
    removed_versions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["ann"] = self.ann.to_dict()
        return out

    def format(self) -> str:
        a = self.ann
        return "\n".join([
            f"index version    {self.version} (published as current) at {self.path}",
            f"products         {self.products} vectors of dim {self.dim}",
            f"ANN              {a.kind}" + (f" nlist={a.nlist}" if a.nlist else "")
            + f", recall@100 vs exact {a.recall_at_100:.4f} on {a.recall_queries} queries, "
            f"{a.size_bytes / 1e6:.2f} MB",
            (f"qid table        {self.qid_queries} logged queries x top {self.qid_top_k}, "
             f"{self.qid_fill_lists} fill lists"),
            f"lexicon          {self.lexicon_phrases} catalog phrases, mined "
            + (", ".join(f"{n} {k}" for k, n in self.mined_phrases.items()) or "none"),
            "seconds          " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        ])


@dataclass
class ShardReport:
    """What a rank other than 0 did in a sharded build: its rows of the export."""

    rank: int
    world: int
    rows: tuple[int, int]
    staging: str

    def format(self) -> str:
        return (f"rank {self.rank}/{self.world}: exported rows {self.rows[0]}:{self.rows[1]} into "
                f"{self.staging}; rank 0 merges the shards and publishes the index")


@dataclass(frozen=True)
class Sharding:
    """This process's place in a sharded export (from ``distributed.init_distributed``)."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None


# --- versions and publishing ----------------------------------------------------------------


def _new_version_dir(out: Path) -> Path:
    versions = out / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    while True:
        numbers = [int(m.group(1)) for p in versions.iterdir() if (m := _VERSION_RE.match(p.name))]
        name = f"v{max(numbers, default=0) + 1:06d}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        try:
            (versions / name).mkdir()
        except FileExistsError:  # a concurrent build took the number
            continue
        atomic_write_json(versions / name / BUILDING, {"pid": os.getpid(), "host": socket.gethostname()})
        return versions / name


def _abandoned(version_dir: Path) -> bool:
    """An incomplete version whose build is gone: its BUILDING marker names a process of this
    host that no longer runs (a SIGKILLed or crashed-machine build). Versions of builds that
    may still run (other hosts, no marker yet) are never taken for abandoned."""
    if is_complete(version_dir):
        return False
    try:
        owner = read_json(version_dir / BUILDING)
        pid, host = int(owner["pid"]), owner["host"]
    except (WorkdirError, OSError, ValueError, KeyError, TypeError):
        return False  # no marker (yet) or an unreadable one: leave the version alone
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def is_complete(version_dir: Path) -> bool:
    return (version_dir / COMPLETE).is_file()


def publish(out_dir: str | Path, version_dir: str | Path) -> None:
    """Point ``out_dir/current`` at ``version_dir`` with one atomic rename."""
    out = Path(out_dir)
    version_dir = Path(version_dir)
    if not is_complete(version_dir):
        raise WorkdirError(f"{version_dir}: not a complete index version; refusing to publish")
    tmp = out / f".{CURRENT}.{uuid.uuid4().hex}"
    os.symlink(Path(VERSIONS) / version_dir.name, tmp)
    try:
        os.replace(tmp, out / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out)


def current_version(index_dir: str | Path) -> Path:
    """The complete version ``index_dir/current`` points at (or ``index_dir`` if it is one)."""
    index_dir = Path(index_dir)
    if is_complete(index_dir):
        return index_dir
    link = index_dir / CURRENT
    if not index_dir.is_dir():
        raise WorkdirError(f"{index_dir}: index directory not found; build one with `vlsearch index`")
    try:
        target = index_dir / os.readlink(link)
    except FileNotFoundError:
        raise WorkdirError(
            f"{index_dir}: no published index (no {CURRENT} link); build one with `vlsearch index`"
        ) from None
    except OSError as exc:
        raise WorkdirError(f"{link}: not an index link ({exc})") from None
    if not is_complete(target):
        raise WorkdirError(f"{target}: index version is missing or half-written (no {COMPLETE})")
    return target


def prune_versions(out_dir: str | Path, keep: int) -> list[str]:
    """Remove complete versions beyond the newest ``keep`` (never the current one) and the
    half-written versions of builds that were killed."""
    out = Path(out_dir)
    try:
        current = os.readlink(out / CURRENT)
    except OSError:
        current = None
    versions = sorted(p for p in (out / VERSIONS).iterdir() if _VERSION_RE.match(p.name))
    complete = [p for p in versions if is_complete(p)]
    removed = []
    for dead in filter(_abandoned, versions):
        shutil.rmtree(dead, ignore_errors=True)
        removed.append(dead.name)
    for old in complete[: max(0, len(complete) - max(1, keep))]:
        if current and Path(current).name == old.name:
            continue
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old.name)
    return removed


# --- building -------------------------------------------------------------------------------


def save_query_vectors(version: Path, parts: Sequence[np.ndarray], dim: int) -> None:
    """``QUERY_VECTORS``: the qid table's query vectors, row i = table entry i (live updates
    re-answer affected entries from them without encoding again)."""
    array = np.concatenate(parts) if len(parts) else np.zeros((0, dim), np.float32)
    atomic_write_npy(version / QUERY_VECTORS, np.asarray(array, dtype=np.float32))


def answer_vectors(store, constraint_masks: ConstraintMasks, lexicon, top_k: int, lexical=None):
    """``answer(texts, query_vectors) -> (scores, rows, signatures[, lexical_scores,
    lexical_rows])``: each logged query answered as the engine answers it by default, i.e.
    under the constraints query understanding derives from it (paper section 3.2); with
    ``lexical`` also its BM25 list under the same constraints. Used by the build and by
    live updates."""
    masks: dict[int, np.ndarray] = {}
    filters: dict[int, dict] = {}

    def answer(texts: list[str], vecs: np.ndarray):
        scores = np.full((len(texts), top_k), -np.inf, np.float32)
        rows = np.full((len(texts), top_k), -1, np.int64)
        lex_scores = np.full((len(texts), top_k), -np.inf, np.float32)
        lex_rows = np.full((len(texts), top_k), -1, np.int64)
        sigs = []
        for got in understand_many(texts, lexicon):
            constraints = got.constraints
            sig = constraint_signature(constraints)
            if sig and sig not in masks:
                filters[sig] = {c.field: list(c.values) for c in constraints}
                masks[sig] = constraint_masks.mask_canonical((c.field, c.values) for c in constraints)
            sigs.append(sig)
        groups: dict[int, list[int]] = {}
        for i, sig in enumerate(sigs):
            groups.setdefault(sig, []).append(i)
        for sig, members in groups.items():  # one batched store call per constraint set
            answers = store.constrained_search_many(vecs[members], top_k, filters.get(sig), masks.get(sig))
            for i, (s, r) in zip(members, answers):
                scores[i, :len(r)], rows[i, :len(r)] = s, r
        for i, text in enumerate(texts):
            if lexical is not None:
                s, r = lexical.search(text, top_k, filters.get(sigs[i]))
                lex_scores[i, :len(r)], lex_rows[i, :len(r)] = s, r
        if lexical is None:
            return scores, rows, sigs
        return scores, rows, sigs, lex_scores, lex_rows

    return answer


def _export_onnx(retriever, model_dir: Path, queries: Sequence[str], config: IndexConfig) -> dict | None:
    """Export the query tower next to the copied model; None when switched off or no onnxruntime."""
    if not config.onnx_query_encoder or not onnx_available():
        return None
    report = export_query_onnx(retriever, model_dir, list(queries)[:config.onnx_parity_queries],
                               config.onnx_min_cosine)
    if not report.exported:
        warnings.warn(report.reason, stacklevel=2)
    return report.to_dict()


def _constrained_answers(store, constraint_masks: ConstraintMasks, lexicon, encode_queries, top_k: int,
                         lexical=None, record: list[np.ndarray] | None = None):
    """The qid table's search over query texts; ``record`` collects the query vectors in
    the order asked (the table's row order), which live updates reuse."""
    by_vectors = answer_vectors(store, constraint_masks, lexicon, top_k, lexical)

    def answer(texts: list[str]):
        vecs = np.asarray(encode_queries(texts), dtype=np.float32)
        if record is not None:
            record.append(vecs)
        return by_vectors(texts, vecs)

    return answer


def build_index_from_parts(
    out_dir: str | Path,
    products: Sequence,
    encode_products: Callable[[int, int], np.ndarray],
    encode_queries: Callable[[list[str]], np.ndarray],
    queries: Sequence[str],
    qids: Sequence[int],
    config: IndexConfig | None = None,
    model_dir: str | Path | None = None,
    export_key: dict | None = None,
    seed: int = 0,
    progress: bool = True,
    sharding: Sharding | None = None,
    retriever=None,
    clicks: Sequence[tuple[str, str, int]] | None = None,
    synonyms: dict | None = None,
    splits: Sequence[str] | None = None,
    workdir: str | None = None,
) -> IndexReport | ShardReport:
    """Build every part from in-memory inputs, then publish (the testable core of build_index).
    ``retriever`` (with ``model_dir``): the query tower exported to ``model/query.onnx`` when it
    passes the parity check. ``splits`` (one per product): stored for ``vlsearch eval``;
    ``workdir``: recorded in the manifest (live updates reuse its image feature cache). With
    ``sharding`` over several ranks each exports its shard; rank 0 builds and publishes, the
    others return a :class:`ShardReport`. ``clicks`` ((query, product id, count)) feed the mined
    query-understanding layer; ``synonyms`` ({field: {value: phrasings}}) the optional hand
    table (used only with ``ServeConfig.synonyms``)."""
    config = config or IndexConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    watch = _Stopwatch()
    sharding = sharding or Sharding()
    vectors = _export(out / "export", products, encode_products, config, export_key, progress, sharding)
    if isinstance(vectors, ShardReport):
        return vectors
    watch.lap("export")
    version = _new_version_dir(out)
    store = None
    try:
        sample = _recall_sample(queries, config, seed)
        with stage(f"building the {config.kind} vector index over {len(vectors)} products", progress):
            store, ann_report = build_store(np.asarray(vectors, dtype=np.float32), products, config, version,
                                            encode_queries(sample) if sample else None, seed)
        watch.lap("ann")
        lexicon, mined = _build_language(products, queries, clicks, synonyms, config, version, progress)
        watch.lap("lexical")
        table, top_k = _build_qid_table(store, vectors, products, lexicon, encode_queries, queries, qids, config,
                                        version, progress)
        watch.lap("qid_table")
        atomic_write(version / "products.parquet",
                     lambda tmp: pq.write_table(products_to_table(products, splits=splits), tmp))
        onnx = _copy_model(model_dir, version, retriever, sample, config)
        watch.lap("onnx")
        del vectors
        os.replace(out / "export" / "vectors.npy", version / "vectors.npy")
        shutil.rmtree(out / "export", ignore_errors=True)
        _write_manifest(version, config, store, ann_report, len(products), len(table), top_k,
                        has_model=model_dir is not None, onnx_query_encoder=onnx, workdir=workdir)
        watch.lap("metadata")
        _complete(version)
    except BaseException:
        if store is not None:
            store.drop()
        shutil.rmtree(version, ignore_errors=True)
        raise
    removed = _publish_version(out, version, store, config)
    return IndexReport(
        version=version.name, path=str(version), products=len(products), dim=store.dim, ann=ann_report,
        qid_queries=len(table), qid_top_k=top_k, lexicon_phrases=len(lexicon.phrases),
        qid_fill_lists=len(table.fill) if table.fill is not None else 0,
        mined_phrases=dict(sorted(Counter(t.kind for t in mined).items())),
        seconds=watch.seconds, removed_versions=removed,
    )


def _write_manifest(version: Path, config: IndexConfig, store, ann_report: AnnReport, products: int,
                    qid_queries: int, qid_top_k: int, **extra) -> None:
    atomic_write_json(version / "manifest.json", {
        "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": asdict(config), "products": products, "dim": store.dim, "ann": ann_report.to_dict(),
        **store.manifest_entry(), "qid_queries": qid_queries, "qid_top_k": qid_top_k, **extra,
    })


def _publish_version(out: Path, version: Path, store, config: IndexConfig) -> list[str]:
    """The store's pointer (Milvus: the alias), then ``current``; old and abandoned versions
    (and their collections) removed; returns the removed version names."""
    publish_store(store)
    publish(out, version)
    removed = prune_versions(out, config.keep_versions)
    sweep_stores(out, config, {p.name for p in (out / VERSIONS).iterdir()})
    return removed


class _Stopwatch:
    """Seconds per build stage: ``lap(name)`` charges the time since the last lap to ``name``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._clock
        self._clock = now


def _export(staging: Path, products: Sequence, encode_products, config: IndexConfig, export_key,
            progress: bool, sharding: Sharding):
    """The product vectors (staged and resumable in ``staging``); on a rank other than 0 of a
    sharded build, that rank's :class:`ShardReport` instead."""
    if sharding.world <= 1:
        return export_vectors(encode_products, len(products), staging, config.export_batch_size,
                              config.export_dtype, key=export_key, progress=progress)
    vectors = export_sharded(encode_products, len(products), staging, sharding.rank, sharding.world,
                             sharding.barrier, config.export_batch_size, config.export_dtype, key=export_key,
                             progress=progress)
    if sharding.rank != 0:
        rows = shard_rows(len(products), config.export_batch_size, sharding.rank, sharding.world)
        return ShardReport(sharding.rank, sharding.world, rows, str(staging))
    return vectors


def _recall_sample(queries: Sequence[str], config: IndexConfig, seed: int) -> list[str]:
    """Distinct logged queries (seeded sample) the ANN recall and the ONNX parity are checked on."""
    distinct = list(dict.fromkeys(queries))
    take = min(config.recall_sample_queries, len(distinct))
    if not take:
        return []
    rng = np.random.default_rng(seed)
    return [distinct[i] for i in sorted(rng.choice(len(distinct), take, replace=False))]


def _build_language(products, queries, clicks, synonyms, config: IndexConfig, version: Path, progress: bool):
    """tantivy index, lexicon (catalog, synonym and mined layers), evidence and the spelling
    vocabulary of ``version``; returns (lexicon, mined terms)."""
    with stage("building the keyword index", progress):
        build_lexical(products, version / "lexical", config.lexical_stemmer)
    lexicon = build_lexicon(products, synonyms)
    mined = mine_terms(products, clicks, config, known=lexicon.phrases)
    lexicon.add_mined(mined)
    atomic_write_json(version / LEXICON_FILE, lexicon.to_json())
    atomic_write_json(version / "evidence.json", {"terms": [t.to_dict() for t in mined]})
    save_vocabulary(version / SPELLING_FILE, build_vocabulary(
        (p.title for p in products), lexicon.phrases, queries, config.spell_min_query_count))
    return lexicon, mined


def _build_qid_table(store, vectors, products, lexicon, encode_queries, queries, qids, config: IndexConfig,
                     version: Path, progress: bool) -> tuple[QidTable, int]:
    """Every logged query answered under its own constraints (both channels) and, where those
    allow fewer than K products, its short-list fill's relaxed sets; saved with its query
    vectors (and as a collection on the Milvus backend); returns (table, its K). The answers
    come from ``store`` when it is FAISS, else from an exact FAISS copy of ``vectors``
    (``exact_store``)."""
    top_k = min(config.qid_top_k, len(products))
    query_vectors: list[np.ndarray] = []
    searched = store if isinstance(store, FaissStore) else exact_store(vectors, products)
    masks, lexical = ConstraintMasks.from_products(products), LexicalIndex.open(version / "lexical")
    answer = _constrained_answers(searched, masks, lexicon, encode_queries, top_k, lexical, record=query_vectors)
    table = QidTable.build(queries, qids, answer, batch_size=config.export_batch_size, progress=progress)
    query_matrix = np.concatenate(query_vectors) if query_vectors else np.zeros((0, store.dim), np.float32)
    if config.qid_fill_relax_order:  # the short lists' fill, searched offline
        table.fill = build_fill_lists(table.queries, table.qids, query_matrix, fill_searches(
            searched, masks, lexicon, top_k, config.qid_fill_relax_order, lexical), progress)
    table.save(version / "qid")
    save_query_vectors(version, query_vectors, store.dim)
    if query_vectors:
        write_backend_qid_table(store, table, query_matrix, config, version.name)
    return table, top_k


def _copy_model(model_dir, version: Path, retriever, sample: list[str], config: IndexConfig) -> dict | None:
    """The model copied into ``version/model`` (query.onnx exported per version); the ONNX report."""
    if model_dir is None:
        return None
    shutil.copytree(model_dir, version / "model", ignore=shutil.ignore_patterns("checkpoints", "query.onnx"))
    return _export_onnx(retriever, version / "model", sample, config) if retriever is not None else None


def _complete(version: Path) -> None:
    normalize_modes(version)  # tantivy writes some files 0600; a copied model may be 0600
    atomic_write_text(version / COMPLETE, "complete\n")
    (version / BUILDING).unlink(missing_ok=True)
    fsync_dir(version)


def click_rows(clicks: pa.Table) -> list[tuple[str, str, int]]:
    """(query, product id, count) rows of a work directory's click table."""
    counts = clicks.column("count").to_pylist() if "count" in clicks.column_names else [1] * clicks.num_rows
    return list(zip(clicks.column("query").to_pylist(), map(str, clicks.column("product_id").to_pylist()), counts))


def build_index(
    workdir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    config: IndexConfig | None = None,
    progress: bool = True,
) -> IndexReport | ShardReport:
    """Export vectors with the trained Retriever, build ANN + qid table + tantivy + lexicon,
    copy the model and product metadata in, and publish the version as ``out_dir/current``.

    Launched by ``torchrun`` the export is sharded over the ranks (module docstring)."""
    config = config or IndexConfig()
    started_here = not distributed.is_active()
    info = distributed.init_distributed(device=config.export_device)
    try:
        return _build_index(workdir, model_dir, out_dir, config, progress, info.device, Sharding(
            info.rank, info.world_size, distributed.barrier))
    finally:
        if started_here:
            distributed.cleanup()


def _build_index(workdir, model_dir, out_dir, config: IndexConfig, progress: bool, device,
                 sharding: Sharding) -> IndexReport | ShardReport:
    wd = Workdir.open(workdir)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise WorkdirError(f"{model_dir}: model directory not found; train one with `vlsearch train`")
    with stage(f"loading the model {model_dir}", progress):
        retriever = Retriever.load(model_dir, device=device)
    products = wd.products()
    try:
        features = wd.features()
    except WorkdirError:
        features = None  # the retriever runs its backbone on the image files instead
    if features is not None:  # serve only images that decoded at prepare time
        _drop_undecoded(products, features)

    def encode(start: int, stop: int) -> np.ndarray:
        rows = np.arange(start, stop)
        if features is None:
            return retriever.encode_products(products[start:stop])
        patches, has_image = features.product_images(rows, retriever.config.model.max_images)
        return retriever.encode_products(products[start:stop], patches=patches, has_image=has_image)

    clicks = wd.clicks()
    model_stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(model_dir.glob("*")) if p.is_file()]
    key = {"workdir": str(Path(workdir).resolve()), "manifest": wd.manifest.get("stages", {}),
           "model": str(model_dir.resolve()), "model_files": model_stamp}
    return build_index_from_parts(
        out_dir, products, encode, retriever.encode_queries,
        clicks.column("query").to_pylist(), clicks.column("qid").to_pylist(),
        config=config, model_dir=model_dir, export_key=json.loads(json.dumps(key, default=str)),
        seed=wd.config.data.seed, progress=progress and sharding.rank == 0, sharding=sharding,
        retriever=retriever, clicks=click_rows(clicks), synonyms=wd.phrase_tables(),
        splits=wd.product_table().column("split").to_pylist(), workdir=str(Path(workdir).resolve()),
    )


def _drop_undecoded(products: list, features) -> None:
    """Keep only the image paths whose images decoded at prepare time (the first stays first)."""
    decoded = features.meta.has_image
    for row, product in enumerate(products):
        rows = features.image_rows(row)
        if len(rows) != max(len(product.image_paths), 1):  # (not the cache's layout: first image only)
            rows = rows[:1]
        product.image_paths = [path for path, r in zip(product.image_paths, rows) if decoded[r]]
