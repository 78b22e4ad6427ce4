"""Live catalog updates: apply a delta (new, changed and deleted products) to the published
index without a rebuild, as a new version published like a build.

``update_index(index_dir, products, delete, encoder)``:

1. Classify against the current version: a delta product whose id is unknown is *new*; one
   whose title, brand, category, attributes or image paths differ is *changed*; the rest are
   *unchanged* and cost nothing. Delete ids that are not in the index are reported, not fatal.
2. Encode only new and changed products (``encoder.encode_products``, images through the
   model's backbone).
3. Write a new version next to the current one (``builder`` versions: ``BUILDING`` marker,
   ``COMPLETE`` last, atomic ``current`` swap): rows never move — a changed product keeps its
   row, a new one gets the next row, a deleted one becomes a tombstone (``deleted`` column of
   ``products.parquet``, zero vector, absent from the ANN and tantivy indexes).
   ``vectors.npy`` is copied with the rows replaced; the FAISS index gets ``remove`` and
   ``upsert`` by row id (IVF keeps its centroids); the Milvus backend gets a new collection
   for the new version filled with its live rows (row numbers kept; the qid-table collection
   too; the server fills the product collection while this process writes the text parts and
   the qid table), published by the alias switch before the ``current`` swap; tantivy deletes and re-adds the rows' documents in
   one commit; the lexicon's catalog layer is rebuilt from the live products (the synonym and
   mined layers are kept until the next build, which mines the click log again); the model is hard-linked.
4. qid table: each entry touched by the update (it lists a changed or deleted product, or a
   new or changed product now beats its last stored score under its constraints) is patched
   in place where that is exact, else answered again by a search from its stored query
   vector (``query_vectors.npy``, no encoding); see ``update_qid.update_qid_table``. Entries
   whose query the new lexicon understands differently are answered again; the rest are
   copied. On Milvus the searches run on a flat FAISS copy of the new vectors (exact).
   Stored short-list fill lists are copied where the delta cannot change them, else dropped
   (those fills are searched live until the next build; ``update_qid._kept_fill``).
5. Drift: the share of the catalog changed since the last full build and (IVF) the ratio of
   the mean distance to the nearest centroid of every vector written since the build over
   the build's own (once enough were written); either past its ``IndexConfig`` threshold
   makes the report recommend a rebuild.

An update killed at any point leaves ``current`` on the old version (every product before
its change); the half-written version is removed by the next update or build, and running
the update again applies it (already applied parts count as unchanged). Updates of one index
are serialised by a lock file; a build published while an update ran makes the update fail
rather than publish over it. Searches keep running on the old version until the swap.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

from vlsearch.catalog import Product
from vlsearch.config import IndexConfig
from vlsearch.errors import InputError, Problem, WorkdirError
from vlsearch.index.ann import AnnIndex
from vlsearch.index.builder import (
    BUILDING,
    COMPLETE,
    CURRENT,
    QUERY_VECTORS,
    VERSIONS,
    _new_version_dir,
    current_version,
    prune_versions,
    publish,
)
from vlsearch.index.image_reuse import CachedImages, encode_products
from vlsearch.index.lexical import update_lexical
from vlsearch.index.milvus import MilvusStore
from vlsearch.index.qid_table import QidTable
from vlsearch.index.spelling import SPELLING_FILE, build_vocabulary, save_vocabulary
from vlsearch.index.store import (
    VECTORS_FILE,
    FaissStore,
    open_store,
    product_attributes,
    product_texts,
    publish_store,
    sweep_stores,
    write_backend_qid_table,
)
from vlsearch.index.understanding import LEXICON_FILE, Lexicon, build_lexicon
from vlsearch.index.update_qid import qid_store, update_qid_table
from vlsearch.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    normalize_modes,
    read_json,
)
from vlsearch.model import Retriever
from vlsearch.product_table import product_from_columns, products_to_table

LOCK_FILE = ".update.lock"
COPY_CHUNK_ROWS = 65536  # rows copied per step from the old vectors (bounds memory)


@dataclass
class UpdateReport:
    """What ``update_index`` did (``version`` is "" when nothing had to change)."""

    base_version: str
    version: str
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    problems: list[str] = field(default_factory=list)  # file:line: message (rows skipped, ids unknown)
    live_products: int = 0
    rows: int = 0  # product-table rows including tombstones
    qid_entries: int = 0
    qid_refreshed: int = 0  # entries answered again by a search
    qid_patched: int = 0  # entries brought up to date in place (exact, no search)
    qid_dropped: int = 0  # entries invalidated (past IndexConfig.update_qid_research_limit)
    qid_fill_dropped: int = 0  # stored fill steps the delta may change, dropped (their fill is searched live)
    qid_lexical_refreshed: int = 0  # BM25 searches made for stored lexical lists (the rest copied or patched)
    images_reused: int = 0  # encoded products whose image features came from the feature cache
    drift: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [
            (f"index version    {self.version} (published as current, from {self.base_version})"
             if self.version else f"index version    {self.base_version} unchanged (nothing to apply)"),
            (f"products         +{self.added} new, {self.changed} changed, -{self.deleted} deleted, "
             f"{self.unchanged} unchanged; {self.live_products} live in {self.rows} rows; "
             f"{self.images_reused} images from the feature cache"),
            (f"qid table        {self.qid_entries} entries: {self.qid_refreshed} answered again, "
             f"{self.qid_patched} patched in place, {self.qid_dropped} invalidated, "
             f"{self.qid_fill_dropped} fill lists dropped; {self.qid_lexical_refreshed} BM25 searches"),
        ]
        if self.drift:
            d = self.drift
            ratio = "n/a" if d["residual_ratio"] is None else f"{d['residual_ratio']:.3f}"
            lines.append(f"drift            {d['changed_since_build']:.1%} of the catalog changed since the "
                         f"build; IVF residual ratio {ratio}"
                         + (f" -> rebuild recommended ({d['reason']})" if d["rebuild"] else ""))
        lines.append("seconds          " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()))
        lines += [f"problem          {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"                 ... and {len(self.problems) - 20} more problems")
        return "\n".join(lines)


# --- the index as it is ---------------------------------------------------------------------


def _same(a: Product, b: Product) -> bool:
    return (a.title == b.title and a.brand == b.brand and a.category == b.category
            and (a.attributes or {}) == (b.attributes or {})
            and list(a.image_paths) == list(b.image_paths))  # every image, in order


@contextmanager
def _update_lock(index_dir: Path):
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _link_files(src: Path, dst: Path) -> None:
    """``dst`` as a tree of hard links to ``src``'s files (copies where links cannot be made);
    the files are never written in place, so the versions can share them."""
    for root, _, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(root) / name, target / name)
            except OSError:
                shutil.copy2(Path(root) / name, target / name)


# --- the update -----------------------------------------------------------------------------


def update_index(
    index_dir: str | Path,
    products: Sequence[Product] = (),
    delete: Iterable[str] = (),
    encoder=None,
    config: IndexConfig | None = None,
    problems: Sequence[Problem | str] = (),
    progress: bool = False,
    workdir: str | Path | None = None,
) -> UpdateReport:
    """Upsert ``products`` and delete the ids in ``delete``; publish the result as a new
    version (module docstring). ``encoder`` has ``encode_products(products)`` and
    ``encode_queries(texts)`` (a Retriever; default: the model in the index version).
    ``problems`` (e.g. the delta file's skipped rows) are carried into the report.
    ``workdir``: the work directory whose image feature cache serves unchanged images
    (``index.image_reuse``; default: the one the index was built from, when it is there)."""
    index_dir = Path(index_dir)
    started = time.perf_counter()
    with _update_lock(index_dir):
        base = current_version(index_dir)
        link_before = os.readlink(index_dir / CURRENT) if (index_dir / CURRENT).is_symlink() else None
        report, new_store = _apply(index_dir, base, list(products), list(delete), encoder, config,
                                   [str(p) for p in problems], progress, workdir)
        if report.version:
            link_now = os.readlink(index_dir / CURRENT) if (index_dir / CURRENT).is_symlink() else None
            if link_now != link_before:
                if new_store is not None:
                    new_store.drop()
                shutil.rmtree(Path(report.version), ignore_errors=True)
                raise WorkdirError(f"{index_dir}: another version was published during the update; "
                                   "nothing applied, run the update again")
            if new_store is not None:
                publish_store(new_store)  # Milvus: the alias first, as a build does
            publish(index_dir, report.version)
            report.version = Path(report.version).name
            prune_versions(index_dir, (config or IndexConfig()).keep_versions)
            if new_store is not None:  # collections of pruned versions and of killed updates
                sweep_stores(index_dir, new_store.config, {p.name for p in (index_dir / VERSIONS).iterdir()})
        report.seconds["total"] = time.perf_counter() - started
        return report


def _apply(index_dir: Path, base: Path, delta: list[Product], delete: list[str], encoder,
           config: IndexConfig | None, problems: list[str], progress: bool,
           workdir: str | Path | None) -> tuple[UpdateReport, MilvusStore | None]:
    lap = _Laps()
    manifest = read_json(base / "manifest.json")
    config = config or IndexConfig(**{k: v for k, v in manifest.get("config", {}).items()
                                      if k in IndexConfig.__dataclass_fields__})
    table = pq.read_table(base / "products.parquet").to_pydict()
    n_old = len(table["id"])
    dead = list(table.get("deleted") or [False] * n_old)

    # 1. classify
    report = UpdateReport(base_version=base.name, version="", problems=problems)
    changed, added, del_rows = _classify(table, dead, delta, delete, report)
    report.added, report.changed, report.deleted = len(added), len(changed), len(del_rows)
    report.live_products, report.rows = n_old - sum(dead), n_old
    report.qid_entries = len(QidTable.load(base / "qid"))
    lap("classify")
    if not (added or changed or del_rows):
        report.seconds = lap.seconds
        return report, None

    store, encoder = _open_for_update(base, manifest, encoder, replaces=bool(changed or del_rows))
    lap("load")

    version = _new_version_dir(index_dir)
    new_store = filling = None
    try:
        # 2. encode only what is new or changed
        upsert_rows = np.asarray(sorted(changed) + list(range(n_old, n_old + len(added))), np.int64)
        upsert_products = [changed[r] for r in sorted(changed)] + added
        vecs, report.images_reused = _encode(encoder, upsert_products, config.export_batch_size, progress,
                                             store.dim, CachedImages.open(workdir or manifest.get("workdir")))
        lap("encode")

        # 3. vectors, ANN, tantivy, products, lexicon, model
        n_new = n_old + len(added)
        all_products, deleted = _merged_catalog(table, dead, changed, added, del_rows)
        _write_vectors(base, version, n_new, upsert_rows, vecs, del_rows)
        if isinstance(store, FaissStore):
            _update_faiss(store, version, upsert_rows, vecs, upsert_products, del_rows)
        else:  # a new collection for the new version, filled from its vectors (nothing re-encoded)
            filling = _CollectionFill(store, version, all_products, deleted)
        lap("ann")

        lexicon, live = _write_text_parts(base, version, table, all_products, deleted, upsert_rows,
                                          upsert_products, del_rows)
        lap("lexical")

        # 4. qid table
        qid_search_store = qid_store(store, version, all_products, deleted)
        lap("qid_store")
        refreshed, patched, dropped, report.qid_fill_dropped, report.qid_lexical_refreshed = update_qid_table(
            base, version, qid_search_store, lexicon, encoder, set(del_rows),
            upsert_rows, vecs, upsert_products, {r: product_from_columns(table, r) for r in changed},
            config.export_batch_size, config.update_qid_research_limit, config.qid_fill_relax_order, lap)
        if filling is not None:
            store = new_store = filling.result()
            lap("collection_wait")
            if manifest.get("milvus", {}).get("qid_collection"):
                write_backend_qid_table(new_store, QidTable.load(version / "qid"),
                                        np.load(version / QUERY_VECTORS), new_store.config, version.name)
                lap("qid_collection")

        # 5. drift and the manifest
        report.drift = _drift(getattr(store, "ann", None), np.load(version / VECTORS_FILE, mmap_mode="r"),
                              manifest, config, len(upsert_rows) + len(del_rows), vecs, deleted)
        report.live_products, report.rows = len(live), n_new
        report.qid_refreshed, report.qid_patched, report.qid_dropped = refreshed, patched, dropped
        _finish_version(version, base, manifest, store, report, lap.seconds)
        lap("metadata")
    except BaseException:
        if new_store is None and filling is not None:
            new_store = filling.settle()
        if new_store is not None:
            new_store.drop()
        shutil.rmtree(version, ignore_errors=True)
        raise
    report.version = str(version)
    report.seconds = lap.seconds
    return report, new_store


def _open_for_update(base: Path, manifest: dict, encoder, replaces: bool):
    """The version's vector store and the encoder (the version's own model unless given)."""
    store = open_store(base, manifest)
    if isinstance(store, FaissStore) and store.kind == "hnsw" and replaces:
        raise InputError(f"{base}: an HNSW index cannot replace or remove products (FAISS HNSW has no "
                         "remove_ids); rebuild with `vlsearch index`, or build kind ivf or flat")
    if encoder is None:
        if not (base / "model").is_dir():
            raise WorkdirError(f"{base}: index version has no model/ to encode products with")
        encoder = Retriever.load(base / "model")
    return store, encoder


def _merged_catalog(table: dict, dead: list[bool], changed: dict[int, Product], added: list[Product],
                    del_rows: list[int]) -> tuple[list[Product], list[bool]]:
    """Every row's product after the delta (rows never move; added ones at the end) and the
    tombstone flags."""
    all_products = [product_from_columns(table, r) for r in range(len(table["id"]))] + added
    for row, p in changed.items():
        all_products[row] = p
    deleted = dead + [False] * len(added)
    for row in del_rows:
        deleted[row] = True
    return all_products, deleted


def _update_faiss(store: FaissStore, version: Path, upsert_rows: np.ndarray, vecs: np.ndarray,
                  upsert_products: list[Product], del_rows: list[int]) -> None:
    """FAISS in place, by row id, then saved into the new version (served from the saved copy)."""
    store.delete(np.asarray(del_rows, np.int64))
    store.upsert(upsert_rows, vecs, product_attributes(upsert_products))
    store.save(version)
    store.vectors = np.load(version / VECTORS_FILE, mmap_mode="r")  # the saved copy, not RAM


class _Laps:
    """Seconds per named stage, each lap ending where the previous one did."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._clock
        self._clock = now


def _write_text_parts(base: Path, version: Path, table: dict, all_products: list[Product], deleted: list[bool],
                      upsert_rows: np.ndarray, upsert_products: list[Product], del_rows: list[int]):
    """tantivy, products.parquet, lexicon, spelling vocabulary and the model link of the new
    version; returns (lexicon, live products)."""
    shutil.copytree(base / "lexical", version / "lexical")
    update_lexical(version / "lexical", del_rows, dict(zip(upsert_rows.tolist(), upsert_products)))
    # the work directory's train/heldout split (for `vlsearch eval`) carries over; added rows have none
    n_added = len(all_products) - len(table["id"])
    splits = table["split"] + [None] * n_added if "split" in table else None
    atomic_write(version / "products.parquet",
                 lambda tmp: pq.write_table(products_to_table(all_products, deleted=deleted, splits=splits), tmp))
    live = [p for p, d in zip(all_products, deleted) if not d]
    lexicon = Lexicon.from_json(read_json(base / LEXICON_FILE)).with_catalog(build_lexicon(live))
    atomic_write_json(version / LEXICON_FILE, lexicon.to_json())
    save_vocabulary(version / SPELLING_FILE, build_vocabulary((p.title for p in live), lexicon.phrases))
    if (base / "model").is_dir():
        _link_files(base / "model", version / "model")
    return lexicon, live


def _finish_version(version: Path, base: Path, manifest: dict, store, report: UpdateReport,
                    seconds: dict[str, float]) -> None:
    """The new version's manifest (update history, drift), permissions and completion marker."""
    drift = report.drift
    history = manifest.get("updates", [])[-99:] + [{
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "base": base.name,
        "added": report.added, "changed": report.changed, "deleted": report.deleted,
        "qid_refreshed": report.qid_refreshed, "qid_patched": report.qid_patched,
        "qid_dropped": report.qid_dropped, "qid_fill_dropped": report.qid_fill_dropped,
        "qid_lexical_refreshed": report.qid_lexical_refreshed,
        "images_reused": report.images_reused,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }]
    atomic_write_json(version / "manifest.json", {
        **manifest, "products": report.live_products, "rows": report.rows,
        "ann": {**manifest.get("ann", {}), "n": store.count()},
        **store.manifest_entry(),
        "updates": history, "drift": drift, "built_products": drift["built_products"],
        "changed_since_build": drift["changed_rows_since_build"],
        "ivf_build_residual": drift.get("build_residual"),
        "updated_residual_sum": drift["updated_residual_sum"],
        "updated_residual_count": drift["updated_residual_count"],
    })
    normalize_modes(version)  # artifact permissions, as a build's (tantivy writes 0600)
    atomic_write_text(version / COMPLETE, "complete\n")
    (version / BUILDING).unlink(missing_ok=True)
    fsync_dir(version)


def _classify(table: dict, dead: list[bool], delta: list[Product], delete: list[str],
              report: UpdateReport) -> tuple[dict[int, Product], list[Product], list[int]]:
    """(changed products by row, new products, rows to delete) of the delta against the
    version's product table; repeats, conflicts and unknown delete ids go to the report."""
    row_of = {pid: i for i, pid in enumerate(table["id"]) if not dead[i]}
    tombstoned = {pid for i, pid in enumerate(table["id"]) if dead[i]}
    delete_set = set(delete)
    changed: dict[int, Product] = {}
    added: list[Product] = []
    seen: set[str] = set()
    for p in delta:
        if p.id in seen:
            report.problems.append(f"product {p.id!r}: given twice in the update; the first is applied")
            continue
        seen.add(p.id)
        if p.id in delete_set:
            report.problems.append(f"product {p.id!r}: both updated and deleted; deleted")
            continue
        row = row_of.get(p.id)
        if row is None:
            added.append(p)
        elif _same(p, product_from_columns(table, row)):
            report.unchanged += 1
        else:
            changed[row] = p
    del_rows = []
    for pid in dict.fromkeys(delete):
        row = row_of.get(pid)
        if row is not None:
            del_rows.append(row)
        else:
            report.problems.append(f"delete {pid!r}: " + ("already deleted" if pid in tombstoned
                                                           else "no such product in the index; ignored"))
    return changed, added, del_rows


def _write_vectors(base: Path, version: Path, n_new: int, upsert_rows: np.ndarray, vecs: np.ndarray,
                   del_rows: list[int]) -> None:
    """The new version's ``vectors.npy``: the old rows, ``upsert_rows`` replaced by ``vecs``,
    deleted rows zeroed (copied in chunks: memory stays bounded)."""
    old = np.load(base / VECTORS_FILE, mmap_mode="r")
    out = np.lib.format.open_memmap(version / VECTORS_FILE, mode="w+", dtype=old.dtype,
                                    shape=(n_new, old.shape[1]))
    for lo in range(0, len(old), COPY_CHUNK_ROWS):
        hi = min(len(old), lo + COPY_CHUNK_ROWS)
        out[lo:hi] = old[lo:hi]
    if len(upsert_rows):
        out[upsert_rows] = vecs
    out[np.asarray(del_rows, np.int64)] = 0
    out.flush()
    del out


def _new_collection(store: MilvusStore, version: Path, products: list[Product], deleted: list[bool]) -> MilvusStore:
    """The Milvus backend's next version: a collection of the live rows (row numbers kept)
    filled from the version's ``vectors.npy`` and product table; the old collection serves
    until the alias switch."""
    vectors = np.load(version / VECTORS_FILE, mmap_mode="r")
    rows = np.flatnonzero(~np.asarray(deleted, bool))
    live = [products[r] for r in rows.tolist()]
    return MilvusStore.build(np.asarray(vectors[rows], np.float32), product_attributes(live), store.config,
                             version.name, product_ids=[str(p.id) for p in live],
                             texts=product_texts(live) if store.has_lexical else None, rows=rows,
                             n=len(products))


class _CollectionFill:
    """``_new_collection`` in a thread: the Milvus server fills the new collection while this
    process writes the text parts and the qid table (which search a local copy, not Milvus)."""

    def __init__(self, store: MilvusStore, version: Path, products: list[Product], deleted: list[bool]):
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus-fill")
        self._future = pool.submit(_new_collection, store, version, products, deleted)
        pool.shutdown(wait=False)

    def result(self) -> MilvusStore:
        return self._future.result()

    def settle(self) -> MilvusStore | None:
        """After a failure elsewhere: the collection once its fill has ended (None if it failed)."""
        try:
            return self._future.result()
        except BaseException:  # noqa: BLE001 - the update is failing already; its error is raised
            return None


def _encode(encoder, products: list[Product], batch_size: int, progress: bool, dim: int,
            cached: CachedImages | None) -> tuple[np.ndarray, int]:
    """Vectors of ``products`` (unchanged images from ``cached``); (vectors, images reused)."""
    parts, reused = [], 0
    for lo in tqdm(range(0, len(products), batch_size), desc="encode updates", unit="batch",
                   disable=not progress):
        vectors, hits = encode_products(encoder, products[lo:lo + batch_size], cached)
        parts.append(vectors)
        reused += hits
    return (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)), reused


def _drift(ann: AnnIndex | None, vectors, manifest: dict, config: IndexConfig, touched: int,
           vecs: np.ndarray, deleted: list[bool]) -> dict:
    """How far the index has moved from its full build (module docstring, step 5)."""
    built = int(manifest.get("built_products") or manifest.get("products") or 1)
    since = int(manifest.get("changed_since_build", 0)) + touched
    share = since / max(1, built)
    build_residual = manifest.get("ivf_build_residual")
    ratio = None
    total, count = float(manifest.get("updated_residual_sum", 0.0)), int(manifest.get("updated_residual_count", 0))
    if ann is not None and ann.kind == "ivf":
        if build_residual is None:  # first update: measure the build's vectors (a sample)
            live = np.flatnonzero(~np.asarray(deleted[:len(vectors)], bool))
            rng = np.random.default_rng(0)
            take = np.sort(rng.choice(live, min(len(live), config.update_residual_sample), replace=False))
            build_residual = ann.coarse_residual(np.asarray(vectors[take], np.float32))
        if len(vecs):  # cumulative over every vector written since the build
            total += ann.coarse_residual(vecs) * len(vecs)
            count += len(vecs)
        if build_residual and count >= config.update_residual_min_vectors:
            ratio = total / count / build_residual
    reasons = []
    if share >= config.update_rebuild_changed_fraction:
        reasons.append(f"{share:.0%} of the catalog changed since the build "
                       f">= {config.update_rebuild_changed_fraction:.0%}")
    if ratio is not None and ratio >= config.update_rebuild_residual_ratio:
        reasons.append(f"updated vectors lie {ratio:.2f}x farther from the IVF centroids than the "
                       f"build's (>= {config.update_rebuild_residual_ratio})")
    return {"built_products": built, "changed_rows_since_build": since, "changed_since_build": share,
            "build_residual": build_residual, "residual_ratio": ratio, "rebuild": bool(reasons),
            "updated_residual_sum": total, "updated_residual_count": count,
            "reason": "; ".join(reasons)}


