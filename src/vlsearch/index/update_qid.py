"""The qid table of a live update (``index.update``, step 4): every logged query's stored
lists brought up to date with the delta, patched in place where that is exact, else answered
again from its stored query vector, or invalidated past the research limit; see
``update_qid_table``. ``qid_masks`` gives the constraint masks over the new version's live
rows that it filters with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlsearch.catalog import Product
from vlsearch.index.builder import QUERY_VECTORS, answer_vectors, save_query_vectors
from vlsearch.index.lexical import FILTER_FIELDS, LexicalIndex, product_value
from vlsearch.index.masks import ConstraintMasks
from vlsearch.index.qid_table import QidTable
from vlsearch.index.store import FaissStore, VectorStore
from vlsearch.index.understanding import constraint_signature, understand
from vlsearch.io import atomic_write

SCORE_CHUNK_QUERIES = 8192  # qid entries scored against the delta at once


def _write_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def qid_masks(store: VectorStore, products: list[Product], deleted: list[bool]):
    """The qid update's mask source over the new version's live rows: the FAISS store's own
    bitmaps, or (Milvus: no query per constraint set) bitmaps from the product table."""
    if isinstance(store, FaissStore):
        return _StoreMasks(store)
    blank = Product(id="", title="", image_paths=[], brand=None, category=None, attributes={})
    return ConstraintMasks.from_products([blank if d else p for p, d in zip(products, deleted)])


class _StoreMasks:
    """The qid builder's mask source (``mask_canonical``) over the store's live rows."""

    def __init__(self, store: VectorStore):
        self.store = store

    def mask(self, constraints) -> np.ndarray:
        return self.store.mask(constraints)

    def mask_canonical(self, items) -> np.ndarray:
        return self.store.mask({field: list(values) for field, values in items})


def update_qid_table(base: Path, version: Path, store: VectorStore, store_masks, lexicon, encoder, deleted_rows: set[int],
                      upsert_rows: np.ndarray, vecs: np.ndarray, upsert_products: list[Product],
                      old_products: dict[int, Product], batch_size: int,
                      research_limit: int = 0) -> tuple[int, int, int]:
    """Bring every entry up to date (module docstring, step 4). An entry is *patched* in
    place when that is exact: new scores of its changed members that stay above its last
    stored score, new or changed products that now beat that score and satisfy its
    constraints, deleted or no-longer-allowed members of a list that held every allowed
    product. It is *answered again* (a search from its stored query vector) when a deleted
    member, a member now below the last score, or a member that no longer satisfies the
    constraints leaves a hole in a full list, or when the new lexicon gives its query other
    constraints. Stored BM25 lists (``QidTable.has_lexical``) are searched again (tantivy,
    the new index) when they list a changed or deleted product or share a term with a new or
    changed one; an entry answered again gets both lists. Past ``research_limit`` entries to
    answer again (0: none), the rest are invalidated (dropped: their queries are answered
    live until the next build). Returns (answered again, patched, dropped)."""
    old = QidTable.load(base / "qid")
    rows, scores = np.array(old.rows), np.array(old.scores)
    signatures = np.array(old.signatures)
    n, top_k = len(old), old.top_k
    qv_path = base / QUERY_VECTORS
    qv = np.load(qv_path, mmap_mode="r") if qv_path.exists() else None
    if qv is None or len(qv) != n:  # a version from before query vectors were kept
        qv = np.asarray(encoder.encode_queries(old.queries), np.float32) if n else np.zeros((0, store.dim))
    if n == 0:
        old.save(version / "qid")
        save_query_vectors(version, [np.asarray(qv, np.float32)], store.dim)
        return 0, 0, 0

    constraints = [understand(q, lexicon).constraints for q in old.queries]
    new_sigs = np.asarray([constraint_signature(c) for c in constraints], np.uint64)
    research = new_sigs != signatures
    masks: dict[int, np.ndarray] = {}
    for i, sig in enumerate(new_sigs.tolist()):
        if sig and sig not in masks:
            masks[sig] = store_masks.mask({x.field: list(x.values) for x in constraints[i]})
    full = rows[:, -1] >= 0
    last = np.where(full, scores[:, -1], -np.inf)
    col_of = {int(r): j for j, r in enumerate(upsert_rows.tolist())}
    touched = np.fromiter(set(col_of) | deleted_rows, np.int64)
    patched = 0
    for lo in range(0, n, SCORE_CHUNK_QUERIES):
        hi = min(n, lo + SCORE_CHUNK_QUERIES)
        new_scores = np.asarray(qv[lo:hi], np.float32) @ vecs.T if len(vecs) else np.zeros((hi - lo, 0), np.float32)
        allowed = np.ones((hi - lo, len(upsert_rows)), bool)
        for sig, mask in masks.items():
            members = np.flatnonzero(new_sigs[lo:hi] == sig)
            if len(members):
                allowed[members] = mask[upsert_rows][None, :]
        beats = (new_scores > last[lo:hi, None]) & allowed
        holds = np.isin(rows[lo:hi], touched).any(axis=1) if len(touched) else np.zeros(hi - lo, bool)
        for i in np.flatnonzero((holds | beats.any(axis=1)) & ~research[lo:hi]):
            e = lo + i
            best = _patched_list(rows[e], scores[e], bool(full[e]), last[e], col_of, deleted_rows,
                                 allowed[i], new_scores[i], beats[i], upsert_rows, top_k)
            if best is None:  # a hole only a search can fill
                research[e] = True
                continue
            rows[e], scores[e] = -1, -np.inf
            rows[e, :len(best)] = [r for r, _ in best]
            scores[e, :len(best)] = [sc for _, sc in best]
            patched += 1
    todo = np.flatnonzero(research)
    keep = np.ones(n, bool)
    if research_limit and len(todo) > research_limit:  # the rest are invalidated: dropped
        keep[todo[research_limit:]] = False
        todo = todo[:research_limit]
    lexical = LexicalIndex.open(version / "lexical") if old.has_lexical else None
    answer = answer_vectors(store, store_masks, lexicon, top_k, lexical)
    lex_rows = np.array(old.lexical_rows) if lexical is not None else None
    lex_scores = np.array(old.lexical_scores) if lexical is not None else None
    for lo in range(0, len(todo), batch_size):
        pick = todo[lo:lo + batch_size]
        got = answer([old.queries[i] for i in pick], np.asarray(qv[pick], np.float32))
        scores[pick], rows[pick], signatures[pick] = got[0], got[1], np.asarray(got[2], np.uint64)
        if lexical is not None:
            lex_scores[pick], lex_rows[pick] = got[3], got[4]
    if lexical is not None:
        _refresh_lexical(lexical, old.queries, constraints, lex_rows, lex_scores, ~research & keep, touched,
                         upsert_rows, upsert_products, old_products, top_k)
    queries = [q for q, k in zip(old.queries, keep.tolist()) if k]
    QidTable(np.asarray(old.qids)[keep], rows[keep].astype(np.int32), scores[keep], queries, signatures[keep],
             None if lex_rows is None else lex_rows[keep].astype(np.int32),
             None if lex_scores is None else lex_scores[keep]).save(version / "qid")
    _write_npy(version / QUERY_VECTORS, np.asarray(qv, np.float32)[keep])
    return len(todo), patched, int(n - keep.sum())


def _patched_list(rows: np.ndarray, scores: np.ndarray, full: bool, last: float, col_of: dict[int, int],
                  deleted_rows: set[int], allowed: np.ndarray, new_scores: np.ndarray, beats: np.ndarray,
                  upsert_rows: np.ndarray, top_k: int) -> list[tuple[int, float]] | None:
    """One entry's list patched in place, best first; None when a deleted, no-longer-allowed or
    now-lower member leaves a hole in a full list (then only a search is exact)."""
    keep = rows >= 0
    out: dict[int, float] = {}
    for r, sc in zip(rows[keep].tolist(), scores[keep].tolist()):
        j = col_of.get(r)
        if r in deleted_rows or (j is not None and not allowed[j]):
            if full:
                return None
        elif j is not None:
            if full and new_scores[j] < last:
                return None
            out[r] = float(new_scores[j])
        else:
            out[r] = sc
    for j in np.flatnonzero(beats):
        out.setdefault(int(upsert_rows[j]), float(new_scores[j]))
    return sorted(out.items(), key=lambda item: (-item[1], item[0]))[:top_k]


def _refresh_lexical(lexical: LexicalIndex, queries: list[str], constraints, lex_rows: np.ndarray,
                     lex_scores: np.ndarray, candidates: np.ndarray, touched: np.ndarray, upsert_rows: np.ndarray,
                     upsert_products: list[Product], old_products: dict[int, Product], top_k: int) -> None:
    """Search again (in place) the stored BM25 lists of the ``candidates`` entries that list a
    touched product or share a term through which a new or changed product can enter: all of
    a new product's terms; a changed one's new terms (all of them when it lost some, since a
    shorter document scores higher on the rest)."""
    def terms_of(p) -> set[str]:
        attrs = " ".join(v for v in (product_value(p, f) for f in FILTER_FIELDS) if v)
        return set(lexical.terms(f"{p.title} {attrs}"))

    delta_terms: set[str] = set()
    for row, p in zip(upsert_rows.tolist(), upsert_products):
        new_terms = terms_of(p)
        was = old_products.get(row)
        old_terms = terms_of(was) if was is not None else set()
        delta_terms |= new_terms if (was is None or old_terms - new_terms) else new_terms - old_terms
    stale = np.isin(lex_rows, touched).any(axis=1) if len(touched) else np.zeros(len(queries), bool)
    for e in np.flatnonzero(candidates):
        query = queries[e]
        if not (stale[e] or delta_terms.intersection(lexical.terms(query))):
            continue
        filters = {c.field: list(c.values) for c in constraints[e]} or None
        s_, r_ = lexical.search(query, top_k, filters)
        lex_scores[e], lex_rows[e] = -np.inf, -1
        lex_scores[e, :len(r_)], lex_rows[e, :len(r_)] = s_, r_
