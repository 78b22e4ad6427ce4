"""The Milvus backend of the vector-store seam (pymilvus; milvus-lite embedded when the URI
is a file path, a Milvus server or cluster for ``http://host:19530``).

One collection per index version, ``<prefix>_<version>``: primary key ``row`` (the
product-table row of the version), ``product_id``, the float ``vector`` (FLAT / IVF_FLAT /
HNSW over inner product, from ``IndexConfig.kind``), one VARCHAR per filter field with an
INVERTED scalar index (the normalised value, ``""`` when missing), and for the lexical
channel a ``text`` field (title + attribute values, jieba analyzer so CJK text segments)
whose BM25 function fills the sparse ``bm25`` field. Constraints become one boolean
expression (``filter_expression``: ``in`` lists within a field, ``and`` across fields,
values quoted and escaped, never spliced in raw) evaluated inside the search.
Versions: the builder fills the new collection, then switches the alias ``<prefix>_current``
to it; readers keep the old collection until then. Collections whose version directory is
gone (pruned, or a killed build's) are dropped by the next build (``sweep_collections``).
The qid table is a second collection ``<prefix>_<version>_qid`` keyed by qid
(``index.milvus_qid``); connecting, expressions and names are ``index.milvus_client``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vlsearch.config import IndexConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.index.ann import AnnReport, default_nlist
from vlsearch.index.lexical import FILTER_FIELDS
from vlsearch.index.milvus_client import (
    RemoteCollection,
    alias_name,
    call_milvus,
    collection_name,
    connect,
    filter_expression,
    is_server_uri,
    resolved_uri,
    version_of,
)
from vlsearch.index.store import (
    DEFAULT_POLICY,
    Constraints,
    FilterPolicy,
    VectorStore,
    exact_top_k,
)

log = logging.getLogger(__name__)

ROW, PRODUCT_ID, VECTOR, TEXT, SPARSE = "row", "product_id", "vector", "text", "bm25"
VALUE_MAX_CHARS = 512  # longest attribute value / product id stored
TEXT_MAX_CHARS = 4096  # longest BM25 text (title + attribute values) stored
INSERT_BATCH = 2000  # rows per insert call (keeps one gRPC message well under its size limit)
QUERY_BATCH = 16384  # rows per query-iterator page (Milvus' largest query window)
MAX_TOPK = 16384  # Milvus' largest search limit
SEARCH_BATCH = 16  # query vectors per search call (batch searches: recall figures, benchmarks)
HNSW_EF_CONSTRUCTION = 200  # HNSW build breadth
KINDS = {"flat": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}


# --- filter expressions ---------------------------------------------------------------------


# --- the store ------------------------------------------------------------------------------


def _schema(client, dim: int, lexical: bool):
    from pymilvus import DataType, Function, FunctionType  # optional and heavy: Milvus backend only

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ROW, DataType.INT64, is_primary=True)
    schema.add_field(PRODUCT_ID, DataType.VARCHAR, max_length=VALUE_MAX_CHARS)
    schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
    for field in FILTER_FIELDS:
        schema.add_field(field, DataType.VARCHAR, max_length=VALUE_MAX_CHARS)
    if lexical:
        schema.add_field(TEXT, DataType.VARCHAR, max_length=TEXT_MAX_CHARS, enable_analyzer=True,
                         analyzer_params={"tokenizer": "jieba", "filter": ["lowercase"]})
        schema.add_field(SPARSE, DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                     input_field_names=[TEXT], output_field_names=[SPARSE]))
    return schema


def _index_params(client, config: IndexConfig, n: int, lexical: bool):
    if config.kind not in KINDS:
        raise InputError(f"[index] kind {config.kind!r}: expected one of {sorted(KINDS)}")
    params = client.prepare_index_params()
    extra = {}
    if config.kind == "ivf":
        extra = {"nlist": default_nlist(n, config.nlist)}
    elif config.kind == "hnsw":
        extra = {"M": config.hnsw_m, "efConstruction": HNSW_EF_CONSTRUCTION}
    params.add_index(VECTOR, index_type=KINDS[config.kind], metric_type="IP", params=extra)
    for field in FILTER_FIELDS:
        params.add_index(field, index_type="INVERTED")
    if lexical:
        params.add_index(SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    return params


def _rows_of(vectors: np.ndarray, rows: Sequence[int], attributes: Mapping[str, Sequence],
             product_ids: Sequence[str] | None, texts: Sequence[str] | None) -> list[dict]:
    out = []
    for i, row in enumerate(rows):
        entity = {ROW: int(row), VECTOR: vectors[i].tolist(),
                  PRODUCT_ID: str(product_ids[i]) if product_ids is not None else str(row)}
        for field in FILTER_FIELDS:
            col = attributes.get(field)
            value = (col[i] if col is not None else None) or ""
            if len(value) > VALUE_MAX_CHARS:
                raise InputError(f"row {row}: {field} value longer than {VALUE_MAX_CHARS} characters")
            entity[field] = value
        if texts is not None:
            entity[TEXT] = (texts[i] or "")[:TEXT_MAX_CHARS]
        out.append(entity)
    return out


class MilvusStore(RemoteCollection, VectorStore):
    """One version's collection; see the module docstring."""

    backend = "milvus"

    def __init__(self, collection: str, config: IndexConfig, dim: int, n: int, lexical: bool,
                 policy: FilterPolicy = DEFAULT_POLICY):
        self.collection = collection
        self.config = config
        self.uri = resolved_uri(config.milvus_uri)
        self._dim = dim
        self.n = n  # rows 0..n-1 (the length of every mask)
        self.has_lexical = lexical
        self.policy = policy
        self.qid_collection = ""

    # --- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, attributes: Mapping[str, Sequence[str | None]], config: IndexConfig,
              version: str, product_ids: Sequence[str] | None = None,
              texts: Sequence[str] | None = None, rows: Sequence[int] | None = None,
              n: int | None = None) -> MilvusStore:
        """Create and fill ``<prefix>_<version>`` (not yet published). Vector i is row
        ``rows[i]`` (default: i) of a product table of ``n`` rows (default: the vectors'
        count); a live update leaves out its tombstone rows."""
        x = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise InputError(f"product vectors: expected a non-empty [n, d] array, got {x.shape}")
        rows = np.arange(len(x)) if rows is None else np.asarray(rows, np.int64)
        client = connect(config)
        name = collection_name(config.milvus_prefix, version)
        lexical = config.milvus_lexical and texts is not None
        store = cls(name, config, x.shape[1], len(x) if n is None else n, lexical)
        if store._build_call("has_collection", client.has_collection, name):
            store._build_call("drop_collection", client.drop_collection, name)
        store._build_call("create_collection", client.create_collection, name,
                    schema=_schema(client, x.shape[1], lexical),
                    index_params=_index_params(client, config, len(x), lexical))
        for start in range(0, len(x), INSERT_BATCH):
            stop = min(len(x), start + INSERT_BATCH)
            store._build_call("insert", client.insert, name, _rows_of(
                x[start:stop], rows[start:stop], {f: c[start:stop] for f, c in attributes.items()},
                product_ids[start:stop] if product_ids is not None else None,
                texts[start:stop] if lexical else None))
        store._build_call("flush", client.flush, name)
        store._build_call("load_collection", client.load_collection, name)
        return store

    @classmethod
    def build_measured(cls, vectors, attributes, config: IndexConfig, version: str,
                       recall_queries: np.ndarray | None = None, seed: int = 0,
                       product_ids: Sequence[str] | None = None,
                       texts: Sequence[str] | None = None) -> tuple[MilvusStore, AnnReport]:
        started = time.perf_counter()
        store = cls.build(vectors, attributes, config, version, product_ids, texts)
        seconds = time.perf_counter() - started
        x = np.asarray(vectors, dtype=np.float32)
        if recall_queries is None or len(recall_queries) == 0:
            recall_queries = x
        rng = np.random.default_rng(seed)
        take = min(config.recall_sample_queries, len(recall_queries))
        sample = np.asarray(recall_queries, np.float32)[np.sort(rng.choice(len(recall_queries), take, replace=False))]
        recall = recall_at_k(store, x, sample)
        nlist = default_nlist(len(x), config.nlist) if config.kind == "ivf" else 0
        report = AnnReport(kind=config.kind, n=len(x), dim=x.shape[1], nlist=nlist, recall_at_100=recall,
                           recall_queries=take, size_bytes=store.size_bytes(), build_seconds=seconds)
        return store, report

    @classmethod
    def open(cls, collection: str, config: IndexConfig, n: int,
             policy: FilterPolicy = DEFAULT_POLICY) -> MilvusStore:
        """Reopen a built collection of ``n`` rows (the version manifest's product count)."""
        client = connect(config)
        uri = resolved_uri(config.milvus_uri)
        timeout = config.milvus_timeout_s
        if not call_milvus(uri, "has_collection", client.has_collection, collection, timeout=timeout):
            raise WorkdirError(f"Milvus at {uri}: collection {collection!r} not found; rebuild the index")
        info = call_milvus(uri, "describe_collection", client.describe_collection, collection, timeout=timeout)
        fields = {f["name"]: f for f in info["fields"]}
        dim = int(fields[VECTOR]["params"]["dim"])
        call_milvus(uri, "load_collection", client.load_collection, collection, timeout=config.milvus_build_timeout_s)
        return cls(collection, config, dim, n, SPARSE in fields, policy)

    # --- versions ---------------------------------------------------------------------------
    def manifest_entry(self) -> dict:
        return {"milvus": {"uri": self.uri if not is_server_uri(self.uri) else self.config.milvus_uri,
                           "collection": self.collection, "alias": alias_name(self.config.milvus_prefix),
                           "lexical": self.has_lexical, "qid_collection": self.qid_collection}}

    def publish(self) -> None:
        """Point ``<prefix>_current`` at this collection (create or alter the alias)."""
        alias = alias_name(self.config.milvus_prefix)
        existing = self._call("list_aliases", self.client.list_aliases).get("aliases", [])
        if alias in existing:
            self._build_call("alter_alias", self.client.alter_alias, self.collection, alias)
        else:
            self._build_call("create_alias", self.client.create_alias, self.collection, alias)

    def published_collection(self) -> str | None:
        """The collection the alias names now (None: never published)."""
        alias = alias_name(self.config.milvus_prefix)
        existing = self._call("list_aliases", self.client.list_aliases).get("aliases", [])
        if alias not in existing:
            return None
        return self._call("describe_alias", self.client.describe_alias, alias)["collection_name"]

    def published_version(self) -> str | None:
        name = self.published_collection()
        return version_of(self.config.milvus_prefix, name) if name else None

    def drop(self) -> None:
        for name in (self.collection, self.qid_collection):
            if name and self._call("has_collection", self.client.has_collection, name):
                self._build_call("drop_collection", self.client.drop_collection, name)

    # --- VectorStore --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def kind(self) -> str:
        return self.config.kind

    def count(self, constraints: Constraints | None = None) -> int:
        expr = filter_expression(constraints) or f"{ROW} >= 0"
        found = self._call("count", self.client.query, self.collection, filter=expr, output_fields=["count(*)"])
        return int(found[0]["count(*)"])

    def _iterate(self, expr: str, fields: list[str]):
        """Entities matching ``expr`` in windows of rows (one query per QUERY_BATCH rows)."""
        for start in range(0, self.n, QUERY_BATCH):
            window = f"{ROW} >= {start} and {ROW} < {start + QUERY_BATCH}"
            batch = self._call("query", self.client.query, self.collection,
                               filter=f"({expr}) and {window}" if expr else window,
                               output_fields=fields, limit=QUERY_BATCH)
            if batch:
                yield batch

    def mask(self, constraints: Constraints) -> np.ndarray:
        out = np.zeros(self.n, dtype=bool)
        for batch in self._iterate(filter_expression(constraints), [ROW]):
            rows = np.asarray([int(e[ROW]) for e in batch], dtype=np.int64)
            out[rows[rows < self.n]] = True
        return out

    def _search_params(self, k: int) -> dict:
        if self.kind == "ivf":
            nlist = default_nlist(self.n, self.config.nlist)
            return {"metric_type": "IP", "params": {"nprobe": min(nlist, self.config.nprobe)}}
        if self.kind == "hnsw":
            return {"metric_type": "IP", "params": {"ef": max(self.config.hnsw_ef_search, k)}}
        return {"metric_type": "IP", "params": {}}

    def search(self, queries, k, constraints=None, mask=None):
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), MAX_TOPK))
        expr = filter_expression(constraints)
        found = []
        for start in range(0, len(q), SEARCH_BATCH):  # one call per few queries: each within the timeout
            found += self._call("search", self.client.search, self.collection,
                                data=q[start:start + SEARCH_BATCH].tolist(), filter=expr, limit=k,
                                anns_field=VECTOR, search_params=self._search_params(k), output_fields=[])
        scores = np.full((len(q), k), -np.inf, np.float32)
        rows = np.full((len(q), k), -1, np.int64)
        for i, hits in enumerate(found):
            for j, hit in enumerate(hits[:k]):
                rows[i, j], scores[i, j] = int(hit[ROW]), float(hit["distance"])
        return scores, rows

    def constrained_search(self, query, k, constraints, mask, allowed=None):
        """The filter runs inside Milvus' search; when an approximate index returns fewer
        than min(k, allowed) rows, an exact scan of the allowed rows completes it."""
        scores, rows = self.search(query, k, constraints)
        keep = rows[0] >= 0
        scores, rows = scores[0][keep], rows[0][keep]
        path = "milvus+filter" if constraints else "milvus"
        if constraints:
            allowed = self.count(constraints) if allowed is None else allowed
            if len(rows) < min(k, allowed):
                return ("exact", *self._exact(np.asarray(query, np.float32).ravel(), k, constraints))
        return path, scores, rows

    def constrained_search_many(self, queries, k, constraints, mask):
        """One batched search for all queries; the exact completion where one came back short."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        scores, rows = self.search(queries, k, constraints)
        allowed = (self.count(constraints) if mask is None else int(mask.sum())) if constraints else None
        out = []
        for q, s, r in zip(queries, scores, rows):
            keep = r >= 0
            if constraints and keep.sum() < min(k, allowed):
                out.append(self._exact(q, k, constraints))
            else:
                out.append((s[keep], r[keep]))
        return out

    def _exact(self, query: np.ndarray, k: int, constraints: Constraints):
        rows, vecs = [], []
        for batch in self._iterate(filter_expression(constraints), [ROW, VECTOR]):
            rows.extend(int(e[ROW]) for e in batch)
            vecs.extend(e[VECTOR] for e in batch)
        if not rows:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        scores = np.asarray(vecs, np.float32) @ query
        top = np.argsort(-scores, kind="stable")[:k]
        return scores[top], np.asarray(rows, np.int64)[top]

    def vectors_of(self, rows):
        rows = [int(r) for r in np.asarray(rows).ravel()]
        found = self._call("get", self.client.get, self.collection, ids=rows, output_fields=[VECTOR])
        by_row = {int(e[ROW]): e[VECTOR] for e in found}
        return np.asarray([by_row[r] for r in rows], np.float32).reshape(len(rows), self.dim)

    def size_bytes(self) -> int:
        """Bytes on disk of the milvus-lite data file (the whole file: every collection);
        -1 for a server (its storage is the cluster's object store)."""
        if is_server_uri(self.uri):
            return -1
        path = Path(self.uri)
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size if path.exists() else 0

    # --- changes ------------------------------------------------------------------------------
    def upsert(self, rows, vectors, attributes, product_ids=None, texts=None) -> None:
        x = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if len(rows) != len(x):
            raise InputError(f"rows: {len(rows)} row numbers for {len(x)} vectors")
        if self.has_lexical and texts is None:
            raise InputError("upsert: this collection has a BM25 channel; give the products' texts")
        for start in range(0, len(x), INSERT_BATCH):
            stop = min(len(x), start + INSERT_BATCH)
            self._build_call("upsert", self.client.upsert, self.collection, _rows_of(
                x[start:stop], list(rows)[start:stop], {f: list(c)[start:stop] for f, c in attributes.items()},
                list(product_ids)[start:stop] if product_ids is not None else None,
                list(texts)[start:stop] if texts is not None else None))
        self.n = max(self.n, int(max(rows)) + 1) if len(rows) else self.n

    def delete(self, rows) -> None:
        ids = [int(r) for r in rows]
        if ids:
            self._call("delete", self.client.delete, self.collection, ids=ids)

    # --- the lexical channel ------------------------------------------------------------------
    def lexical(self) -> MilvusLexical:
        if not self.has_lexical:
            raise WorkdirError(f"Milvus collection {self.collection!r} has no BM25 field")
        return MilvusLexical(self)


class MilvusLexical:
    """BM25 over ``text`` inside Milvus, with the same Boolean filter expression."""

    def __init__(self, store: MilvusStore):
        self.store = store

    @property
    def n(self) -> int:
        return self.store.count()

    def search(self, text: str, k: int, filters: Constraints | None = None) -> tuple[np.ndarray, np.ndarray]:
        s = self.store
        if not text.strip() or k <= 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        found = s._call("bm25 search", s.client.search, s.collection, data=[text], anns_field=SPARSE,
                        filter=filter_expression(filters), limit=max(1, min(int(k), MAX_TOPK)),
                        search_params={"metric_type": "BM25"}, output_fields=[])
        hits = found[0] if found else []
        # milvus-lite reports BM25 as a negated distance; the order is best first either way
        return (np.asarray([abs(float(h["distance"])) for h in hits], np.float32),
                np.asarray([int(h[ROW]) for h in hits], np.int64))


def recall_at_k(store: VectorStore, vectors: np.ndarray, queries: np.ndarray, k: int = 100) -> float:
    """Mean share of the exact top-k (inner product) that ``store`` also returns."""
    if len(queries) == 0:
        return float("nan")
    k = min(k, len(vectors))
    _, truth = exact_top_k(vectors, queries, k)
    _, found = store.search(queries, k)
    return float(np.mean([len(set(t[t >= 0]) & set(f[f >= 0])) / max(1, int((t >= 0).sum()))
                          for t, f in zip(truth, found)]))


# --- housekeeping ---------------------------------------------------------------------------


