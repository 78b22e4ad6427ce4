"""Engine: constraints never violated (property test), qid hit == live encode + ANN, filters
and auto constraints, bad input, and publishing new versions while searches run."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from index_helpers import (
    HashEncoder,
    build_synthetic_index,
    sample_index,
    search_while,
    synthetic_products,
)

from vlsearch.config import IndexConfig, ServeConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.index.lexical import FILTER_FIELDS, normalize_value, product_value
from vlsearch.serving.batch import search_queries_file
from vlsearch.serving.engine import Engine


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_catalog_dir):
    return sample_index(tmp_path_factory, sample_catalog_dir)


@pytest.fixture(scope="module")
def engine(built):
    return Engine.open(built[0])


@pytest.fixture(scope="module")
def products(built):
    from vlsearch.workdir import Workdir

    return Workdir.open(built[1]).products()


def satisfies(product, constraints) -> bool:
    """Independent check (no index): every active constraint holds for ``product``."""
    return all(product_value(product, c.field) in c.values for c in constraints)


# --- the property: no result violates an active constraint ----------------------------------


@pytest.fixture(scope="module")
def vocabulary(engine, products):
    lex = engine._state.lexicon
    words = sorted({" ".join(p) for p in lex.phrases} | {w for p in products for w in p.title.lower().split()})
    values = {f: sorted({v for p in products if (v := product_value(p, f))}) for f in FILTER_FIELDS}
    return words, values


@pytest.fixture(scope="module")
def milvus_engine(built, tmp_path_factory):
    """The same sample index built on the Milvus backend (milvus-lite file, HNSW: approximate
    search with the filter inside it), so the property below runs on both backends."""
    from vlsearch.index.builder import build_index

    root = tmp_path_factory.mktemp("sample-milvus")
    config = IndexConfig(kind="hnsw", backend="milvus", milvus_uri=str(root / "milvus.db"),
                         milvus_prefix="sample")
    build_index(built[1], built[2], root / "index", config, progress=False)
    return Engine.open(root / "index")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_result_violates_an_active_constraint(engine, products, vocabulary, data):
    _check_no_result_violates(engine, products, vocabulary, data)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_result_violates_an_active_constraint_on_milvus(milvus_engine, products, vocabulary, data):
    assert milvus_engine._state.store.backend == "milvus"
    _check_no_result_violates(milvus_engine, products, vocabulary, data)


def _check_no_result_violates(engine, products, vocabulary, data):
    words, values = vocabulary
    text = " ".join(data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=4), label="terms"))
    fields = data.draw(st.lists(st.sampled_from(FILTER_FIELDS), max_size=2, unique=True), label="fields")
    filters = {f: data.draw(st.lists(st.sampled_from(values[f]), min_size=1, max_size=2), label=f)
               for f in fields if values[f]}
    k = data.draw(st.integers(1, 60), label="k")
    channels = data.draw(st.sampled_from([None, ["embedding"], ["lexical"]]), label="channels")
    result = engine.search(text, k=k, filters=filters, channels=channels)
    assert len(result.hits) <= k
    assert {c.field for c in result.constraints if c.source == "filter"} == set(filters)
    by_id = {p.id: p for p in products}
    fill = set(engine.config.fill_relax_order)
    kept = [c for c in result.constraints if c.source != "auto" or c.field not in fill]
    assert all(c.source == "auto" and c.field in fill for c in result.fill_relaxed)
    exact = [h for h in result.hits if not h.relaxed]
    assert result.hits[:len(exact)] == exact  # the exact matches come first
    for hit in exact:
        assert satisfies(by_id[hit.product_id], result.constraints), (text, filters, hit)
    for hit in result.hits[len(exact):]:  # filled: keep category, brand and caller filters
        assert satisfies(by_id[hit.product_id], kept), (text, filters, hit)
        assert not satisfies(by_id[hit.product_id], result.constraints), (text, filters, hit)
    satisfying = sum(satisfies(p, result.constraints) for p in products)
    assert all(c.source == "auto" for c in result.relaxed)  # caller filters are never relaxed
    if result.relaxed:  # only when nothing satisfied them all (relax_below = 1)
        assert not any(satisfies(p, result.constraints + result.relaxed) for p in products)
    assert result.allowed in (None, satisfying)
    if channels in (None, ["embedding"]):  # fewer than k exact only when fewer satisfy; then filled
        assert len(exact) == min(k, satisfying)
        assert len(result.hits) == min(k, sum(satisfies(p, kept) for p in products))
    assert len({h.product_id for h in result.hits}) == len(result.hits)  # de-duplicated


# --- qid table ------------------------------------------------------------------------------


def test_qid_hit_equals_live_encode_and_ann(built, engine):
    from vlsearch.workdir import Workdir

    live = Engine.open(built[0], ServeConfig(qid_table=False))
    queries = list(dict.fromkeys(Workdir.open(built[1]).clicks().column("query").to_pylist()))[:20]
    assert queries
    constrained = 0
    for text in queries:  # default request: the query's own auto constraints
        a = engine.search(text, k=50, channels=["embedding"])
        b = live.search(text, k=50, channels=["embedding"])
        assert a.qid_hit and a.embedding_path == "qid" and not b.qid_hit and b.embedding_path != "qid"
        assert a.constraints == b.constraints
        constrained += bool(a.constraints)
        assert [h.product_id for h in a.hits] == [h.product_id for h in b.hits]
        np.testing.assert_allclose([h.channel_scores["embedding"] for h in a.hits],
                                   [h.channel_scores["embedding"] for h in b.hits], atol=1e-5)
    assert constrained > 0
    other = engine.search(queries[0], k=50, filters={"usage": ["casual"]})  # not what was stored
    assert not other.qid_hit
    miss = engine.search("zz unlogged query words", k=10)
    assert not miss.qid_hit and miss.embedding_path == "ann"


# --- constraints ----------------------------------------------------------------------------


def test_auto_constraints_filters_override_and_off(engine, products):
    res = engine.search("nike shoes", k=20)
    fields = {c.field: c for c in res.constraints}
    assert fields["brand"].values == ("nike",) and fields["brand"].source == "auto"
    assert set(fields["category"].values) >= {"sports shoes"} and fields["category"].terms == ("shoes",)
    assert res.hits and all(h.brand == "Nike" for h in res.hits)
    other = engine.search("nike shoes", k=20, filters={"brand": ["Puma"]})
    assert {c.field: c.source for c in other.constraints}["brand"] == "filter"
    assert all(h.brand == "Puma" for h in other.hits)
    off = engine.search("nike shoes", k=20, off=["brand"])
    assert "brand" not in {c.field for c in off.constraints}
    assert engine.search("nike shoes", k=20, auto_constraints=False).constraints == []
    red_tape = {c.field: c.values for c in engine.search("red tape shoes for men", k=5).constraints}
    assert red_tape["brand"] == ("red tape",) and "colour" not in red_tape
    assert set(red_tape["gender"]) == {"men", "unisex"}


def _unmatched_gender_and_category(engine, products):
    """A typed query ("girls kurtas") whose gender and category each match products of the
    catalog but never together."""
    genders = sorted({product_value(p, "gender") for p in products} - {None})
    categories = sorted({p.category for p in products if p.category})
    for gender in genders:
        for category in categories:
            text = f"{gender} {category}"
            auto = {c.field: c for c in engine.constraints(text)}
            if set(auto) != {"gender", "category"}:
                continue
            if not any(satisfies(p, list(auto.values())) for p in products):
                return text, auto
    raise AssertionError("the sample catalog has every gender x category")


def test_null_result_recovery_relaxes_auto_constraints_not_filters(built, engine, products):
    text, auto = _unmatched_gender_and_category(engine, products)
    res = engine.search(text, k=20)
    assert [c.field for c in res.relaxed] == ["gender"]  # relax_order: gender before category
    assert [c.field for c in res.constraints] == ["category"] and res.allowed > 0
    assert res.hits and all(satisfies(next(p for p in products if p.id == h.product_id), [auto["category"]])
                            for h in res.hits)
    assert res.to_dict()["relaxed"][0]["field"] == "gender"
    strict = Engine.open(built[0], ServeConfig(relax_below=0, fill_relax_order=())).search(text, k=20)
    assert strict.hits == [] and strict.relaxed == [] and strict.allowed == 0
    # without null-result recovery the short (empty) list is filled: same category, gender relaxed
    filled = Engine.open(built[0], ServeConfig(relax_below=0)).search(text, k=20)
    assert filled.allowed == 0 and [c.field for c in filled.fill_relaxed] == ["gender"]
    assert filled.hits and all(h.relaxed for h in filled.hits)
    assert all(satisfies(next(p for p in products if p.id == h.product_id), [auto["category"]])
               for h in filled.hits)
    # the same gender asked as a filter is the caller's demand: the auto category goes instead
    gender = {"gender": list(auto["gender"].values)}
    filtered = engine.search(" ".join(auto["category"].terms), k=20, filters=gender)
    assert [c.field for c in filtered.relaxed] == ["category"]
    assert filtered.hits and all(satisfies(next(p for p in products if p.id == h.product_id),
                                           filtered.constraints) for h in filtered.hits)
    both = {**gender, "category": list(auto["category"].values)}
    only_filters = engine.search(text, k=20, filters=both)
    assert only_filters.hits == [] and only_filters.relaxed == []


def test_short_lists_are_filled_keeping_category_and_brand(tmp_path):
    """Constraints that allow fewer than k products: the rest are the nearest products of the
    same brand and category with colour (then usage, then gender) relaxed, flagged relaxed."""
    products = synthetic_products(400)
    enc = HashEncoder()
    build_synthetic_index(tmp_path, products, enc, IndexConfig(kind="flat", qid_top_k=50))
    engine = Engine.open(tmp_path, retriever=enc)
    res = engine.search("nike red men casual shoes", k=30)
    auto = {c.field: c for c in res.constraints}
    assert set(auto) == {"brand", "colour", "gender", "category"} and res.allowed < 30
    exact = [h for h in res.hits if not h.relaxed]
    relaxed = [h for h in res.hits if h.relaxed]
    assert len(exact) == res.allowed and relaxed and res.hits == exact + relaxed
    keep = [auto["brand"], auto["category"]]
    same_brand_category = [p for p in products if satisfies(p, keep)]
    assert len(res.hits) == min(30, len(same_brand_category))
    by_row = {h.row: products[h.row] for h in res.hits}
    assert all(satisfies(by_row[h.row], keep) for h in res.hits)  # category and brand always kept
    assert all(satisfies(by_row[h.row], res.constraints) for h in exact)
    assert all(not satisfies(by_row[h.row], res.constraints) for h in relaxed)
    assert {c.field for c in res.fill_relaxed} <= {"colour", "gender"} and "colour" in {
        c.field for c in res.fill_relaxed}
    scores = [h.score for h in res.hits]
    assert scores == sorted(scores, reverse=True)  # filled hits rank below the exact ones
    assert res.to_dict()["hits"][-1]["relaxed"] is True
    # a caller filter is never relaxed by the fill
    filt = engine.search("nike men casual shoes", k=30, filters={"colour": ["Red"]})
    assert all(products[h.row].attributes["colour"] == "Red" for h in filt.hits)
    # switched off: the short list stays short
    short = Engine.open(tmp_path, ServeConfig(fill_relax_order=()), retriever=enc)
    assert len(short.search("nike red men casual shoes", k=30).hits) == res.allowed


def test_selective_filter_runs_inside_the_ann_search(engine, products):
    brand = next(p.brand for p in products if p.brand)
    res = engine.search("shirt", k=300, filters={"brand": [brand]}, channels=["embedding"], auto_constraints=False)
    expected = sum(product_value(p, "brand") == normalize_value(brand) for p in products)
    assert len(res.hits) == expected and res.embedding_path in ("ann+selector", "ann+postfilter")
    assert engine.search("shirt", k=10, filters={"brand": ["no such brand"]}).hits == []


@pytest.mark.parametrize("kwargs,match", [
    ({"text": ""}, "non-empty"), ({"text": "   \t"}, "non-empty"), ({"text": "x" * 257}, "at most"),
    ({"text": b"\xff\xfe"}, "UTF-8"), ({"text": "ok", "k": 0}, "k"), ({"text": "ok", "k": 10**6}, "k"),
    ({"text": "ok", "k": True}, "k"), ({"text": "ok", "filters": {"size": ["xl"]}}, "size"),
    ({"text": "ok", "filters": {"brand": []}}, "no value"), ({"text": "ok", "channels": ["cf"]}, "channels"),
    ({"text": "ok", "off": ["size"]}, "off"),
])
def test_bad_input_raises_input_error(engine, kwargs, match):
    with pytest.raises(InputError, match=match):
        engine.search(**kwargs)


def test_search_queries_file_writes_trec(tmp_path, built, engine):
    from vlsearch.evaluation import read_trec_run

    queries = built[1] / "eval" / "test" / "queries.jsonl"
    run = search_queries_file(engine, queries, k=10, out=tmp_path / "run.trec")
    assert run and all(len(v) <= 10 for v in run.values())
    back, _ = read_trec_run(tmp_path / "run.trec")
    assert {q: v for q, v in back.items()} == {q: v for q, v in run.items() if v}


def test_open_refuses_missing_or_half_written_index(tmp_path):
    with pytest.raises(WorkdirError):
        Engine.open(tmp_path / "missing")
    (tmp_path / "versions" / "v000001-x").mkdir(parents=True)
    (tmp_path / "current").symlink_to("versions/v000001-x")
    with pytest.raises(WorkdirError, match="half-written"):
        Engine.open(tmp_path)


# --- publishing while searching -------------------------------------------------------------


def test_publish_while_searches_run(tmp_path):
    products = synthetic_products(300)
    enc = HashEncoder()
    config = IndexConfig(kind="ivf", qid_top_k=50, keep_versions=1)
    build_synthetic_index(tmp_path, products, enc, config)
    engine = Engine.open(tmp_path, retriever=enc)
    versions = set()

    def check(res):
        versions.add(res.version)
        assert all(satisfies(products[h.row], res.constraints) for h in res.hits if not h.relaxed)

    def publish_four():
        for _ in range(4):
            build_synthetic_index(tmp_path, products, enc, dataclasses.replace(config))
            time.sleep(0.05)

    errors = search_while(engine, publish_four, check)
    assert not errors, errors[:3]
    assert len(versions) >= 2 and engine.version == max(p.name for p in (tmp_path / "versions").iterdir())


def test_hit_attributes_are_the_catalog_attributes_parsed_once(engine, products):
    ids = [p.id for p in products[:5]]
    got = engine.attributes_of(ids + ["no-such-id"])
    assert got[:5] == [dict(p.attributes) for p in products[:5]] and got[5] == {}
    assert engine.attributes_of(ids)[0] is got[0]  # parsed once, then served from the LRU
    copy = engine.product(ids[0])
    copy["attributes"]["colour"] = "changed"  # a caller's copy: the cached row is untouched
    assert engine.attributes_of(ids[:1])[0] == dict(products[0].attributes)
