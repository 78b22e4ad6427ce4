"""FAISS inner-product index over product vectors: exact (Flat), IVF (k-means coarse
quantizer, the open counterpart of the paper's hierarchical clustering) or HNSW.

FAISS ids are product-table row numbers. Filtered search passes an ID selector (a bitmap
over rows) through ``SearchParameters`` so the filter is applied inside the scan; for
selective filters the caller may widen ``nprobe`` / ``efSearch``. Live updates
(``upsert`` / ``remove``) keep that: IVF stores ids and keeps its centroids, a Flat index
becomes an ``IndexIDMap2``, HNSW can only append.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from vlsearch.config import IndexConfig
from vlsearch.errors import InputError, WorkdirError

KINDS = ("flat", "ivf", "hnsw")
RECALL_K = 100  # the k of the recall figure the build reports
MIN_POINTS_PER_CENTROID = 39  # FAISS k-means wants this many training points per cluster


@dataclass
class AnnReport:
    """What the build measured: recall@100 of this index against exact search, size, time."""

    kind: str
    n: int
    dim: int
    nlist: int
    recall_at_100: float
    recall_queries: int
    size_bytes: int
    build_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def default_nlist(n: int, requested: int = 0) -> int:
    """IVF clusters: ``requested`` or about 4*sqrt(n), capped so each gets enough training points."""
    nlist = requested or round(4 * math.sqrt(n))
    return max(1, min(nlist, n // MIN_POINTS_PER_CENTROID or 1))


def rows_selector(allowed: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """A FAISS selector over a boolean row mask; returns the packed bitmap too (keep it alive)."""
    packed = np.packbits(np.asarray(allowed, dtype=bool), bitorder="little")
    return faiss.IDSelectorBitmap(packed), packed


class AnnIndex:
    """A FAISS index plus its search settings; ``search`` returns (scores, rows), -1 rows padded."""

    def __init__(self, index: faiss.Index, kind: str, nprobe: int = 16, ef_search: int = 128):
        self.index = index
        self.kind = kind
        self.nprobe = nprobe
        self.ef_search = ef_search

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist) if self.kind == "ivf" else 0

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig, seed: int = 0) -> AnnIndex:
        if config.kind not in KINDS:
            raise InputError(f"index kind {config.kind!r}: expected one of {KINDS}")
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise InputError(f"product vectors: expected a non-empty [n, d] array, got {x.shape}")
        n, d = x.shape
        if config.kind == "flat":
            index: faiss.Index = faiss.IndexFlatIP(d)
        elif config.kind == "ivf":
            nlist = default_nlist(n, config.nlist)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(x)
        else:
            index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.add(x)
        return cls(index, config.kind, config.nprobe, config.hnsw_ef_search)

    def _params(self, selector, nprobe: int | None, ef_search: int | None):
        if self.kind == "ivf":
            probe = min(self.nlist, nprobe or self.nprobe)
            return faiss.SearchParametersIVF(sel=selector, nprobe=probe) if selector else \
                faiss.SearchParametersIVF(nprobe=probe)
        if self.kind == "hnsw":
            ef = ef_search or self.ef_search
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef) if selector else \
                faiss.SearchParametersHNSW(efSearch=ef)
        return faiss.SearchParameters(sel=selector) if selector else None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; ``allowed`` (bool mask over rows) restricts the scan."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(int(k), self.ntotal))
        selector, _keep = rows_selector(allowed) if allowed is not None else (None, None)
        params = self._params(selector, nprobe, ef_search)
        scores, rows = self.index.search(q, k, params=params)
        return scores, rows.astype(np.int64)

    # --- live updates: FAISS ids stay product-table rows ------------------------------------
    def _ensure_ids(self) -> None:
        """A Flat index numbers its vectors by position; give it explicit ids (an IDMap2 over
        the same vectors) so that rows can be removed and replaced. IVF stores ids already."""
        if self.kind == "flat" and not isinstance(self.index, faiss.IndexIDMap):
            flat = self.index
            ids = faiss.IndexIDMap2(faiss.IndexFlatIP(flat.d))
            if flat.ntotal:
                ids.add_with_ids(flat.reconstruct_n(0, flat.ntotal), np.arange(flat.ntotal, dtype=np.int64))
            self.index = ids

    def remove(self, rows: np.ndarray) -> int:
        """Drop the vectors of ``rows`` (absent rows are ignored); returns how many went."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) == 0:
            return 0
        if self.kind == "hnsw":
            raise InputError("an HNSW index cannot remove vectors (FAISS has no remove_ids for "
                             "HNSW); rebuild with `vlsearch index`, or use kind ivf or flat")
        self._ensure_ids()
        return int(self.index.remove_ids(faiss.IDSelectorBatch(rows)))

    def upsert(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Put ``vectors`` under ids ``rows``, replacing what those rows held; an IVF index
        assigns them to its existing centroids (no retraining)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        x = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(rows), -1)
        if len(np.unique(rows)) != len(rows):
            raise InputError("ANN upsert: a row appears twice")
        if self.kind == "hnsw":
            expected = np.arange(self.ntotal, self.ntotal + len(rows))
            if not np.array_equal(np.sort(rows), expected):
                raise InputError("an HNSW index can only append new rows (no remove_ids); rebuild "
                                 "with `vlsearch index`, or use kind ivf or flat")
            self.index.add(x[np.argsort(rows)])
            return
        self._ensure_ids()
        self.index.remove_ids(faiss.IDSelectorBatch(rows))
        self.index.add_with_ids(x, rows)

    def coarse_residual(self, vectors: np.ndarray) -> float:
        """IVF drift measure: mean 1 - cosine between vectors and their nearest centroid
        (grows when new products fall far from the clusters trained at build time)."""
        if self.kind != "ivf" or len(vectors) == 0:
            return float("nan")
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        sims, _ = self.index.quantizer.search(x, 1)
        return float(np.mean(1.0 - sims[:, 0]))

    def size_bytes(self) -> int:
        return int(faiss.serialize_index(self.index).nbytes)

    def save(self, path: str | Path) -> None:
        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None, kind: str | None = None) -> AnnIndex:
        config = config or IndexConfig()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise WorkdirError(f"{path}: cannot read FAISS index ({exc})") from None
        if kind is None:
            if isinstance(index, faiss.IndexIVF):
                kind = "ivf"
            elif isinstance(index, faiss.IndexHNSW):
                kind = "hnsw"
            else:
                kind = "flat"
        return cls(index, kind, config.nprobe, config.hnsw_ef_search)


def recall_against_exact(
    ann: AnnIndex, vectors: np.ndarray, queries: np.ndarray, k: int = RECALL_K
) -> float:
    """Mean share of the exact top-k (Flat inner product) that ``ann`` also returns."""
    if len(queries) == 0:
        return float("nan")
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    k = min(k, len(vectors))
    q = np.ascontiguousarray(queries, dtype=np.float32)
    _, truth = exact.search(q, k)
    _, found = ann.search(q, k)
    hits = [len(set(t[t >= 0]) & set(f[f >= 0])) / max(1, int((t >= 0).sum())) for t, f in zip(truth, found)]
    return float(np.mean(hits))


def build_ann(
    vectors: np.ndarray, config: IndexConfig, recall_queries: np.ndarray | None = None, seed: int = 0
) -> tuple[AnnIndex, AnnReport]:
    """Build the configured index and measure it: recall@100 vs exact on a query sample, bytes."""
    started = time.perf_counter()
    ann = AnnIndex.build(vectors, config, seed)
    seconds = time.perf_counter() - started
    rng = np.random.default_rng(seed)
    if recall_queries is None or len(recall_queries) == 0:
        recall_queries = vectors  # no logged queries: products stand in as queries
    take = min(config.recall_sample_queries, len(recall_queries))
    sample = np.asarray(recall_queries)[np.sort(rng.choice(len(recall_queries), take, replace=False))]
    recall = recall_against_exact(ann, np.asarray(vectors, dtype=np.float32), sample)
    report = AnnReport(
        kind=ann.kind, n=ann.ntotal, dim=ann.dim, nlist=ann.nlist, recall_at_100=recall,
        recall_queries=take, size_bytes=ann.size_bytes(), build_seconds=seconds,
    )
    return ann, report


@dataclass(frozen=True)
class FilterPolicy:
    """How a constrained search runs (the engine fills it from ServeConfig)."""

    selective_fraction: float = 0.05  # allowed share below which the filter runs inside the scan
    overfetch_factor: float = 2.0  # broad filters: fetch k / share * factor, then post-filter
    widen: bool = True  # selective filters scale nprobe/efSearch by 1/selectivity


def _valid(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = rows >= 0
    return scores[keep], rows[keep]


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score descending, then row ascending) by a partial sort."""
    if len(scores) > k:
        part = np.argpartition(-scores, k - 1)[:k]
        scores, rows = scores[part], rows[part]
    order = np.lexsort((rows, -scores))
    return scores[order], rows[order].astype(np.int64)


def exact_among(vectors: np.ndarray, query: np.ndarray, rows: np.ndarray, k: int):
    """Exact top-k of ``query`` among ``rows`` (completes a filtered search)."""
    scores = np.asarray(vectors[rows], dtype=np.float32) @ query
    return top_k(scores, np.asarray(rows), k)


def exact_masked(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray, k: int, allowed: int):
    """Exact top-k of ``query`` among the rows ``mask`` allows: a few allowed rows are
    gathered; many are scored in place (one pass over the vectors, no copy of the rows)."""
    if allowed * 4 < len(mask):
        return exact_among(vectors, query, np.flatnonzero(mask), k)
    scores = np.asarray(vectors @ query, dtype=np.float32)
    rows = np.flatnonzero(mask)
    return top_k(scores[rows], rows, k)


def constrained_search(
    ann: AnnIndex, vectors: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None,
    policy: FilterPolicy = FilterPolicy(), allowed: int | None = None,
) -> tuple[str, np.ndarray, np.ndarray]:
    """Top-k of one query vector among the rows ``mask`` allows: (path, scores, rows).

    No mask: plain ANN. Broad mask (>= ``selective_fraction``): over-fetch
    ``k / share * overfetch_factor`` and post-filter (one pass when the share is right).
    Selective mask (or too few survivors): ANN with an ID selector, nprobe/efSearch widened.
    Fewer than min(k, allowed) found: exact scan of the allowed rows' vectors.
    """
    vec = np.asarray(query, dtype=np.float32).reshape(1, -1)
    if mask is None:
        scores, rows = ann.search(vec, k)
        return ("ann", *_valid(scores[0], rows[0]))
    allowed = int(mask.sum()) if allowed is None else allowed
    if allowed == 0:
        return "ann+selector", np.zeros(0, np.float32), np.zeros(0, np.int64)
    want = min(k, allowed)
    fraction = allowed / ann.ntotal
    if fraction >= policy.selective_fraction:
        fetch = min(ann.ntotal, math.ceil(k / fraction * policy.overfetch_factor))
        scores, rows = _valid(*(a[0] for a in ann.search(vec, fetch)))
        keep = mask[rows]
        if keep.sum() >= want:
            return "ann+postfilter", scores[keep][:k], rows[keep][:k]
    widen = 1.0 / fraction if policy.widen else 1.0
    scores, rows = ann.search(
        vec, k, allowed=mask,
        nprobe=min(ann.nlist, math.ceil(ann.nprobe * widen)) if ann.kind == "ivf" else None,
        ef_search=min(ann.ntotal, math.ceil(max(ann.ef_search, k) * widen)) if ann.kind == "hnsw" else None,
    )
    scores, rows = _valid(scores[0], rows[0])
    if len(rows) >= want:
        return "ann+selector", scores, rows
    return ("exact", *exact_masked(vectors, vec[0], mask, k, allowed))
