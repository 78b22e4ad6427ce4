"""The Milvus backend against milvus-lite started by the tests themselves: parity with FAISS
on real-catalog vectors, recall of HNSW / IVF against exact, literal matching of filter
values (quoting / injection), versions by alias (switch under load, killed build swept),
the qid table and BM25 channel in Milvus, and a Milvus server that is down."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from index_helpers import (
    HashEncoder,
    build_synthetic_index,
    search_while,
    synthetic_products,
    synthetic_queries,
)

from vlsearch.catalog import Product
from vlsearch.config import IndexConfig
from vlsearch.errors import InputError
from vlsearch.index.lexical import FILTER_FIELDS
from vlsearch.index.milvus import MilvusStore
from vlsearch.index.milvus_client import (
    alias_name,
    collection_name,
    connect,
    filter_expression,
    quote,
)
from vlsearch.index.store import FaissStore, StoreUnavailable, exact_top_k, product_attributes
from vlsearch.serving.engine import Engine

REAL_PRODUCTS = 1200  # real-catalog subsample the parity and recall tests run on
REAL_QUERIES = 60
# recall@100 vs exact must stay above this. Measured on 1200 real vectors: HNSW 0.999; IVF_FLAT
# (nlist 30, nprobe 16) 0.78, where FAISS IVF at the same settings gives 0.97 on the same data:
# milvus-lite's IVF answers below FAISS' (0.95 even at nprobe = nlist); a cluster's Knowhere
# IVF was not measured here.
RECALL_FLOOR = {"hnsw": 0.95, "ivf": 0.70}


def milvus_config(tmp_path, **kw) -> IndexConfig:
    return IndexConfig(backend="milvus", milvus_uri=str(tmp_path / "milvus.db"), **kw)


# --- real-catalog vectors -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(fashion_dir):
    """MiniLM vectors of real catalog titles (untrained projection: the geometry of real
    text, not of our model) and of other real titles as queries."""
    import torch

    from vlsearch.catalog import load_catalog
    from vlsearch.config import preset
    from vlsearch.model import Retriever

    torch.set_num_threads(1)
    products = load_catalog(fashion_dir, limit=REAL_PRODUCTS + REAL_QUERIES).products
    config = preset("minilm")
    config.model.keyword_enhancement = False
    retriever = Retriever.build(config, patch_dim=64, grid=(4, 3), categories=["x"])
    vectors = retriever.encode_queries([p.title for p in products])
    return products[:REAL_PRODUCTS], vectors[:REAL_PRODUCTS], vectors[REAL_PRODUCTS:]


@pytest.fixture(scope="module")
def real_stores(real, tmp_path_factory):
    products, vectors, _ = real
    tmp = tmp_path_factory.mktemp("milvus-real")
    attrs = product_attributes(products)
    stores = {kind: MilvusStore.build(vectors, attrs, milvus_config(tmp, kind=kind), f"v00000{i}-real")
              for i, kind in enumerate(("flat", "hnsw", "ivf"))}
    return stores, FaissStore.build(vectors, attrs, IndexConfig(kind="flat"))


def _scores_and_rows(result) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A search result's embedding scores and product rows, as one row of ``_same_top_k_allowing_ties``."""
    return ([np.array([h.channel_scores["embedding"] for h in result.hits])],
            [np.array([h.row for h in result.hits])])


def _same_top_k_allowing_ties(a_scores, a_rows, b_scores, b_rows, atol=1e-4):
    for sa, ra, sb, rb in zip(a_scores, a_rows, b_scores, b_rows):
        np.testing.assert_allclose(sa, sb, atol=atol)  # same score at every rank
        differ = set(ra.tolist()) ^ set(rb.tolist())
        if differ:  # only rows tied with the last kept score may swap in or out
            boundary = float(sa[-1])
            ours = {int(r): float(s) for r, s in zip(ra, sa)} | {int(r): float(s) for r, s in zip(rb, sb)}
            assert all(abs(ours[r] - boundary) <= atol for r in differ), differ


@pytest.mark.slow
def test_flat_parity_with_faiss_on_real_vectors(real, real_stores):
    _, _, queries = real
    stores, faiss_flat = real_stores
    a = stores["flat"].search(queries, 100)
    b = faiss_flat.search(queries, 100)
    _same_top_k_allowing_ties(*a, *b)
    # and under a constraint (a real brand), inside the search on both
    brand = product_attributes(real[0])["brand"][0]
    a = stores["flat"].search(queries, 100, {"brand": [brand]})
    b = faiss_flat.search(queries, 100, {"brand": [brand]})
    allowed = faiss_flat.count({"brand": [brand]})
    assert ((a[1] >= 0).sum(axis=1) == min(100, allowed)).all()
    valid = a[1] >= 0
    _same_top_k_allowing_ties(*(np.where(valid, x, 0) for x in a), *(np.where(valid, x, 0) for x in b))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_recall_against_exact_above_floor(real, real_stores, kind):
    _, vectors, queries = real
    stores, _ = real_stores
    _, truth = exact_top_k(vectors, queries, 100)
    _, found = stores[kind].search(queries, 100)
    recall = float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found)]))
    print(f"milvus-lite {kind} recall@100 vs exact on {len(vectors)} real vectors: {recall:.4f}")
    assert recall >= RECALL_FLOOR[kind]


# --- filter expressions: values are matched literally ---------------------------------------

TRICKY = ['adi"das', "a\\b", "o'neil", 'x" or brand != "', "nike\") or (row >= 0", "耐克", "a\\\"b", "\\"]


def test_filter_expression_quotes_and_refuses():
    assert quote('a"b') == '"a\\"b"' and quote("a\\b") == '"a\\\\b"'
    assert filter_expression({"brand": ["Nike", "Puma"], "colour": "Red"}) == \
        'brand in ["nike", "puma"] and colour in ["red"]'
    assert filter_expression({}) == "" and filter_expression(None) == ""
    with pytest.raises(InputError, match="control"):
        quote("a\nb")
    with pytest.raises(InputError, match="filter field"):
        filter_expression({"brand or 1": ["x"]})  # field names come from a fixed list only


@pytest.fixture(scope="module")
def tricky_stores(tmp_path_factory):
    """Products whose brand is an expression-syntax trap, on both backends."""
    tmp = tmp_path_factory.mktemp("milvus-tricky")
    rng = np.random.default_rng(0)
    brands = (TRICKY + ["nike", "x"]) * 6
    products = [Product(id=str(i), title=f"{b} shoe", image_paths=[], brand=b, category="Shoes",
                        attributes={}) for i, b in enumerate(brands)]
    vectors = rng.standard_normal((len(products), 16)).astype(np.float32)
    attrs = product_attributes(products)
    milvus = MilvusStore.build(vectors, attrs, milvus_config(tmp, kind="flat"), "v000001-tricky")
    return products, vectors, {"milvus": milvus, "faiss": FaissStore.build(vectors, attrs, IndexConfig(kind="flat"))}


@pytest.mark.parametrize("backend", ["milvus", "faiss"])
@pytest.mark.parametrize("value", TRICKY)
def test_constraint_values_match_literally(tricky_stores, backend, value):
    products, vectors, stores = tricky_stores
    store = stores[backend]
    expected = {i for i, p in enumerate(products) if p.brand.casefold() == value.casefold()}
    assert expected and store.count({"brand": [value]}) == len(expected)
    _, rows = store.search(vectors[:3], 50, {"brand": [value]})
    for r in rows:
        assert set(r[r >= 0].tolist()) == expected
    assert set(np.flatnonzero(store.mask({"brand": [value]})).tolist()) == expected


# --- versions: alias switch under load, killed build --------------------------------------------


def test_alias_switch_while_searches_run(tmp_path):
    products = synthetic_products(200)
    enc = HashEncoder()
    config = milvus_config(tmp_path, kind="hnsw", qid_top_k=30, keep_versions=2, milvus_prefix="load")
    first = build_synthetic_index(tmp_path / "idx", products, enc, config)
    engine = Engine.open(tmp_path / "idx", retriever=enc)
    seen, second = [], []

    def check(res):
        if not seen or seen[-1] != res.version:
            seen.append(res.version)
        assert res.hits

    def rebuild():
        second.append(build_synthetic_index(tmp_path / "idx", products, enc, dataclasses.replace(config)))

    errors = search_while(engine, rebuild, check, k=10, settle_s=0.4)
    assert not errors, errors[:3]
    assert seen == [first.version, second[0].version]  # old until the switch, then new, never back
    client = connect(config)
    assert client.describe_alias(alias_name("load"))["collection_name"] == collection_name("load", second[0].version)


@pytest.fixture
def lite_server(tmp_path):
    """milvus-lite as a gRPC server on a local port (a file is locked by one process; a
    server is what several processes share, as with a cluster): (uri, stop, start)."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    port = _free_port()
    running = []

    def start():
        running.append(start_server_in_thread(str(tmp_path / "lite-data"), port=port)[:2])

    def stop():
        server, db = running.pop()
        server.stop(grace=0).wait()
        db.close()

    start()
    yield f"http://127.0.0.1:{port}", stop, start
    while running:
        stop()


def test_killed_build_leaves_alias_and_is_dropped_by_next_build(tmp_path, lite_server):
    products = synthetic_products(120)
    enc = HashEncoder()
    config = IndexConfig(backend="milvus", milvus_uri=lite_server[0], kind="flat", qid_top_k=20,
                         milvus_prefix="kill")
    first = build_synthetic_index(tmp_path / "idx", products, enc, config)
    code = (
        "import os, sys, numpy as np\n"
        "sys.path.insert(0, 'tests')\n"
        "from index_helpers import synthetic_products\n"
        "from vlsearch.config import IndexConfig\n"
        "from vlsearch.index.milvus import MilvusStore\n"
        "from vlsearch.index.store import product_attributes\n"
        f"config = IndexConfig(**{dataclasses.asdict(config)!r})\n"
        "p = synthetic_products(120)\n"
        "os.makedirs(sys.argv[1], exist_ok=True)\n"
        "open(os.path.join(sys.argv[1], 'BUILDING'), 'w').write('{\"pid\": %d, \"host\": \"%s\"}' % (os.getpid(), os.uname().nodename))\n"
        "MilvusStore.build(np.ones((120, 32), np.float32), product_attributes(p), config, os.path.basename(sys.argv[1]))\n"
        "os._exit(9)  # killed before publishing\n"
    )
    half = tmp_path / "idx" / "versions" / "v000009-killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code, str(half)], cwd=os.path.dirname(os.path.dirname(__file__)),
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 9, proc.stderr[-2000:]
    client = connect(config)
    dead = collection_name("kill", half.name)
    assert dead in client.list_collections()
    assert client.describe_alias(alias_name("kill"))["collection_name"] == collection_name("kill", first.version)
    engine = Engine.open(tmp_path / "idx", retriever=enc)
    assert engine.search("nike shoes", k=5).version == first.version  # untouched by the killed build
    second = build_synthetic_index(tmp_path / "idx", products, enc, config)
    assert dead not in client.list_collections() and not half.exists()
    assert client.describe_alias(alias_name("kill"))["collection_name"] == collection_name("kill", second.version)


# --- qid table and BM25 inside Milvus ---------------------------------------------------------


def test_qid_table_and_bm25_live_in_milvus(tmp_path):
    products = synthetic_products(150) + [
        Product(id="cn1", title="耐克 红色 运动鞋", image_paths=[], brand="Nike", category="Sports Shoes",
                attributes={"gender": "Men", "colour": "Red"}),
        Product(id="cn2", title="阿迪达斯 蓝色 牛仔裤", image_paths=[], brand="Adidas", category="Jeans",
                attributes={"gender": "Women", "colour": "Blue"}),
    ]
    enc = HashEncoder()
    config = milvus_config(tmp_path, kind="flat", qid_top_k=40, milvus_prefix="qid")
    report = build_synthetic_index(tmp_path / "idx", products, enc, config)
    manifest = json.loads((tmp_path / "idx" / "versions" / report.version / "manifest.json").read_text())
    assert manifest["milvus"]["qid_collection"] and manifest["milvus"]["lexical"]
    assert "token" not in json.dumps(manifest["milvus"]) and manifest["config"]["milvus_token_env"]
    engine = Engine.open(tmp_path / "idx", retriever=enc)
    assert type(engine._state.qid).__name__ == "MilvusQidTable" and len(engine._state.qid) == report.qid_queries
    live = Engine.open(tmp_path / "idx", retriever=enc,
                       config=dataclasses.replace(engine.config, qid_table=False))
    for text in list(dict.fromkeys(synthetic_queries(products)))[:6]:
        a = engine.search(text, k=20, channels=["embedding"])
        b = live.search(text, k=20, channels=["embedding"])
        assert a.qid_hit and not b.qid_hit  # the table was answered by exact FAISS, live by Milvus flat
        _same_top_k_allowing_ties(*_scores_and_rows(a), *_scores_and_rows(b))
    lexical = engine.search("运动鞋", k=5, channels=["lexical"], auto_constraints=False)
    assert [h.product_id for h in lexical.hits] == ["cn1"]  # jieba segments the CJK title
    filtered = engine.search("运动鞋", k=5, channels=["lexical"], filters={"brand": ["Adidas"]})
    assert filtered.hits == []


# --- a Milvus server that is down -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_at_start_is_one_clear_line(tmp_path):
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(StoreUnavailable, match=uri.replace(".", r"\.")):
        connect(IndexConfig(backend="milvus", milvus_uri=uri, milvus_timeout_s=1.0))
    products = synthetic_products(60)
    config = milvus_config(tmp_path, kind="flat", qid_top_k=10, milvus_prefix="down")
    report = build_synthetic_index(tmp_path / "idx", products, HashEncoder(), config)
    manifest_path = tmp_path / "idx" / "versions" / report.version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["config"].update(milvus_uri=uri, milvus_timeout_s=1.0)  # the server moved away
    manifest_path.write_text(json.dumps(manifest))
    proc = subprocess.run([sys.executable, "-m", "vlsearch.cli", "search", "--index", str(tmp_path / "idx"), "--query",
                           "nike shoes"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and uri in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_outage_during_serving_is_503_and_recovers(tmp_path, lite_server):
    from fastapi.testclient import TestClient

    from vlsearch.serving.app import create_app

    uri, stop, start = lite_server
    enc = HashEncoder()
    config = IndexConfig(backend="milvus", milvus_uri=uri, kind="flat", qid_top_k=10,
                         milvus_prefix="outage")
    build_synthetic_index(tmp_path / "idx", synthetic_products(80), enc, config)
    client = TestClient(create_app(engine=Engine.open(tmp_path / "idx", retriever=enc)))
    ok = client.get("/search", params={"q": "nike shoes", "k": 5})
    assert ok.status_code == 200 and ok.json()["hits"]
    stop()
    down = client.get("/search", params={"q": "zz unlogged words", "k": 5})
    assert down.status_code == 503 and uri in down.json()["error"], down.json()
    assert client.get("/health").status_code in (200, 503)  # the process is still up
    start()
    deadline = time.monotonic() + 30
    while True:  # the first calls after a restart may still find the port closed
        back = client.get("/search", params={"q": "nike shoes", "k": 5})
        if back.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert back.status_code == 200 and back.json()["hits"] == ok.json()["hits"], back.json()


def test_every_filter_field_has_a_scalar_index(tmp_path):
    config = milvus_config(tmp_path, kind="flat", milvus_prefix="idx")
    products = synthetic_products(40)
    store = MilvusStore.build(np.eye(40, 8, dtype=np.float32) + 0.1, product_attributes(products), config, "v000001-x")
    indexes = set(store.client.list_indexes(store.collection))
    assert set(FILTER_FIELDS) <= indexes
