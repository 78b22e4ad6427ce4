"""The qid table of a live update (``index.update``, step 4): every logged query's stored
lists brought up to date with the delta, patched in place where that is exact, else answered
again from its stored query vector, or invalidated past the research limit, and its stored
fill lists kept where still exact, else dropped; see ``update_qid_table``. ``qid_masks``
gives the constraint masks over the new version's live rows that it filters with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlsearch.catalog import Product
from vlsearch.index.builder import QUERY_VECTORS, answer_vectors, save_query_vectors
from vlsearch.index.fill_lists import FillLists, FillRecord, fill_steps
from vlsearch.index.lexical import FILTER_FIELDS, LexicalIndex, product_value
from vlsearch.index.masks import ConstraintMasks
from vlsearch.index.qid_table import QidTable
from vlsearch.index.store import FaissStore, VectorStore
from vlsearch.index.understanding import constraint_signature, understand
from vlsearch.io import atomic_write

SCORE_CHUNK_QUERIES = 8192  # qid entries scored against the delta at once
SCORE_TOLERANCE = 1e-5  # a new product this close below a fill list's last score may still enter it


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
                      research_limit: int = 0, fill_order: Sequence[str] = ()) -> tuple[int, int, int, int]:
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
    live until the next build). Stored fill lists are kept where still exact, else dropped
    (``_kept_fill``; ``fill_order``: the build's ``qid_fill_relax_order``). Returns (answered
    again, patched, dropped, fill steps dropped)."""
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
        return 0, 0, 0, 0

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
    delta_terms = _delta_terms(lexical, upsert_rows, upsert_products, old_products) if lexical is not None else None
    if lexical is not None:
        _refresh_lexical(lexical, old.queries, constraints, lex_rows, lex_scores, ~research & keep, touched,
                         delta_terms, top_k)
    fill, fill_dropped = _kept_fill(old, constraints, keep & (new_sigs == old.signatures), fill_order, qv,
                                    _FillDelta(store_masks, touched, upsert_rows, vecs, delta_terms, lexical))
    queries = [q for q, k in zip(old.queries, keep.tolist()) if k]
    QidTable(np.asarray(old.qids)[keep], rows[keep].astype(np.int32), scores[keep], queries, signatures[keep],
             None if lex_rows is None else lex_rows[keep].astype(np.int32),
             None if lex_scores is None else lex_scores[keep], fill).save(version / "qid")
    _write_npy(version / QUERY_VECTORS, np.asarray(qv, np.float32)[keep])
    return len(todo), patched, int(n - keep.sum()), fill_dropped


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


def _delta_terms(lexical: LexicalIndex, upsert_rows: np.ndarray, upsert_products: list[Product],
                 old_products: dict[int, Product]) -> set[str]:
    """The terms through which a new or changed product can enter a BM25 list: all of a new
    product's terms; a changed one's new terms (all of them when it lost some, since a
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
    return delta_terms


def _refresh_lexical(lexical: LexicalIndex, queries: list[str], constraints, lex_rows: np.ndarray,
                     lex_scores: np.ndarray, candidates: np.ndarray, touched: np.ndarray, delta_terms: set[str],
                     top_k: int) -> None:
    """Search again (in place) the stored BM25 lists of the ``candidates`` entries that list a
    touched product or share one of ``delta_terms`` (``_delta_terms``)."""
    stale = np.isin(lex_rows, touched).any(axis=1) if len(touched) else np.zeros(len(queries), bool)
    for e in np.flatnonzero(candidates):
        query = queries[e]
        if not (stale[e] or delta_terms.intersection(lexical.terms(query))):
            continue
        filters = {c.field: list(c.values) for c in constraints[e]} or None
        s_, r_ = lexical.search(query, top_k, filters)
        lex_scores[e], lex_rows[e] = -np.inf, -1
        lex_scores[e, :len(r_)], lex_rows[e, :len(r_)] = s_, r_


@dataclass(frozen=True)
class _FillDelta:
    """What a stored fill list is checked against (``_kept_fill``): the new version's masks,
    the touched rows (upserted or deleted), the upserted rows and their vectors, and the
    delta's BM25 terms (None: no lexical lists) in ``lexical``'s analysis."""

    masks: object
    touched: np.ndarray
    upsert_rows: np.ndarray
    vecs: np.ndarray
    delta_terms: set[str] | None
    lexical: LexicalIndex | None


def _kept_fill(old: QidTable, constraints, same: np.ndarray, order, qv, delta: _FillDelta) -> tuple[FillLists | None, int]:
    """The stored fill lists (``index.fill_lists``) the update leaves exact, and how many
    steps it dropped (those fills are searched live until the next build). Dropped: the
    steps of an entry invalidated or whose constraints changed (``same`` false), of a
    constraint set that is not one of the entry's fill steps under ``order``, and every step
    whose lists a touched product is in, whose embedding list a new or changed product
    satisfying the step's constraints can enter (the list holds every match, or the product
    scores at least its last), or whose BM25 list one can enter through a query term."""
    fill = old.fill
    if fill is None or not len(fill):
        return fill, 0
    entry = np.searchsorted(old.qids, fill.qids)  # every fill qid is in its table
    ok = same[entry].copy()
    steps: dict[int, dict[int, list]] = {}
    masks: dict[int, np.ndarray | None] = {}
    for i in np.flatnonzero(ok).tolist():
        e, sig = int(entry[i]), int(fill.signatures[i])
        if e not in steps:
            steps[e] = {constraint_signature(kept): kept for kept, _ in fill_steps(constraints[e], order)}
        kept = steps[e].get(sig)
        if kept is None:
            ok[i] = False
            continue
        if sig not in masks:
            masks[sig] = delta.masks.mask_canonical((c.field, c.values) for c in kept) if kept else None
        ok[i] = _fill_step_exact(fill.record(i), masks[sig], qv[e], old.queries[e], delta)
    return FillLists.from_records(fill.records(ok)), int((~ok).sum())


def _fill_step_exact(record: FillRecord, mask: np.ndarray | None, query_vector: np.ndarray, query: str,
                     delta: _FillDelta) -> bool:
    """One stored fill step is still what a search of the new version returns (``_kept_fill``)."""
    if len(delta.touched) and any(np.isin(rows, delta.touched).any() for _, rows in record.channels.values()):
        return False
    scores, rows = record.channels["embedding"]
    entering = np.ones(len(delta.upsert_rows), bool) if mask is None else mask[delta.upsert_rows]
    if entering.any():
        if len(rows) < record.depth:  # the list held every match: a new one enters
            return False
        new_scores = delta.vecs[entering] @ np.asarray(query_vector, np.float32)
        if (new_scores >= scores[-1] - SCORE_TOLERANCE).any():
            return False
    if "lexical" in record.channels:
        if delta.lexical is None:
            return False
        return not (delta.delta_terms and delta.delta_terms.intersection(delta.lexical.terms(query)))
    return True
