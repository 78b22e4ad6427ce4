"""The retrieval engine over a published index version.

``Engine.open(index_dir).search(text, k, filters, channels, auto_constraints)``:

1. Constraints: query understanding (lexicon) gives auto constraints; caller ``filters``
   add more and replace an auto constraint on the same field; ``off`` drops auto ones by
   field. Query understanding is cached per normalised query text (LRU). The row mask is
   ANDs/ORs of bitmaps precomputed at load per (field, value) (``index.masks``; no
   inverted-index call per request), the last sets kept in an LRU.
   Null-result recovery: while fewer than ``relax_below`` products satisfy them all, one
   auto constraint is dropped (the earliest in ``relax_order`` whose drop suffices, else
   the earliest) and reported in ``SearchResult.relaxed``; caller filters are never dropped.
2. Embedding channel: the qid table stores each logged query's top-K computed offline
   under the query's own auto constraints. A hit answers from it when the request's
   constraints are those (the default), or, for an unconstrained entry, post-filtered when
   at least the fusion depth (below) survives or the list holds every allowed product. Otherwise (and on a
   miss) the query is encoded and searched in the ANN index; a logged query is not encoded
   again: its embedding stored with the qid table (``query_vectors.npy``) is searched, here
   and in the short-list fill (step 6). A selective filter
   (< ``filter_selective_fraction`` of the catalog) runs inside the ANN scan via an ID
   selector with ``nprobe``/``efSearch`` widened by 1/selectivity; a broad one over-fetches
   ``depth / share * overfetch_factor`` (sized from the filter's share of the catalog) and
   post-filters.
   When either returns fewer than min(k, allowed) rows, an exact scan of the allowed rows'
   vectors completes it.
3. Lexical channel: BM25 (tantivy) with the same Boolean filter; a logged query answers from
   the BM25 list the qid table stores for it (same rules as the embedding channel's list).
4. Merge: weighted reciprocal-rank fusion, score = sum over channels of
   w_c / (rrf_k + rank_c), w_lexical = ``lexical_weight``, w_embedding = 1 - lexical_weight;
   duplicates merge into one hit listing every channel that found it. The ranking is built
   in windows of ``fusion_depth`` (D): ranks 1..D are the fusion of each channel's top D,
   ranks D+1..2D the fusion of each channel's top 2D less the rows already placed, and so
   on; every channel fetches ``D * ceil((offset + k) / D)`` results and hits
   ``offset .. offset + k`` are cut from that ranking. So the order never depends on k or
   on the page: pages of one query concatenate to the single request for ``offset + n``.
   Soft preferences (ambiguous mined terms) add ``soft_weight / (rrf_k + 1)`` to the
   fused score of each hit that matches them.
5. Every hit is checked against the row mask: a result never violates an active constraint.
6. Short lists filled: when the constraints allow fewer than offset + k products, the rest
   are the nearest products (same channels) with the auto constraints on
   ``fill_relax_order``'s fields dropped, one more field at a time; category, brand and
   caller filters are kept. Those hits rank after every exact one, are marked ``relaxed``
   and satisfy every kept constraint; ``SearchResult.fill_relaxed`` lists the constraints
   they were allowed to break. A logged query's relaxed lists come from the qid table
   where the build stored them for that constraint set (``index.fill_lists``; deep enough
   for any page of up to its K results), so a filled logged query does no search.

``reload_if_changed()`` (called per request) compares the ``current`` link target with the
loaded version (one readlink) and swaps in a new version under a lock (requests arriving
meanwhile wait for it); a failing load keeps serving the old version. ``upsert(products)``
and ``delete(ids)`` apply a live update (``index.update``) and serve it before returning.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlsearch.catalog import Product
from vlsearch.config import IndexConfig, ServeConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.index.builder import current_version
from vlsearch.index.fill_lists import fill_steps
from vlsearch.index.lexical import FILTER_FIELDS, check_filter
from vlsearch.index.store import FilterPolicy
from vlsearch.index.understanding import Constraint, constraint_signature
from vlsearch.index.update import update_index
from vlsearch.serving.results import CHANNELS, Hit, SearchResult
from vlsearch.serving.version import IndexVersion, inside_dirs
from vlsearch.validation import TextLimits, check_filters, check_query, parse_int

log = logging.getLogger(__name__)


class Engine:
    """Thread-safe searcher over ``index_dir/current``; see the module docstring."""

    def __init__(self, index_dir: Path, state: IndexVersion, config: ServeConfig, retriever=None):
        self.index_dir = index_dir
        self.config = config
        self._state = state
        self._link_target = self._read_link()
        self._retriever = retriever
        self._reload_lock = threading.Lock()
        self.limits = TextLimits.from_config(config)
        self.policy = FilterPolicy(config.filter_selective_fraction, config.overfetch_factor,
                                   config.filter_widen_search)

    @classmethod
    def open(cls, index_dir: str | Path, config: ServeConfig | None = None, retriever=None) -> Engine:
        """Load the published version; ``retriever`` overrides the model copied into it."""
        index_dir = Path(index_dir)
        config = config or ServeConfig()
        state = IndexVersion(current_version(index_dir), config, retriever)
        return cls(index_dir, state, config, retriever)

    # --- versions ---------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._state.name

    @property
    def n_products(self) -> int:
        return self._state.n

    def _read_link(self) -> str | None:
        """The published version, relative to ``index_dir``: the store's own pointer where it
        has one (Milvus: the alias), else the ``current`` symlink."""
        try:
            published = self._state.store.published_version()
        except WorkdirError as exc:  # the store is unreachable: keep what is loaded
            log.warning("cannot read the published version: %s", exc)
            return getattr(self, "_link_target", None)
        if published is not None:
            return os.path.join("versions", published)
        try:
            return os.readlink(self.index_dir / "current")
        except OSError:
            return None

    def reload_if_changed(self) -> bool:
        """Swap in a newly published version; True when one was loaded. Never raises."""
        target = self._read_link()
        if target is None or target == self._link_target:
            return False
        # wait while another request loads it: once a version is published, no request that
        # starts afterwards is answered from the old one (a live delete stays deleted)
        with self._reload_lock:
            if self._read_link() == self._link_target:
                return False
            target = self._read_link()
            try:
                state = IndexVersion(current_version(self.index_dir / target), self.config, self._retriever,
                                 previous=self._state)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the loaded version serving
                log.warning("index reload from %s failed, keeping %s: %s", self.index_dir, self.version, exc)
                self._link_target = target
                return False
            self._state, self._link_target = state, target
            log.info("index reloaded: now serving %s", state.name)
            return True

    # --- live updates -------------------------------------------------------------------------
    def upsert(self, products: Sequence, config: IndexConfig | None = None):
        """Add or replace ``products`` (``catalog.Product``) in the index as a new version
        (``index.update.update_index``); this engine serves it when the call returns."""
        return self._update(products, (), config)

    def delete(self, product_ids: Collection[str], config: IndexConfig | None = None):
        """Remove products by id (unknown ids are reported in the result, not fatal)."""
        return self._update((), [str(i) for i in product_ids], config)

    def _update(self, products, delete, config):
        report = update_index(self.index_dir, products, delete, self._state.retriever, config)
        self.reload_if_changed()
        return report

    # --- products ---------------------------------------------------------------------------
    def product(self, product_id: str) -> dict:
        state = self._state
        row = state.row_of.get(str(product_id))
        if row is None:
            raise KeyError(product_id)
        return state.product(row)

    def attributes_of(self, product_ids: Sequence[str]) -> list[dict[str, str]]:
        """Each product's catalog attributes ({} for an id not served); the dicts are shared
        (parsed once per row, ``ServeConfig.product_cache_size``): read them, do not change them."""
        state = self._state
        rows = [state.row_of.get(str(pid)) for pid in product_ids]
        return [state.product_attributes(row) if row is not None else {} for row in rows]

    def image_path(self, product_id: str) -> Path | None:
        """The catalog image of ``product_id``, resolved now and confined to the directories
        the version's images were in: None when it has none, is gone, or now resolves (a link
        put in its place) outside them."""
        state = self._state
        row = state.row_of.get(str(product_id))
        if row is None:
            raise KeyError(product_id)
        path = state.image_paths[row]
        if not path:
            return None
        real = os.path.realpath(path)
        if not inside_dirs(real, state.image_dirs):
            log.warning("product %s: image %s resolves to %s, outside the catalog; refused",
                        product_id, path, real)
            return None
        return Path(real) if os.path.isfile(real) else None

    def modal_weights(self, product_ids: Sequence[str]) -> list[dict[str, float] | None]:
        """The Modal Adaptation weights (modality -> weight) of each product, computed now by the
        index's model from the product's title and catalog images (the image CNN runs once per
        product: a debugging view, not the search path). None for an unknown id, or when the
        engine's encoder is not a vlsearch Retriever."""
        state = self._state
        retriever = state.retriever
        rows = [state.row_of.get(str(pid)) for pid in product_ids]
        known = [row for row in rows if row is not None]
        if not known or not hasattr(retriever, "modalities"):
            return [None] * len(rows)
        products = []
        for row in known:
            info = state.product(row)
            paths = state.all_image_paths[row] if state.all_image_paths else [state.image_paths[row]]
            products.append(Product(id=info["id"], title=info["title"], brand=info["brand"],
                                    category=info["category"], attributes=info["attributes"],
                                    image_paths=[p for p in paths if p and Path(p).is_file()]))
        _vectors, weights = retriever.encode_products(products, return_weights=True)
        names = list(retriever.modalities)
        by_row = {row: {name: float(w) for name, w in zip(names, weight)} for row, weight in zip(known, weights)}
        return [by_row.get(row) if row is not None else None for row in rows]

    # --- search -----------------------------------------------------------------------------
    def _check(self, text: Any, k: Any, channels, offset: Any = 0) -> tuple[str, int, tuple[str, ...]]:
        cfg = self.config
        text = check_query(text, self.limits)
        k = parse_int(int(k) if isinstance(k, np.integer) else k, "k", 1, cfg.max_k)
        offset = parse_int(int(offset) if isinstance(offset, np.integer) else offset, "offset", 0,
                           cfg.max_offset)
        channels = tuple(cfg.channels if not channels else channels)
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown or not channels:
            raise InputError(f"channels: unknown {unknown}; expected some of {list(CHANNELS)}")
        return text, k, tuple(dict.fromkeys(channels))

    def constraints(
        self, text: str, filters: Mapping[str, Sequence[str]] | None = None,
        auto_constraints: bool = True, off: Collection[str] = (),
    ) -> list[Constraint]:
        """Active constraints: caller filters, plus auto ones on fields neither filtered nor off."""
        return self._understand(text, filters, auto_constraints, off)[0]

    def _understand(self, text, filters, auto_constraints, off) -> tuple[list[Constraint], list[Constraint]]:
        """(active constraints, soft preferences on fields neither filtered nor off)."""
        state = self._state
        given = check_filter(check_filters(filters, self.limits))
        unknown_off = [f for f in off if f not in FILTER_FIELDS]
        if unknown_off:
            raise InputError(f"off: unknown fields {unknown_off}; expected some of {list(FILTER_FIELDS)}")
        active = [Constraint(field=f, values=tuple(v), source="filter") for f, v in given.items()]
        preferences: list[Constraint] = []
        if auto_constraints:
            active += [c for c in state.understand(text) if c.field not in given and c.field not in off]
            preferences = [c for c in state.preferences(text) if c.field not in given and c.field not in off]
        return active, preferences

    def search(
        self,
        text: str,
        k: int | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
        channels: Sequence[str] | None = None,
        auto_constraints: bool = True,
        off: Collection[str] = (),
        offset: int = 0,
        spelling: bool = True,
    ) -> SearchResult:
        """Hits ``offset .. offset + k`` of the fused ranking (see the module docstring)."""
        started = time.perf_counter()
        timings: dict[str, float] = {}
        text, k, channels = self._check(text, self.config.default_k if k is None else k, channels, offset)
        offset = int(offset)
        depth = self._window_depth(offset + k)  # what each channel fetches
        if self.config.reload_check:
            self.reload_if_changed()
        state = self._state  # one version for the whole request
        # a logged query (in the qid table) is searched as logged, never "corrected"
        correction = (state.speller.correct(text) if spelling and state.speller is not None
                      and state.qid.lookup(state.query_id(text)) is None else None)
        if correction is not None:
            text = correction.text  # search the corrected query (the typed one is in corrected_from)
        understood, preferences = self._understand(text, filters, auto_constraints, off)
        active, relaxed = self._relax(state, understood)
        mask = state.mask(active) if active else None
        allowed = int(mask.sum()) if mask is not None else None
        timings["constraints_ms"] = (time.perf_counter() - started) * 1000

        qid = state.query_id(text)
        # a logged query is never encoded at request time: its embedding is in the version
        vector = state.query_vector(qid) if self.config.qid_table else None
        lists, qid_hit, path = self._channel_lists(state, text, qid, vector, channels, depth, active, mask,
                                                   allowed, timings)
        boosts = [state.mask([p]) for p in preferences]
        hits = self._merge(state, lists, mask, offset, k, boosts)
        fill_relaxed: list[Constraint] = []
        if mask is not None and allowed < offset + k and len(hits) < k and self.config.fill_relax_order:
            t = time.perf_counter()
            exact = {int(r) for _, rows in lists.values() for r in np.asarray(rows).tolist()
                     if r >= 0 and mask[r] and state.live[r]}
            fill_relaxed = self._fill(state, text, offset, k, active, exact, hits, channels, boosts, vector,
                                      qid)
            timings["fill_ms"] = (time.perf_counter() - t) * 1000
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return SearchResult(query=text, hits=hits, constraints=active, qid=qid, qid_hit=qid_hit,
                            timings=timings, channels=channels, version=state.name, allowed=allowed,
                            embedding_path=path, relaxed=relaxed, offset=offset, preferences=preferences,
                            fill_relaxed=fill_relaxed,
                            corrected_from=correction.original if correction and correction.changed else None,
                            unknown_terms=correction.unknown if correction else [])

    def _channel_lists(self, state: IndexVersion, text: str, qid, vector, channels, depth: int,
                       active: list[Constraint], mask, allowed, timings: dict[str, float]):
        """Each channel's ranked (scores, rows) under the active constraints: from the qid
        table where the query is logged under these constraints, else searched. Returns
        (lists, qid hit, embedding path)."""
        signature = constraint_signature(active)
        qid_hit, path = False, ""
        lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if "embedding" in channels:
            t = time.perf_counter()
            stored = self._stored(state, state.qid.lookup(qid), depth, mask, allowed, signature) \
                if self.config.qid_table else None
            if stored is not None:
                qid_hit, path = True, "qid"
                lists["embedding"] = stored
            else:
                path, *lists["embedding"] = self._embedding(state, text, depth, mask, allowed, active, vector)
            timings["embedding_ms"] = (time.perf_counter() - t) * 1000
        if "lexical" in channels:
            t = time.perf_counter()
            stored = self._stored(state, state.qid.lookup_lexical(qid), depth, mask, allowed, signature) \
                if self.config.qid_table and state.stored_lexical else None
            if stored is None:
                filt = {c.field: list(c.values) for c in active}
                stored = state.lexical.search(text, depth, filt or None)
            lists["lexical"] = stored
            timings["lexical_ms"] = (time.perf_counter() - t) * 1000
        return lists, qid_hit, path

    def _fill(self, state: IndexVersion, text: str, offset: int, k: int, active: list[Constraint],
              exact: set[int], hits: list[Hit], channels, boosts, vector=None, qid=None) -> list[Constraint]:
        """Short-list fill (module docstring, step 6): appends the relaxed hits of ranks
        offset .. offset + k to ``hits`` (in place); returns the constraints they may break.
        The relaxed ranking continues the exact one: first the nearest products with the
        first field of ``fill_relax_order`` dropped, then those with the next one dropped too."""
        ranked: list[Hit] = []  # relaxed ranking, in order, rows not exact
        seen = set(exact)
        dropped: list[Constraint] = []
        need = offset + k - len(exact)  # relaxed ranks up to the end of this page
        for kept, dropped in fill_steps(active, self.config.fill_relax_order):
            mask = state.mask(kept) if kept else None
            allowed = int(mask.sum()) if mask is not None else state.n
            # every step fetches what the exact search fetched plus the rows it skips, so
            # the relaxed ranking, like the exact one, does not depend on k within the depth
            depth = max(self.config.fusion_depth, offset + k) + len(seen)
            lists = self._fill_lists(state, text, qid, vector, channels, depth, kept, mask, allowed)
            # the ranking does not depend on k: its first len(seen) + (need - len(ranked)) hits
            # hold every relaxed hit this page can take from the step
            for hit in self._merge(state, lists, mask, 0, len(seen) + need - len(ranked), boosts):
                if hit.row not in seen:
                    seen.add(hit.row)
                    ranked.append(hit)
            if len(ranked) >= need:
                break
        page = ranked[max(0, offset - len(exact)):need][:k - len(hits)]
        if page and hits and page[0].score > hits[-1].score:  # relaxed hits score below exact ones
            scale = hits[-1].score / page[0].score
            for hit in page:
                hit.score *= scale
        for before, hit in itertools.pairwise(page):  # a later step never outscores an earlier one
            hit.score = min(hit.score, before.score)
        for hit in page:
            hit.relaxed = True
        hits.extend(page)
        return dropped if page else []

    def _fill_lists(self, state: IndexVersion, text: str, qid, vector, channels, depth: int,
                    kept: list[Constraint], mask, allowed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each channel's list of one fill step: stored with the qid table for this logged
        query and constraint set when deep enough (``index.fill_lists``), else searched."""
        stored = state.fill_list(qid, constraint_signature(kept)) \
            if qid is not None and self.config.qid_table and self.config.qid_fill else None
        lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if "embedding" in channels:
            found = stored.lists("embedding", depth) if stored is not None else None
            lists["embedding"] = found if found is not None else \
                tuple(self._embedding(state, text, depth, mask, allowed, kept, vector)[1:])
        if "lexical" in channels:
            found = stored.lists("lexical", depth) if stored is not None else None
            lists["lexical"] = found if found is not None else \
                state.lexical.search(text, depth, {c.field: list(c.values) for c in kept} or None)
        return lists

    def _relax(self, state: IndexVersion, active: list[Constraint]) -> tuple[list[Constraint], list[Constraint]]:
        """Null-result recovery (see ``ServeConfig.relax_below``): the constraints kept and
        the auto ones dropped, in the order they were dropped."""
        need, order = self.config.relax_below, self.config.relax_order
        relaxed: list[Constraint] = []

        def enough(constraints: list[Constraint]) -> bool:
            return not constraints or int(state.mask(constraints).sum()) >= need

        while not enough(active):
            candidates = sorted((c for c in active if c.source == "auto"),
                                key=lambda c: order.index(c.field) if c.field in order else len(order))
            if not candidates:
                break  # only the caller's filters are left: an empty answer is what they asked for
            drop = next((c for c in candidates if enough([x for x in active if x is not c])),
                        candidates[0])
            active = [c for c in active if c is not drop]
            relaxed.append(drop)
        return active, relaxed

    @staticmethod
    def _stored(state: IndexVersion, found, k: int, mask, allowed, signature: int):
        """A channel's list stored offline, usable for this request: (scores, rows) or None.

        Usable when stored under the request's constraints, or stored unconstrained and
        post-filtered by the request's mask, and then either at least ``k`` long or complete
        (a list shorter than the table's K holds every match; one holding every allowed row)."""
        if found is None:
            return None
        rows, scores, stored_sig = found
        complete = len(rows) >= state.n or len(rows) < state.qid.top_k  # n: live products
        if stored_sig == signature:
            pass  # answered offline under these very constraints
        elif stored_sig == 0 and mask is not None:
            keep = mask[rows]
            rows, scores = rows[keep], scores[keep]
            complete = complete or len(rows) == allowed  # every allowed product is in the list
        else:
            return None  # stored under other constraints: answer live
        if len(rows) >= k or complete:
            return scores[:k], rows[:k]
        return None

    def _embedding(self, state: IndexVersion, text: str, k: int, mask, allowed, active, vector=None):
        """The ANN channel under ``active``; ``vector``: the query's stored embedding (else encoded)."""
        vec = vector if vector is not None else np.asarray(state.encoder.encode_queries([text]), np.float32)[0]
        constraints = {c.field: list(c.values) for c in active} or None
        return state.store.constrained_search(vec, k, constraints, mask, allowed)

    def _window_depth(self, ranks: int) -> int:
        """Results each channel fetches for the first ``ranks`` fused ranks: whole windows."""
        window = self.config.fusion_depth
        return window * max(1, -(-ranks // window))

    def _fuse_window(self, unique: np.ndarray, entries, top: int, placed: np.ndarray,
                     boosts: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The next window of the ranking: the fusion of each channel's top ``top`` rows less the
        rows ``placed`` by earlier windows, best ``fusion_depth`` first (ties: earliest rank,
        then channel, then row). Returns their indices into ``unique`` and fused scores."""
        cfg = self.config
        rows, rank, contrib, channel = (a[entries[1] < top] for a in entries)
        seen, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        fused = np.bincount(inverse, weights=contrib, minlength=len(seen))
        for boost in boosts:  # soft preferences: a fraction of a rank-1 score per preference met
            fused = fused + boost[seen] * (cfg.soft_weight / (cfg.rrf_k + 1))
        slot = np.searchsorted(unique, seen)
        fresh = ~placed[slot]
        # first occurrence in channel order: the earliest channel that found the row
        keys = (seen[fresh], channel[first][fresh], rank[first][fresh], -fused[fresh])
        order = np.lexsort(keys)[:cfg.fusion_depth]
        return slot[fresh][order], fused[fresh][order]

    def _merge(self, state: IndexVersion, lists, mask, offset: int, k: int,
               boosts: Sequence[np.ndarray] = ()) -> list[Hit]:
        """Fuse the channel lists into one ranking, window by window (see the module
        docstring), soft preferences boosting the rows of their ``boosts`` masks, and cut hits
        ``offset .. offset + k`` from it (vectorised in numpy)."""
        cfg = self.config
        weights = {"embedding": 1.0 - cfg.lexical_weight, "lexical": cfg.lexical_weight}
        parts_rows, parts_contrib, parts_rank, parts_channel = [], [], [], []
        for c_index, (channel, (_, rows)) in enumerate(lists.items()):
            rows = np.asarray(rows, dtype=np.int64)
            rank = np.arange(len(rows))
            keep = rows >= 0
            keep &= state.live[np.where(keep, rows, 0)]  # never a deleted product (tombstone row)
            if mask is not None:
                keep &= mask[np.where(keep, rows, 0)]  # never return a product that violates a constraint
            rows, rank = rows[keep], rank[keep]
            parts_rows.append(rows)
            parts_rank.append(rank)
            parts_contrib.append(weights[channel] / (cfg.rrf_k + rank + 1.0))
            parts_channel.append(np.full(len(rows), c_index))
        if not parts_rows or not sum(len(r) for r in parts_rows):
            return []
        all_rows, all_rank = np.concatenate(parts_rows), np.concatenate(parts_rank)
        all_contrib, all_channel = np.concatenate(parts_contrib), np.concatenate(parts_channel)
        unique = np.unique(all_rows)
        placed_at = np.zeros(len(unique), dtype=np.int64)  # the window top a row was ranked in (0: not yet)
        fused = np.zeros(len(unique))
        ranking: list[np.ndarray] = []
        window, end = cfg.fusion_depth, offset + k
        for top in range(window, self._window_depth(end) + 1, window):
            placed, scores_here = self._fuse_window(unique, (all_rows, all_rank, all_contrib, all_channel),
                                                    top, placed_at > 0, boosts)
            placed_at[placed], fused[placed] = top, scores_here
            ranking.append(placed)
        order = np.concatenate(ranking)[offset:end]
        if not len(order):
            return []
        # per channel: row -> (rank in its list, its score); a channel counts for a hit only
        # where it ranked the row inside the window the hit was placed in
        ranked = [{r: (i, sc) for i, (r, sc) in enumerate(zip(np.asarray(rows).tolist(), np.asarray(scores).tolist()))}
                  for scores, rows in lists.values()]
        names = list(lists)
        hits = []
        for idx in order.tolist():
            r, top = int(unique[idx]), int(placed_at[idx])
            found = {name: float(ranked[c][r][1]) for c, name in enumerate(names) if ranked[c].get(r, (top,))[0] < top}
            hits.append(Hit(product_id=state.ids[r], score=float(fused[idx]), channels=tuple(found),
                            title=state.titles[r], brand=state.brands[r], category=state.categories[r],
                            row=r, channel_scores=found))
        return hits
