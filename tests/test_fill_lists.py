"""Short-list fill lists stored with the qid table (issue 10): on a real-catalog subset a filled
logged query served from them equals the live fill (ids, order, scores, relaxed flags) and
makes no ANN, BM25 or encoder call; a table without them (an older build) loads and serves as
before; after a live update that touches filled entries the served result still equals the
live fill and a fresh build's; on the Milvus backend logged queries use the stored query
vectors and fill lists too."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from index_helpers import HashEncoder, build_synthetic_index, synthetic_products, synthetic_queries

from vlsearch.catalog import Product
from vlsearch.config import IndexConfig, ServeConfig
from vlsearch.index.builder import current_version
from vlsearch.index.fill_lists import FillLists
from vlsearch.index.update import update_index
from vlsearch.serving.engine import Engine

N_REAL = 1500  # real-catalog rows indexed
PAGES = [(100, 0), (10, 0), (20, 40)]  # (k, offset) asked of every logged query


def _queries(products: list[Product]) -> list[str]:
    """Narrow logged queries from real product attributes (brand, gender, colour, usage,
    article type): most allow fewer products than a page, so the fill runs."""
    out = []
    for i, p in enumerate(products[:700]):
        a = p.attributes
        parts = [[p.brand, a.get("gender"), a.get("colour"), p.category],
                 [a.get("colour"), a.get("usage"), p.category],
                 [a.get("gender"), a.get("colour"), a.get("usage"), p.category]][i % 3]
        out.append(" ".join(x for x in parts if x).lower())
    return list(dict.fromkeys(out))


def _build(out, products, queries, **config):
    build_synthetic_index(out, products, HashEncoder(64), IndexConfig(kind="flat", **config), queries=queries)


@pytest.fixture(scope="module")
def real(tmp_path_factory, fashion_dir):
    from vlsearch.catalog import load_catalog

    products = load_catalog(fashion_dir, limit=N_REAL).products
    queries = _queries(products)
    out = tmp_path_factory.mktemp("fill-real")
    _build(out, products, queries)
    return out, products, queries


def _served(result) -> list[tuple]:
    return [(h.product_id, h.relaxed, round(h.score, 9), h.channels) for h in result.hits]


def _same(a, b) -> None:
    assert _served(a) == _served(b), a.query
    assert [str(c) for c in a.fill_relaxed] == [str(c) for c in b.fill_relaxed], a.query


SCORE_ATOL = 1e-4  # float32 inner products of two engines (FAISS, Milvus) agree to about 1e-5


def _same_up_to_ties(a, b) -> None:
    """Embedding-channel results: the same product scores and relaxed flags rank by rank, and
    the same products within every run of tied scores but the last (a product tied with the
    last one may sit just outside the page): products of one title have one vector, and two
    indexes may order them differently."""
    scores = [np.array([h.channel_scores["embedding"] for h in r.hits]) for r in (a, b)]
    assert [h.relaxed for h in a.hits] == [h.relaxed for h in b.hits], a.query
    np.testing.assert_allclose(scores[0], scores[1], atol=SCORE_ATOL, err_msg=a.query)
    groups: list[list[int]] = []
    for i, (score, hit) in enumerate(zip(scores[0], a.hits)):
        first = groups[-1][0] if groups else None
        if first is not None and abs(scores[0][first] - score) <= SCORE_ATOL and a.hits[first].relaxed == hit.relaxed:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups[:-1]:
        assert {a.hits[i].product_id for i in group} == {b.hits[i].product_id for i in group}, a.query


def _stored_and_live(index_dir):
    stored = Engine.open(index_dir, retriever=HashEncoder(64))
    live = Engine.open(index_dir, ServeConfig(qid_fill=False), retriever=HashEncoder(64))
    return stored, live


def test_filled_logged_queries_from_stored_lists_equal_the_live_fill(real):
    index_dir, _, queries = real
    stored, live = _stored_and_live(index_dir)
    assert stored._state.fill is not None and len(stored._state.fill) > 0
    filled = 0
    for q in queries:
        for k, offset in PAGES:
            a, b = stored.search(q, k=k, offset=offset), live.search(q, k=k, offset=offset)
            _same(a, b)
            filled += bool(a.fill_relaxed) and k == 100
    assert filled >= 100, filled
    for q in queries[:60]:  # one channel alone
        for channels in (["embedding"], ["lexical"]):
            _same(stored.search(q, k=100, channels=channels), live.search(q, k=100, channels=channels))


class _Counted:
    """Counts calls of ``obj.name`` (an instance attribute shadowing the method)."""

    def __init__(self, obj, names, calls: dict):
        for name in names:
            method, label = getattr(obj, name), f"{type(obj).__name__}.{name}"

            def counted(*args, _method=method, _name=label, **kwargs):
                calls[_name] = calls.get(_name, 0) + 1
                return _method(*args, **kwargs)

            setattr(obj, name, counted)


def _count_searches(engine) -> dict:
    state, calls = engine._state, {}
    _Counted(state.store, ["search", "constrained_search", "constrained_search_many"], calls)
    _Counted(state.lexical, ["search"], calls)
    _Counted(state.encoder, ["encode_queries"], calls)
    return calls


def _filled_without_search(engine, queries, calls: dict, k: int, channels=None) -> int:
    """Asserts that every logged query answered under its own constraints (no null-result
    recovery) made no store, BM25 or encoder call; returns how many of them were filled."""
    filled = 0
    for q in queries:
        calls.clear()
        res = engine.search(q, k=k, channels=channels)
        if res.qid_hit and not res.relaxed:
            assert calls == {}, (q, calls)
            filled += bool(res.fill_relaxed)
            assert not res.fill_relaxed or ("fill_ms" in res.timings and res.hits[-1].relaxed)
    return filled


def test_a_filled_logged_query_makes_no_search(real):
    index_dir, products, queries = real
    engine = Engine.open(index_dir, retriever=HashEncoder(64))
    calls = _count_searches(engine)
    assert _filled_without_search(engine, queries, calls, k=100) >= 100
    # a caller filter outside the query's own constraints: its fill is searched live
    q = next(q for q in queries if engine.search(q, k=100).fill_relaxed)
    brand = next(p.brand for p in products if p.brand and p.brand.lower() not in q)
    engine.search(q, k=100, filters={"brand": [brand]})
    assert calls


def test_a_table_without_fill_lists_loads_and_serves_as_before(real, tmp_path):
    index_dir, _, queries = real
    shutil.copytree(index_dir, tmp_path / "old", symlinks=True)
    qid_dir = current_version(tmp_path / "old") / "qid"
    FillLists.remove(qid_dir)
    assert not list(qid_dir.glob("fill_*")) and (qid_dir / "qids.npy").exists()
    old = Engine.open(tmp_path / "old", retriever=HashEncoder(64))
    assert old._state.fill is None and old._state.query_vectors is not None
    stored = Engine.open(index_dir, retriever=HashEncoder(64))
    for q in queries[::4]:
        _same(old.search(q, k=100), stored.search(q, k=100))


def test_update_touching_filled_entries_still_equals_the_live_fill_and_a_fresh_build(real, tmp_path):
    _, products, queries = real
    _build(tmp_path / "live", products, queries)
    engine = Engine.open(tmp_path / "live", retriever=HashEncoder(64))
    fill = engine._state.fill
    relaxed = list(dict.fromkeys(h.product_id for q in queries[:200] for h in engine.search(q, k=100).hits
                                 if h.relaxed))
    gone = relaxed[0]  # a product in stored fill lists, deleted
    twin = next(p for p in products if p.id == relaxed[1])  # a new copy enters them
    changed = next(p for p in products if p.id == relaxed[2])
    new = [dataclasses.replace(twin, id="new-twin"),
           dataclasses.replace(changed, title=changed.title + " Limited Edition")]
    report = update_index(tmp_path / "live", new, [gone], HashEncoder(64))
    assert 0 < report.qid_fill_dropped < len(fill)

    # the final catalog in the updated version's row order (changed in place, new appended)
    final = [new[1] if p.id == changed.id else p for p in products if p.id != gone] + [new[0]]
    _build(tmp_path / "fresh", final, queries)
    stored, live = _stored_and_live(tmp_path / "live")
    fresh = Engine.open(tmp_path / "fresh", ServeConfig(qid_fill=False), retriever=HashEncoder(64))
    assert stored._state.fill is not None and len(stored._state.fill) == len(fill) - report.qid_fill_dropped
    entered = 0
    for q in queries:
        a = stored.search(q, k=100)
        _same(a, live.search(q, k=100))
        dense, rebuilt = stored.search(q, k=100, channels=["embedding"]), fresh.search(q, k=100, channels=["embedding"])
        _same_up_to_ties(dense, rebuilt)
        assert gone not in {h.product_id for h in a.hits}
        entered += any(h.product_id == "new-twin" and h.relaxed for h in a.hits)
    assert entered  # the new product is in some filled query's relaxed hits


def test_milvus_logged_queries_use_stored_vectors_and_fill_lists(tmp_path):
    products = synthetic_products(300)
    queries = list(dict.fromkeys(synthetic_queries(products) + [
        f"{p.brand} {p.attributes['gender']} {p.attributes['colour']} {p.category}".lower() for p in products[:60]]))
    config = IndexConfig(kind="flat", backend="milvus", milvus_uri=str(tmp_path / "milvus.db"),
                         milvus_lexical=False)
    build_synthetic_index(tmp_path, products, HashEncoder(), config, queries=queries)
    engine = Engine.open(tmp_path, retriever=HashEncoder())
    assert type(engine._state.qid).__name__ == "MilvusQidTable"
    assert engine._state.fill is not None and engine._state.query_vectors is not None
    # the stored lists were searched on an exact FAISS copy (builder.exact_store), the live
    # ones on the Milvus flat collection: the same up to the order of tied scores
    served = {q: engine.search(q, k=30, channels=["embedding"]) for q in queries}
    engine.config = dataclasses.replace(engine.config, qid_fill=False)
    filled = 0
    for q, res in served.items():
        live = engine.search(q, k=30, channels=["embedding"])
        _same_up_to_ties(res, live)
        assert [str(c) for c in res.fill_relaxed] == [str(c) for c in live.fill_relaxed], q
        filled += bool(res.fill_relaxed)
    assert filled >= 10 and len(engine._state.fill) > 0
    engine.config = dataclasses.replace(engine.config, qid_fill=True)
    # logged: stored vectors, lists and fill lists, no encoding and no search (BM25 lists are
    # stored in the files, not in the qid collection: that channel searches live on Milvus)
    calls = _count_searches(engine)
    assert _filled_without_search(engine, queries, calls, k=30, channels=["embedding"]) >= 10
    calls.clear()
    engine.search(queries[0], k=30)
    assert set(calls) == {"LexicalIndex.search"}
