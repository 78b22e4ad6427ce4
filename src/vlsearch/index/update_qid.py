"""The qid table of a live update (``index.update``, step 4): every logged query's stored
lists brought up to date with the delta, patched in place where that is exact, else answered
again from its stored query vector, or invalidated past the research limit, and its stored
fill lists kept where still exact, else dropped; see ``update_qid_table``. ``qid_store`` gives the store it searches: the FAISS store itself, or
on the Milvus backend an exact flat FAISS copy of the new version's live vectors (a milvus-lite
round trip per constraint set cost ~0.15 s per entry answered again)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlsearch.catalog import Product
from vlsearch.index.builder import QUERY_VECTORS, answer_vectors, save_query_vectors
from vlsearch.index.fill_lists import FillLists, FillRecord, fill_steps
from vlsearch.index.lexical import LexicalIndex, lexical_fields
from vlsearch.index.qid_table import QidTable
from vlsearch.index.store import VECTORS_FILE, FaissStore, VectorStore, exact_store
from vlsearch.index.understanding import (
    LEXICON_FILE,
    Constraint,
    Lexicon,
    constraint_signature,
    differing_phrases,
    may_read_differently,
    understand_many,
)
from vlsearch.io import atomic_write_npy, read_json

SCORE_CHUNK_QUERIES = 8192  # qid entries scored against the delta at once
SCORE_TOLERANCE = 1e-5  # a new product this close below a fill list's last score may still enter it


def qid_store(store: VectorStore, version: Path, products: list[Product], deleted: list[bool]) -> FaissStore:
    """The store the qid update searches and takes its constraint masks from (module
    docstring): ``store`` when it is FAISS, else a flat FAISS store over ``version``'s
    ``vectors.npy`` without its tombstones (exact, the scores the in-place patches use)."""
    if isinstance(store, FaissStore):
        return store
    flat = exact_store(np.load(version / VECTORS_FILE, mmap_mode="r"), products)
    flat.delete(np.flatnonzero(np.asarray(deleted, bool)))
    return flat


class _StoreMasks:
    """The qid builder's mask source (``mask_canonical``) over the store's live rows."""

    def __init__(self, store: VectorStore):
        self.store = store

    def mask(self, constraints) -> np.ndarray:
        return self.store.mask(constraints)

    def mask_canonical(self, items) -> np.ndarray:
        return self.store.mask({field: list(values) for field, values in items})


@dataclass
class _Lists:
    """The qid table's stored lists, copied from the base version and updated in place."""

    rows: np.ndarray
    scores: np.ndarray
    signatures: np.ndarray
    lex_rows: np.ndarray | None
    lex_scores: np.ndarray | None

    @classmethod
    def of(cls, table: QidTable) -> _Lists:
        lexical = table.has_lexical
        return cls(np.array(table.rows), np.array(table.scores), np.array(table.signatures),
                   np.array(table.lexical_rows) if lexical else None,
                   np.array(table.lexical_scores) if lexical else None)


def update_qid_table(base: Path, version: Path, store: FaissStore, lexicon, encoder, deleted_rows: set[int],
                     upsert_rows: np.ndarray, vecs: np.ndarray, upsert_products: list[Product],
                     old_products: dict[int, Product], batch_size: int, research_limit: int = 0,
                     fill_order: Sequence[str] = (),
                     lap: Callable[[str], None] | None = None) -> tuple[int, int, int, int, int]:
    """Bring every entry up to date (module docstring, step 4). An entry is *patched* in
    place when that is exact: new scores of its changed members that stay above its last
    stored score, new or changed products that now beat that score and satisfy its
    constraints, deleted or no-longer-allowed members of a list that held every allowed
    product. It is *answered again* (a search from its stored query vector) when a deleted
    member, a member now below the last score, or a member that no longer satisfies the
    constraints leaves a hole in a full list, or when the new lexicon gives its query other
    constraints. An entry that lists no changed or deleted product and that no new or
    changed product beats is copied unchanged. Stored BM25 lists: see ``_refresh_lexical``;
    an entry answered again gets both lists. Past ``research_limit`` entries to answer again
    (0: none), the rest are invalidated (dropped: their queries are answered live until the
    next build). Stored fill lists are kept where still exact, else dropped (``_kept_fill``;
    ``fill_order``: the build's ``qid_fill_relax_order``). ``lap(stage)`` is called after each
    stage (the update's stopwatch). Returns (answered again, patched, dropped, fill steps
    dropped, BM25 lists searched again)."""
    lap = lap or (lambda _stage: None)
    old = QidTable.load(base / "qid")
    qv = _query_vectors(base, old, encoder, store.dim)
    if len(old) == 0:
        old.save(version / "qid")
        save_query_vectors(version, [qv], store.dim)
        return 0, 0, 0, 0, 0
    store_masks = _StoreMasks(store)
    new_sigs, constraints_of = _understood(base, old, lexicon)
    lap("qid_understand")
    masks = {sig: store_masks.mask({x.field: list(x.values) for x in found})
             for sig, found in constraints_of.items() if sig}
    lap("qid_masks")
    lists = _Lists.of(old)
    research = new_sigs != lists.signatures
    patched = _patch_dense(lists, qv, research, new_sigs, masks, deleted_rows, upsert_rows, vecs, old.top_k)
    lap("qid_patch")
    todo = np.flatnonzero(research)
    keep = np.ones(len(old), bool)
    if research_limit and len(todo) > research_limit:  # the rest are invalidated: dropped
        keep[todo[research_limit:]] = False
        todo = todo[:research_limit]
    lexical = LexicalIndex.open(version / "lexical") if old.has_lexical else None
    answer = answer_vectors(store, store_masks, lexicon, old.top_k, lexical)
    for lo in range(0, len(todo), batch_size):
        pick = todo[lo:lo + batch_size]
        got = answer([old.queries[i] for i in pick], np.asarray(qv[pick], np.float32))
        lists.scores[pick], lists.rows[pick], lists.signatures[pick] = got[0], got[1], np.asarray(got[2], np.uint64)
        if lexical is not None:
            lists.lex_scores[pick], lists.lex_rows[pick] = got[3], got[4]
    lap("qid_search")
    searched, delta_terms = 0, None
    if lexical is not None:
        rewritten, delta_terms = _delta_terms(lexical, upsert_rows, upsert_products, old_products)
        searched = _refresh_lexical(lexical, old.queries, constraints_of, new_sigs, lists, ~research & keep,
                                    deleted_rows, rewritten, delta_terms, old.top_k)
    lap("qid_lexical")
    touched = np.fromiter(set(upsert_rows.tolist()) | deleted_rows, np.int64)
    fill, fill_dropped = _kept_fill(old, [constraints_of[s] for s in new_sigs.tolist()],
                                    keep & (new_sigs == old.signatures), fill_order, qv,
                                    _FillDelta(store_masks, touched, upsert_rows, vecs, delta_terms, lexical))
    lap("qid_fill")
    _save(version, old, lists, keep, qv, fill)
    lap("qid_write")
    return len(todo), patched, int(len(old) - keep.sum()), fill_dropped, searched


def _understood(base: Path, old: QidTable, lexicon: Lexicon) -> tuple[np.ndarray, dict[int, list[Constraint]]]:
    """Each entry's constraint signature under the new ``lexicon`` and the constraints of each
    signature. An entry keeps its stored signature (the base lexicon's reading) unless a
    phrase the update added, removed or changed can match in its query
    (``may_read_differently``); only those entries, and one entry per kept signature (for its
    constraints), are understood again. Should a kept entry read otherwise after all (a table
    from other code), every entry is understood again."""
    stored = np.array(old.signatures, np.uint64)
    path = base / LEXICON_FILE
    changed = differing_phrases(Lexicon.from_json(read_json(path)), lexicon) if path.is_file() else None
    redo = (np.ones(len(old), bool) if changed is None
            else np.asarray(may_read_differently(old.queries, changed), bool).reshape(-1))
    first: dict[int, int] = {}
    for i in np.flatnonzero(~redo).tolist():
        first.setdefault(int(stored[i]), i)
    pick = sorted(set(np.flatnonzero(redo).tolist()) | set(first.values()))
    sigs, constraints_of = stored.copy(), {0: []}
    for i, got in zip(pick, understand_many([old.queries[i] for i in pick], lexicon)):
        sig = constraint_signature(got.constraints)
        if not redo[i] and sig != stored[i]:
            return _understood_all(old.queries, lexicon)
        sigs[i] = sig
        constraints_of.setdefault(sig, got.constraints)
    return sigs, constraints_of


def _understood_all(queries: list[str], lexicon: Lexicon) -> tuple[np.ndarray, dict[int, list[Constraint]]]:
    found = [u.constraints for u in understand_many(queries, lexicon)]
    sigs = np.asarray([constraint_signature(c) for c in found], np.uint64)
    return sigs, {0: [], **{int(s): c for s, c in zip(sigs.tolist(), found)}}


def _query_vectors(base: Path, old: QidTable, encoder, dim: int) -> np.ndarray:
    """The entries' stored query vectors (encoded again for a version from before they were kept)."""
    path = base / QUERY_VECTORS
    qv = np.load(path, mmap_mode="r") if path.exists() else None
    if qv is None or len(qv) != len(old):
        qv = np.asarray(encoder.encode_queries(old.queries), np.float32) if len(old) else np.zeros((0, dim))
    return qv


def _patch_dense(lists: _Lists, qv: np.ndarray, research: np.ndarray, new_sigs: np.ndarray,
                 masks: dict[int, np.ndarray], deleted_rows: set[int], upsert_rows: np.ndarray,
                 vecs: np.ndarray, top_k: int) -> int:
    """The dense lists patched in place (``update_qid_table``), chunk by chunk of entries
    scored against the delta's vectors at once; an entry a patch cannot keep exact is marked
    in ``research``. Returns the entries patched."""
    n = len(lists.rows)
    full = lists.rows[:, -1] >= 0
    last = np.where(full, lists.scores[:, -1], -np.inf)
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
        holds = np.isin(lists.rows[lo:hi], touched).any(axis=1) if len(touched) else np.zeros(hi - lo, bool)
        for i in np.flatnonzero((holds | beats.any(axis=1)) & ~research[lo:hi]):
            e = lo + i
            best = _patched_list(lists.rows[e], lists.scores[e], bool(full[e]), last[e], col_of, deleted_rows,
                                 allowed[i], new_scores[i], beats[i], upsert_rows, top_k)
            if best is None:  # a hole only a search can fill
                research[e] = True
                continue
            lists.rows[e], lists.scores[e] = -1, -np.inf
            lists.rows[e, :len(best)] = [r for r, _ in best]
            lists.scores[e, :len(best)] = [sc for _, sc in best]
            patched += 1
    return patched


def _save(version: Path, old: QidTable, lists: _Lists, keep: np.ndarray, qv: np.ndarray,
          fill: FillLists | None) -> None:
    """The new version's qid table (with ``fill``) and query vectors: the kept entries, in the old order."""
    queries = [q for q, k in zip(old.queries, keep.tolist()) if k]
    lex = lists.lex_rows is not None
    QidTable(np.asarray(old.qids)[keep], lists.rows[keep].astype(np.int32), lists.scores[keep], queries,
             lists.signatures[keep], lists.lex_rows[keep].astype(np.int32) if lex else None,
             lists.lex_scores[keep] if lex else None, fill).save(version / "qid")
    atomic_write_npy(version / QUERY_VECTORS, np.asarray(qv, np.float32)[keep])


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
                 old_products: dict[int, Product]) -> tuple[list[int], set[str]]:
    """(rewritten rows, terms) of the delta for the BM25 lists. Only products whose BM25
    document changed count (``lexical_fields``: a new image or an attribute outside the
    filter fields leaves every score as it was); *rewritten*: the changed ones among them.
    The terms through which one can enter a list: all of a new product's terms; a rewritten
    one's new terms (all of them when it lost some, since a shorter document scores higher
    on the rest)."""
    def terms_of(p) -> set[str]:
        title, values = lexical_fields(p)
        return set(lexical.terms(" ".join([title, *(v for v in values if v)])))

    delta_terms: set[str] = set()
    rewritten = []
    for row, p in zip(upsert_rows.tolist(), upsert_products):
        was = old_products.get(row)
        if was is not None and lexical_fields(was) == lexical_fields(p):
            continue
        new_terms = terms_of(p)
        old_terms = terms_of(was) if was is not None else set()
        delta_terms |= new_terms if (was is None or old_terms - new_terms) else new_terms - old_terms
        if was is not None:
            rewritten.append(row)
    return rewritten, delta_terms


def _refresh_lexical(lexical: LexicalIndex, queries: list[str], constraints_of: dict, signatures: np.ndarray,
                     lists: _Lists, candidates: np.ndarray, deleted_rows: set[int], rewritten: list[int],
                     delta_terms: set[str], top_k: int) -> int:
    """The stored BM25 lists of the ``candidates`` entries, in place (``_delta_terms`` gives
    ``rewritten`` and ``delta_terms``). A list is searched again (tantivy, the new index) when
    it lists a rewritten product, when a deleted member leaves a hole in a full list, or when
    it shares one of ``delta_terms``. A deleted member of a list that held every match is
    removed in place; the rest are copied. Entries with the same terms (in order) and
    constraints share one search. Returns the searches made."""
    dead = np.fromiter(deleted_rows, np.int64)
    holds_rewritten = np.isin(lists.lex_rows, np.asarray(rewritten, np.int64)).any(axis=1)
    holds_dead = np.isin(lists.lex_rows, dead)
    full = lists.lex_rows[:, -1] >= 0
    found: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for e in np.flatnonzero(candidates & (holds_rewritten | holds_dead.any(axis=1) | bool(delta_terms))):
        terms = lexical.terms(queries[e])
        if holds_rewritten[e] or (full[e] and holds_dead[e].any()) or delta_terms.intersection(terms):
            key = (tuple(terms), int(signatures[e]))
            if key not in found:
                constraints = constraints_of[int(signatures[e])]
                found[key] = lexical.search(queries[e], top_k, {c.field: list(c.values) for c in constraints} or None)
            s_, r_ = found[key]
        elif holds_dead[e].any():  # the list held every match: removing the deleted ones is exact
            stay = (lists.lex_rows[e] >= 0) & ~holds_dead[e]
            s_, r_ = lists.lex_scores[e][stay], lists.lex_rows[e][stay]
        else:
            continue
        lists.lex_scores[e], lists.lex_rows[e] = -np.inf, -1
        lists.lex_scores[e, :len(r_)], lists.lex_rows[e, :len(r_)] = s_, r_
    return len(found)


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
