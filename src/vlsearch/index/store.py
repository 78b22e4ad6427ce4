"""The vector-store seam: one interface over the product vectors, their scalar attributes
and their versions, with two backends.

``FaissStore`` (default, fastest on one machine): the FAISS index of ``index/ann.py`` plus
the exported vectors and the scalar attribute columns, all in the version directory;
constraints become a row mask (numpy over the attribute columns) passed to FAISS as an ID
selector (``ann.constrained_search``); versions are the builder's symlink swap.
``MilvusStore`` (``index/milvus.py``): a Milvus collection per version, constraints a
boolean expression inside the search, versions an alias swap.

Everything above ``index/`` (engine, qid-table builder, evaluation, benchmarks) talks to
``VectorStore`` only: rows are product-table rows of the version, constraints are
``{field: [normalised values]}`` (OR within a field, AND across fields), and search
results are ``(scores [nq, k], rows [nq, k])`` padded with ``-1`` rows.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlsearch.config import IndexConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.index.ann import AnnIndex, AnnReport, FilterPolicy, build_ann, constrained_search
from vlsearch.index.lexical import FILTER_FIELDS, LexicalIndex, product_value
from vlsearch.index.masks import ConstraintMasks
from vlsearch.index.qid_table import QidTable
from vlsearch.io import atomic_write, load_part, read_json

BACKENDS = ("faiss", "milvus")
ANN_FILE, VECTORS_FILE, ATTRIBUTES_FILE = "ann.faiss", "vectors.npy", "attributes.parquet"
DELETED = "deleted"  # attributes.parquet column: rows removed by a live update (index.update)
DEFAULT_POLICY = FilterPolicy()  # how a FAISS constrained search runs unless the engine says otherwise
PRODUCTS_FILE = "products.parquet"  # the builder's product metadata (brand, category, attributes JSON)

Constraints = Mapping[str, Sequence[str]]


class StoreUnavailable(WorkdirError):
    """The store's server cannot be reached (or refuses the credentials): the message names
    the URI. The CLI prints it as one line; the HTTP service answers 503 and keeps running."""


def product_attributes(products: Sequence) -> dict[str, list[str | None]]:
    """The scalar attribute columns a store filters on: field -> normalised value per row."""
    return {f: [product_value(p, f) for p in products] for f in FILTER_FIELDS}


def product_texts(products: Sequence) -> list[str]:
    """What a store's own lexical channel indexes per product: title + attribute values."""
    return [" ".join([p.title or ""] + [v for f in FILTER_FIELDS if (v := product_value(p, f))])
            for p in products]


def attributes_from_products_table(path: Path) -> dict[str, list[str | None]]:
    """Attribute columns recomputed from a version's ``products.parquet``."""
    try:
        table = pq.read_table(path, columns=["brand", "category", "attributes"]).to_pydict()
    except (OSError, pa.ArrowException) as exc:
        raise WorkdirError(f"{path}: cannot read product metadata ({exc})") from None
    rows = [SimpleNamespace(brand=b, category=c, attributes=json.loads(a or "{}"))
            for b, c, a in zip(table["brand"], table["category"], table["attributes"])]
    return product_attributes(rows)


def masks_from_columns(columns: Mapping[str, Sequence[str | None]], n: int) -> ConstraintMasks:
    """Packed bitmaps per (field, value) from attribute columns (values already canonical)."""
    bitmaps: dict[str, dict[str, np.ndarray]] = {}
    for field, col in columns.items():
        values = np.asarray([v or "" for v in col], dtype=object)
        bitmaps[field] = {v: np.packbits(values == v, bitorder="little") for v in set(values.tolist()) if v}
    return ConstraintMasks(n, bitmaps)


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (the ground truth parity and recall figures are measured on)."""
    store = FaissStore.build(vectors, {}, IndexConfig(kind="flat"))
    return store.search(queries, k)


class VectorStore(abc.ABC):
    """Product vectors + scalar attributes of one index version (see the module docstring)."""

    backend: str = ""

    # --- shape --------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def dim(self) -> int: ...

    @property
    @abc.abstractmethod
    def kind(self) -> str:
        """The ANN kind: flat | ivf | hnsw."""

    @abc.abstractmethod
    def count(self, constraints: Constraints | None = None) -> int:
        """Live products (those satisfying ``constraints`` when given)."""

    # --- search -------------------------------------------------------------------------
    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, constraints: Constraints | None = None,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product of each query among the rows satisfying ``constraints``
        (``mask``: the same constraints already evaluated into a row mask, if the caller has
        it). Returns (scores [nq, k], rows [nq, k]), -1 rows padded."""

    def constrained_search(self, query: np.ndarray, k: int, constraints: Constraints | None,
                           mask: np.ndarray | None, allowed: int | None = None,
                           ) -> tuple[str, np.ndarray, np.ndarray]:
        """One query as the engine asks it: (path, scores, rows), padding removed; ``path``
        names how the filter ran (ann | ann+filter | ...); ``allowed``: the mask's count."""
        scores, rows = self.search(np.asarray(query, np.float32).reshape(1, -1), k, constraints, mask)
        keep = rows[0] >= 0
        return ("ann+filter" if constraints else "ann"), scores[0][keep], rows[0][keep]

    def constrained_search_many(self, queries: np.ndarray, k: int, constraints: Constraints | None,
                                mask: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """``constrained_search`` for several queries under one constraint set (offline
        work such as the qid table): [(scores, rows)] per query, the same answers."""
        allowed = int(mask.sum()) if mask is not None else None
        return [self.constrained_search(q, k, constraints, mask, allowed)[1:] for q in np.atleast_2d(queries)]

    @abc.abstractmethod
    def mask(self, constraints: Constraints) -> np.ndarray:
        """Boolean mask over rows of the live products satisfying every constraint."""

    # --- changes ------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert(self, rows: Sequence[int], vectors: np.ndarray,
               attributes: Mapping[str, Sequence[str | None]]) -> None:
        """Insert or replace products at ``rows`` (vectors [m, d], attribute columns [m])."""

    @abc.abstractmethod
    def delete(self, rows: Sequence[int]) -> None:
        """Remove products; they never come back from a search."""

    # --- versions -----------------------------------------------------------------------
    def manifest_entry(self) -> dict:
        """What the version's manifest records to reopen this store (never a secret)."""
        return {}

    def publish(self) -> None:
        """Make this version the one readers get (FAISS: the builder's symlink does it)."""

    def published_version(self) -> str | None:
        """The version directory name the backend publishes now (None: the backend has no
        pointer of its own; the ``current`` symlink is it). StoreUnavailable when unreachable."""
        return None

    def drop(self) -> None:
        """Remove what this version holds outside its directory (a failed build's)."""

    # --- measuring ----------------------------------------------------------------------
    @abc.abstractmethod
    def size_bytes(self) -> int: ...

    @abc.abstractmethod
    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Stored vectors of ``rows`` (float32 [m, d])."""


def _check_batch(vectors: np.ndarray, attributes: Mapping[str, Sequence], rows: Sequence[int] | None = None):
    x = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
    for f, col in attributes.items():
        if f not in FILTER_FIELDS:
            raise InputError(f"attribute {f!r}: expected one of {list(FILTER_FIELDS)}")
        if len(col) != len(x):
            raise InputError(f"attribute {f!r}: {len(col)} values for {len(x)} vectors")
    if rows is not None and len(rows) != len(x):
        raise InputError(f"rows: {len(rows)} row numbers for {len(x)} vectors")
    return x


class FaissStore(VectorStore):
    """FAISS over in-process vectors; constraints are packed bitmaps per (field, value)."""

    backend = "faiss"

    def __init__(self, ann: AnnIndex, vectors: np.ndarray, attributes: Mapping[str, Sequence[str | None]],
                 policy: FilterPolicy = DEFAULT_POLICY, deleted: Sequence[bool] | None = None):
        self.ann = ann
        self.vectors = vectors
        self.policy = policy
        n = len(vectors)
        self.columns: dict[str, list[str | None]] = {
            f: list(attributes.get(f) or [None] * n) for f in FILTER_FIELDS}
        self.masks = masks_from_columns(self.columns, n)
        # rows removed by a live update (gone from the ANN too); saved with the attributes
        self.deleted = np.zeros(n, dtype=bool) if deleted is None else np.array(deleted, dtype=bool)

    # --- building, saving, loading ----------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, attributes: Mapping[str, Sequence[str | None]],
              config: IndexConfig, seed: int = 0, policy: FilterPolicy = DEFAULT_POLICY) -> FaissStore:
        x = _check_batch(vectors, attributes)
        return cls(AnnIndex.build(x, config, seed), x, attributes, policy)

    @classmethod
    def build_measured(cls, vectors: np.ndarray, attributes, config: IndexConfig,
                       recall_queries: np.ndarray | None = None, seed: int = 0) -> tuple[FaissStore, AnnReport]:
        """Build and report recall@100 against exact on a query sample, size and time."""
        x = _check_batch(vectors, attributes)
        ann, report = build_ann(x, config, recall_queries, seed)
        return cls(ann, x, attributes), report

    def save(self, version_dir: str | Path) -> None:
        """``ann.faiss`` and ``attributes.parquet`` (``vectors.npy`` is the builder's)."""
        version_dir = Path(version_dir)
        self.ann.save(version_dir / ANN_FILE)
        table = pa.table({**{f: pa.array(self.columns[f], pa.string()) for f in FILTER_FIELDS},
                          DELETED: pa.array(self.deleted.tolist(), pa.bool_())})
        atomic_write(version_dir / ATTRIBUTES_FILE, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def open(cls, version_dir: str | Path, config: IndexConfig, policy: FilterPolicy = DEFAULT_POLICY) -> FaissStore:
        """Load a saved version (one built before ``attributes.parquet`` existed gets its
        attribute columns from ``products.parquet``)."""
        version_dir = Path(version_dir)
        ann = AnnIndex.load(version_dir / ANN_FILE, config)
        try:
            vectors = np.load(version_dir / VECTORS_FILE, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise WorkdirError(f"{version_dir / VECTORS_FILE}: cannot read vectors ({exc})") from None
        if (version_dir / ATTRIBUTES_FILE).is_file():
            attributes = load_part(version_dir / ATTRIBUTES_FILE, "attribute columns",
                                   lambda p: pq.read_table(p).to_pydict())
        else:
            attributes = load_part(version_dir / PRODUCTS_FILE, "product table",
                                   attributes_from_products_table)
        deleted = np.asarray(attributes.pop(DELETED, None) or [False] * len(vectors), dtype=bool)
        if not (ann.ntotal == int((~deleted).sum()) and len(vectors) == len(deleted)
                == len(next(iter(attributes.values()), [None] * len(vectors)))):
            raise WorkdirError(f"{version_dir}: ANN, vectors and attributes disagree on the number of products")
        return cls(ann, vectors, attributes, policy, deleted)

    # --- VectorStore ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.ann.dim

    @property
    def kind(self) -> str:
        return self.ann.kind

    @property
    def n(self) -> int:
        """Rows (deleted ones included): the length of every mask."""
        return len(self.deleted)

    def count(self, constraints: Constraints | None = None) -> int:
        return int(self.mask(constraints or {}).sum())

    def mask(self, constraints: Constraints) -> np.ndarray:
        return self.masks.mask(constraints) & ~self.deleted

    def _effective_mask(self, constraints, mask) -> np.ndarray | None:
        if mask is None and constraints:
            mask = self.mask(constraints)
        if mask is not None and self.deleted.any():  # deleted rows are out of the ANN already
            mask = mask & ~self.deleted
        return mask

    def search(self, queries, k, constraints=None, mask=None):
        mask = self._effective_mask(constraints, mask)
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if mask is None:
            return self.ann.search(q, k)
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, vec in enumerate(q):
            _, s, r = constrained_search(self.ann, self.vectors, vec, k, mask, self.policy)
            scores[i, :len(r)], rows[i, :len(r)] = s, r
        return scores, rows

    def constrained_search(self, query, k, constraints, mask, allowed=None):
        effective = self._effective_mask(constraints, mask)
        if effective is not mask:
            allowed = None  # the store narrowed the caller's mask: count again
        return constrained_search(self.ann, self.vectors, query, k, effective, self.policy, allowed)

    def vectors_of(self, rows):
        return np.asarray(self.vectors[np.asarray(rows)], dtype=np.float32)

    def size_bytes(self) -> int:
        return self.ann.size_bytes()

    # --- changes --------------------------------------------------------------------------
    def upsert(self, rows, vectors, attributes) -> None:
        """Append rows ``n, n+1, ...`` on every kind; replace existing rows on IVF and Flat
        (``AnnIndex.upsert``: ids are rows; HNSW can only append)."""
        x = _check_batch(vectors, attributes, rows)
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        n = self.n
        old, new = rows[rows < n], rows[rows >= n]
        if len(new) and not np.array_equal(np.sort(new), np.arange(n, n + len(new))):
            raise InputError(f"rows: new products must take rows {n}..{n + len(new) - 1}")
        if len(old) and self.kind == "hnsw":
            raise InputError("FAISS hnsw index: cannot replace rows in place; rebuild the index "
                             "(or use kind = \"ivf\" or \"flat\", or the milvus backend)")
        order = np.argsort(rows, kind="stable")
        rows, x = rows[order], x[order]
        attributes = {f: [list(col)[i] for i in order] for f, col in attributes.items()}
        self.ann.upsert(rows, x)
        grown = np.zeros((max(n, int(rows.max()) + 1), self.dim), np.float32)
        grown[:n] = self.vectors
        grown[rows] = x
        self.vectors = grown
        self.deleted = np.concatenate([self.deleted, np.zeros(len(grown) - n, bool)])
        self.deleted[rows] = False
        for f in FILTER_FIELDS:
            col = self.columns[f] + [None] * (len(grown) - n)
            for r, v in zip(rows.tolist(), attributes.get(f) or [None] * len(rows)):
                col[r] = v
            self.columns[f] = col
        self.masks = masks_from_columns(self.columns, len(grown))

    def delete(self, rows) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise InputError(f"rows: expected row numbers in 0..{self.n - 1}")
        self.ann.remove(rows[~self.deleted[rows]])
        self.deleted[rows] = True


def _index_config(manifest: Mapping) -> IndexConfig:
    return IndexConfig(**{k: v for k, v in manifest.get("config", {}).items()
                          if k in IndexConfig.__dataclass_fields__})


def open_qid_table(version_dir: str | Path, manifest: Mapping):
    """The version's qid table: the Milvus collection when the build wrote one, else the
    memory-mapped files in ``qid/``. Both answer ``lookup(qid)``, ``top_k`` and ``len``."""
    if manifest.get("milvus", {}).get("qid_collection"):
        # import cycle: the milvus modules build on this one
        from vlsearch.index.milvus_qid import MilvusQidTable

        return MilvusQidTable.open(manifest["milvus"]["qid_collection"], _index_config(manifest))
    return QidTable.load(Path(version_dir) / "qid")


def open_lexical(version_dir: str | Path, manifest: Mapping, store: VectorStore):
    """The lexical channel: BM25 inside Milvus when the build enabled it, else tantivy.
    Both answer ``search(text, k, filters) -> (scores, rows)`` and ``n``."""
    if manifest.get("milvus", {}).get("lexical"):
        return store.lexical()
    return LexicalIndex.open(Path(version_dir) / "lexical")


def single_process_store(version_dir: str | Path) -> str | None:
    """Why only one process may open this version's store (milvus-lite locks its data file),
    or None when several serving processes can share it."""
    # import cycle: the milvus modules build on this one
    from vlsearch.index.milvus_client import is_server_uri

    uri = (read_json(Path(version_dir) / "manifest.json").get("milvus") or {}).get("uri", "")
    if uri and not is_server_uri(uri):
        return f"milvus-lite file {uri} opens in one process only (use a Milvus server URI for more)"
    return None


def open_store(version_dir: str | Path, manifest: Mapping, policy: FilterPolicy = DEFAULT_POLICY) -> VectorStore:
    """The store of a published version, by the backend its manifest names."""
    config = _index_config(manifest)
    if config.backend == "milvus":
        # import cycle: the milvus modules build on this one
        from vlsearch.index.milvus import MilvusStore

        rows = int(manifest.get("rows", manifest["products"]))  # tombstones of live updates included
        return MilvusStore.open(manifest["milvus"]["collection"], config, rows, policy)
    if config.backend != "faiss":
        raise WorkdirError(f"{version_dir}: manifest backend {config.backend!r}: expected one of {BACKENDS}")
    return FaissStore.open(version_dir, config, policy)


def exact_store(vectors: np.ndarray, products: Sequence) -> FaissStore:
    """An exact (flat) FAISS store over ``vectors`` with ``products``' attributes: what the
    qid table is answered from when the serving store is another backend (a Milvus round
    trip per logged query made the 44k build take hours on milvus-lite; exact lists are
    what a flat collection returns, and what the update's in-place patches assume)."""
    return FaissStore.build(np.asarray(vectors, np.float32), product_attributes(products), IndexConfig(kind="flat"))


def build_store(vectors: np.ndarray, products: Sequence, config: IndexConfig,
                version_dir: Path, recall_queries: np.ndarray | None = None,
                seed: int = 0) -> tuple[VectorStore, AnnReport]:
    """Build the configured backend's store for a new version (not yet published) and
    measure its recall@100 against exact search."""
    attributes = product_attributes(products)
    if config.backend == "milvus":
        # import cycle: the milvus modules build on this one
        from vlsearch.index.milvus import MilvusStore

        return MilvusStore.build_measured(
            vectors, attributes, config, Path(version_dir).name, recall_queries, seed,
            product_ids=[str(p.id) for p in products],
            texts=product_texts(products) if config.milvus_lexical else None)
    if config.backend != "faiss":
        raise InputError(f"[index] backend {config.backend!r}: expected one of {list(BACKENDS)}")
    store, report = FaissStore.build_measured(vectors, attributes, config, recall_queries, seed)
    store.save(version_dir)
    return store, report


def publish_store(store: VectorStore) -> None:
    store.publish()


def write_backend_qid_table(store: VectorStore, table, query_vectors: np.ndarray, config: IndexConfig,
                            version: str) -> None:
    """On the Milvus backend (``milvus_qid_table``), store the qid table as a collection too."""
    if store.backend != "milvus" or not config.milvus_qid_table:
        return
    # import cycle: the milvus modules build on this one
    from vlsearch.index.milvus_qid import MilvusQidTable

    store.qid_collection = MilvusQidTable.write(table, query_vectors, config, version).collection


def sweep_stores(out_dir: Path, config: IndexConfig, versions_on_disk: set[str]) -> list[str]:
    """Drop the backend's versions whose directory is gone (pruned, or a killed build's)."""
    if config.backend != "milvus":
        return []
    # import cycle: the milvus modules build on this one
    from vlsearch.index.milvus_client import sweep_collections

    return sweep_collections(config, versions_on_disk)
