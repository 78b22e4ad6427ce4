"""Ranking does not depend on k (fusion depth), pagination pages concatenate, and the
inference path: the loaded model stays in eval mode, length-sorted product encoding
returns the same vectors in the same order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from index_helpers import sample_index

from vlsearch.config import ServeConfig
from vlsearch.errors import InputError
from vlsearch.index.lexical import FILTER_FIELDS, product_value
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


def ids(result) -> list[str]:
    return [h.product_id for h in result.hits]


def test_top10_identical_for_k10_and_k100_on_every_test_query(built, engine):
    from vlsearch.evaluation import read_beir_queries

    queries = read_beir_queries(built[1] / "eval" / "test" / "queries.jsonl")
    assert len(queries) >= 20
    live = Engine.open(built[0], ServeConfig(qid_table=False), retriever=engine._state.retriever)
    for query in queries:
        for eng in (engine, live):
            small, large = eng.search(query.text, k=10), eng.search(query.text, k=100)
            assert ids(small) == ids(large)[:10], query.text
            assert [h.score for h in small.hits] == [h.score for h in large.hits[:10]]


@pytest.fixture(scope="module")
def vocabulary(engine, products):
    words = sorted({w for p in products for w in p.title.lower().split()})
    values = {f: sorted({v for p in products if (v := product_value(p, f))}) for f in FILTER_FIELDS}
    return words, values


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ranking_is_independent_of_k(engine, vocabulary, data):
    words, values = vocabulary
    text = " ".join(data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=4), label="terms"))
    fields = data.draw(st.lists(st.sampled_from(FILTER_FIELDS), max_size=1, unique=True), label="fields")
    filters = {f: data.draw(st.lists(st.sampled_from(values[f]), min_size=1, max_size=2), label=f)
               for f in fields if values[f]}
    channels = data.draw(st.sampled_from([None, ["embedding"], ["lexical"]]), label="channels")
    depth = engine.config.fusion_depth
    k1 = data.draw(st.integers(1, depth), label="k1")
    k2 = data.draw(st.integers(k1, depth), label="k2")
    a = engine.search(text, k=k1, filters=filters, channels=channels)
    b = engine.search(text, k=k2, filters=filters, channels=channels)
    assert ids(a) == ids(b)[:k1]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pages_concatenate_to_the_single_request(engine, vocabulary, data):
    words, _ = vocabulary
    text = " ".join(data.draw(st.lists(st.sampled_from(words), min_size=1, max_size=3), label="terms"))
    n = data.draw(st.integers(1, 30), label="page size")
    pages = data.draw(st.integers(1, 6), label="pages")
    got = []
    for page in range(pages):
        result = engine.search(text, k=n, offset=page * n)
        assert result.offset == page * n
        got.extend(ids(result))
    assert got == ids(engine.search(text, k=pages * n))


def test_deep_page_beyond_the_fusion_window(built, engine):
    small = Engine.open(built[0], dataclasses.replace(engine.config, fusion_depth=20),
                        retriever=engine._state.retriever)
    whole = ids(small.search("shirt", k=60))
    assert ids(small.search("shirt", k=20, offset=40)) == whole[40:60]
    assert ids(small.search("shirt", k=10)) == ids(small.search("shirt", k=20))[:10]  # inside the window


@pytest.mark.parametrize("offset", [-1, 10**6, True, 1.5])
def test_bad_offset_raises(engine, offset):
    with pytest.raises(InputError, match="offset"):
        engine.search("shirt", k=5, offset=offset)


def test_http_offset(built):
    from vlsearch.serving.app import create_app

    with TestClient(create_app(built[0]), raise_server_exceptions=False) as client:
        whole = client.get("/search", params={"q": "blue shirt", "k": 12}).json()["hits"]
        page2 = client.get("/search", params={"q": "blue shirt", "k": 6, "offset": 6}).json()
        assert page2["offset"] == 6
        assert [h["product_id"] for h in page2["hits"]] == [h["product_id"] for h in whole[6:]]
        body = client.post("/search", json={"q": "blue shirt", "k": 6, "offset": 6}).json()
        assert [h["product_id"] for h in body["hits"]] == [h["product_id"] for h in whole[6:]]
        assert client.get("/search", params={"q": "shirt", "offset": -1}).status_code == 400


# --- inference path ---------------------------------------------------------------------------


def test_loaded_model_stays_in_eval_mode(built):
    from vlsearch.model import Retriever

    retriever = Retriever.load(built[2])
    assert not retriever.model.training
    retriever.encode_queries(["blue shirt"])
    assert not retriever.model.training and not any(m.training for m in retriever.model.modules())
    retriever.model.train()  # validation during training: back to training mode afterwards
    before = retriever.encode_queries(["blue shirt"])
    assert retriever.model.training
    retriever.model.eval()
    np.testing.assert_allclose(before, retriever.encode_queries(["blue shirt"]), atol=1e-6)


def test_length_sorted_product_encoding_keeps_order_and_values(built, products):
    from vlsearch.model import Retriever
    from vlsearch.workdir import Workdir

    retriever = Retriever.load(built[2])
    some = products[:40]
    rows = np.arange(len(some))
    features = Workdir.open(built[1]).features()
    patches, has_image = features.patches(rows), features.has_image(rows)
    batched = retriever.encode_products(some, patches, has_image, batch_size=7)
    one_by_one = np.concatenate([retriever.encode_products([p], patches[i:i + 1], has_image[i:i + 1])
                                 for i, p in enumerate(some)])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert retriever.encode_products([]).shape == (0, retriever.embed_dim)


# --- filtered ANN search ----------------------------------------------------------------------


def test_broad_filter_in_one_pass_and_exact_fallback():
    from vlsearch.config import IndexConfig
    from vlsearch.index.ann import AnnIndex, FilterPolicy, constrained_search, exact_masked

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ann = AnnIndex.build(x, IndexConfig(kind="ivf", nlist=32, nprobe=8))
    policy = FilterPolicy()
    for share in (0.5, 0.2):
        mask = rng.random(len(x)) < share
        for q in x[:20]:
            path, scores, rows = constrained_search(ann, x, q, 100, mask, policy)
            assert path == "ann+postfilter" and len(rows) == 100 and mask[rows].all()
    for share in (0.9, 0.01):  # in place over all vectors / gathered rows: same as brute force
        mask = rng.random(len(x)) < share
        q = x[0]
        scores, rows = exact_masked(x, q, mask, 50, int(mask.sum()))
        allowed = np.flatnonzero(mask)
        truth = allowed[np.lexsort((allowed, -(x[allowed] @ q)))][:50]
        assert rows.tolist() == truth.tolist()
        np.testing.assert_allclose(scores, x[truth] @ q, rtol=1e-5)
    tiny = np.zeros(len(x), bool)
    tiny[[5, 7, 9]] = True
    path, scores, rows = constrained_search(ann, x, x[1], 100, tiny, policy)
    assert sorted(rows.tolist()) == [5, 7, 9] and path in ("exact", "ann+selector")
