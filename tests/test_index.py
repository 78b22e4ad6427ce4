"""Index parts: resumable export, FAISS index (recall, filters, save/load), qid table,
tantivy filters and BM25, query understanding, build + atomic publish + pruning."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from index_helpers import HashEncoder, build_synthetic_index, synthetic_products

from vlsearch.config import IndexConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.index.ann import AnnIndex, build_ann, recall_against_exact
from vlsearch.index.builder import current_version, is_complete, prune_versions
from vlsearch.index.export import export_vectors
from vlsearch.index.lexical import LexicalIndex, build_lexical, check_filter, product_value
from vlsearch.index.qid_table import QidTable
from vlsearch.index.understanding import build_lexicon, understand

IVF_RECALL_FLOOR = 0.9  # IVF (default nlist, nprobe 16) recall@100 vs exact on MiniLM title vectors


@pytest.fixture(scope="module")
def products():
    return synthetic_products(400)


@pytest.fixture(scope="module")
def vectors(products):
    return HashEncoder().encode_products(products)


# --- export ---------------------------------------------------------------------------------


def test_export_resumes_after_a_kill(tmp_path, vectors):
    calls = []

    def encode(a, b):
        calls.append((a, b))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed mid-way
        return vectors[a:b]

    with pytest.raises(KeyboardInterrupt):
        export_vectors(encode, len(vectors), tmp_path, batch_size=64, progress=False)
    calls.clear()
    out = export_vectors(lambda a, b: (calls.append((a, b)), vectors[a:b])[1], len(vectors), tmp_path,
                         batch_size=64, progress=False)
    assert calls[0] == (128, 192)  # two batches were durable, the third is redone
    np.testing.assert_array_equal(out, vectors)


def test_export_restarts_on_new_key_and_float16(tmp_path, vectors):
    export_vectors(lambda a, b: vectors[a:b], len(vectors), tmp_path, 100, key={"m": 1}, progress=False)
    calls = []
    out = export_vectors(lambda a, b: (calls.append(a), vectors[a:b])[1], len(vectors), tmp_path, 100,
                         dtype="float16", key={"m": 2}, progress=False)
    assert calls[0] == 0 and out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), vectors, atol=1e-3)
    with pytest.raises(InputError):
        export_vectors(lambda a, b: vectors[a:b], 4, tmp_path / "x", dtype="int8", progress=False)


# --- ANN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_ann_kinds_save_load_and_filter(tmp_path, vectors, kind):
    ann, report = build_ann(vectors, IndexConfig(kind=kind, recall_sample_queries=50))
    assert report.kind == kind and report.size_bytes > 0 and 0.0 <= report.recall_at_100 <= 1.0
    if kind == "flat":
        assert report.recall_at_100 == 1.0
    ann.save(tmp_path / "a.faiss")
    loaded = AnnIndex.load(tmp_path / "a.faiss", IndexConfig(kind=kind))
    assert loaded.kind == kind
    q = vectors[:5]
    np.testing.assert_array_equal(ann.search(q, 10)[1], loaded.search(q, 10)[1])
    allowed = np.zeros(len(vectors), bool)
    allowed[::7] = True
    _, rows = loaded.search(q, 10, allowed=allowed, nprobe=loaded.nlist or None, ef_search=len(vectors))
    got = rows[rows >= 0]
    assert len(got) and allowed[got].all()


def test_ann_rejects_bad_input(tmp_path):
    with pytest.raises(InputError):
        AnnIndex.build(np.zeros((0, 4), np.float32), IndexConfig(kind="flat"))
    with pytest.raises(InputError):
        AnnIndex.build(np.ones((4, 4), np.float32), IndexConfig(kind="lsh"))
    (tmp_path / "bad.faiss").write_bytes(b"nope")
    with pytest.raises(WorkdirError):
        AnnIndex.load(tmp_path / "bad.faiss")


def _minilm_title_vectors(titles: list[str]) -> np.ndarray:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 vectors (the packaged weights)."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModel, AutoTokenizer

    from vlsearch.text import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModel.from_pretrained(minilm_dir()).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(titles), 256):
            batch = tok(titles[i:i + 256], padding=True, truncation=True, max_length=32, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)


@pytest.mark.real
@pytest.mark.slow
def test_ivf_recall_on_real_title_vectors(fashion_dir):
    """IVF recall@100 against exact on MiniLM vectors of 1,500 real titles, 150 other titles as queries."""
    with open(fashion_dir / "styles.csv", encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.reader(handle)][1:]
    titles = [r[-1] for r in rows if len(r) >= 10 and r[-1].strip()][:1650]
    x = _minilm_title_vectors(titles)
    corpus, queries = x[:1500], x[1500:]
    ann, report = build_ann(corpus, IndexConfig(kind="ivf"), recall_queries=queries)
    assert report.nlist > 1 and report.recall_queries == 150
    assert report.recall_at_100 >= IVF_RECALL_FLOOR, report
    assert recall_against_exact(ann, corpus, queries) == pytest.approx(report.recall_at_100)


# --- qid table ------------------------------------------------------------------------------


def test_qid_table_build_lookup_roundtrip(tmp_path, vectors):
    from vlsearch.text import query_id

    enc = HashEncoder()
    ann, _ = build_ann(vectors, IndexConfig(kind="flat"))
    queries = ["red dress", "dress red", "nike shoes", "watch"]
    table = QidTable.build(queries, [query_id(q) for q in queries],
                           lambda t: ann.search(enc.encode_queries(t), 20), batch_size=2, progress=False)
    assert len(table) == 3 and list(table.qids) == sorted(table.qids)  # "dress red" shares a qid
    table.save(tmp_path / "qid")
    loaded = QidTable.load(tmp_path / "qid")
    # memory-mapped: a plain ndarray view over the map (no copy; memmap slicing is slow)
    assert isinstance(loaded.rows.base, np.memmap) and loaded.rows.dtype == np.int32
    rows, scores, signature = loaded.lookup(query_id("Shoes NIKE"))
    _, live = ann.search(enc.encode_queries(["nike shoes"]), 20)
    np.testing.assert_array_equal(rows, live[0])
    assert np.all(np.diff(scores) <= 1e-6)
    assert signature == 0 and loaded.lookup(query_id("never logged")) is None
    with pytest.raises(WorkdirError):
        QidTable.load(tmp_path / "missing")


# --- lexical --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lexical(tmp_path_factory, products):
    path = tmp_path_factory.mktemp("lexical")
    build_lexical(products, path)
    return LexicalIndex.open(path)


def test_filter_mask_is_and_across_or_within(lexical, products):
    filters = {"brand": ["Nike", "red tape"], "gender": ["MEN"], "sub_category": ["Shoes"]}
    mask = lexical.filter_mask(filters)
    expect = np.array([
        product_value(p, "brand") in ("nike", "red tape") and product_value(p, "gender") == "men"
        and product_value(p, "sub_category") == "shoes" for p in products
    ])
    assert expect.any()
    np.testing.assert_array_equal(mask, expect)
    assert not lexical.filter_mask({"brand": ["no such brand"]}).any()
    with pytest.raises(InputError, match="size"):
        check_filter({"size": ["xl"]})


def test_bm25_search_respects_filter(lexical, products):
    scores, rows = lexical.search("red tape casual shoes", 20)
    assert len(rows) and "Red Tape" in products[rows[0]].title
    assert np.all(np.diff(scores) <= 1e-6)
    _, rows = lexical.search("shoes", 50, {"brand": ["Puma"]})
    assert len(rows) and all(products[r].brand == "Puma" for r in rows)
    assert len(lexical.search("!!!", 10)[1]) == 0


# --- query understanding --------------------------------------------------------------------


@pytest.fixture(scope="module")
def lexicon(products):
    return build_lexicon(products)


def _by_field(text, lexicon):
    return {c.field: (set(c.values), c.terms) for c in understand(text, lexicon).constraints}


def test_understanding_brand_and_category_group(lexicon):
    got = _by_field("Nike Shoes", lexicon)
    assert got["brand"][0] == {"nike"}
    assert got["category"][0] == {"casual shoes", "sports shoes", "formal shoes"}
    assert got["category"][1] == ("shoes",)


def test_understanding_longest_match_possessive_multiword(lexicon):
    got = _by_field("red tape shoes", lexicon)
    assert got["brand"][0] == {"red tape"} and "colour" not in got
    got = _by_field("red shoes", lexicon)
    assert got["colour"][0] == {"red"} and "brand" not in got
    got = _by_field("UNITED COLORS OF BENETTON men's navy blue t-shirts", lexicon)
    assert got["brand"][0] == {"united colors of benetton"}
    assert got["gender"][0] == {"men", "unisex"} and got["colour"][0] == {"navy blue"}
    got = _by_field("peter england shirt for women", lexicon)
    assert got["brand"][0] == {"peter england"} and got["category"][0] == {"shirts"}
    assert got["gender"][0] == {"women", "unisex"}  # the relevance rule: unisex fits both
    assert understand("comfortable summer stuff", lexicon).constraints == []


def test_lexicon_json_roundtrip(lexicon):
    from vlsearch.index.understanding import Lexicon

    again = Lexicon.from_json(lexicon.to_json())
    assert again.phrases == lexicon.phrases and again.labels == lexicon.labels


# --- build and publish ----------------------------------------------------------------------


def test_build_publishes_complete_versions_and_prunes(tmp_path, products):
    enc = HashEncoder()
    config = IndexConfig(kind="flat", qid_top_k=50, keep_versions=2)
    first = build_synthetic_index(tmp_path, products, enc, config)
    assert current_version(tmp_path).name == first.version and is_complete(current_version(tmp_path))
    for name in ("ann.faiss", "vectors.npy", "qid", "lexical", "lexicon.json", "products.parquet",
                 "manifest.json"):
        assert (tmp_path / "versions" / first.version / name).exists()
    assert not (tmp_path / "export").exists()
    build_synthetic_index(tmp_path, products, enc, config)
    third = build_synthetic_index(tmp_path, products, enc, config)
    assert os.readlink(tmp_path / "current") == f"versions/{third.version}"
    assert len(list((tmp_path / "versions").iterdir())) == 2 and third.removed_versions == [first.version]
    assert prune_versions(tmp_path, 1) and current_version(tmp_path).name == third.version


def test_killed_builds_leave_versions_the_next_build_removes(tmp_path, products):
    import json
    import socket
    import subprocess
    import sys

    enc = HashEncoder()
    config = IndexConfig(kind="flat", qid_top_k=50, keep_versions=5)
    build_synthetic_index(tmp_path, products, enc, config)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    host = socket.gethostname()
    markers = {"v000090-killed": {"pid": int(dead.stdout), "host": host},  # SIGKILLed build
               "v000091-running": {"pid": os.getpid(), "host": host},  # a build still at work
               "v000092-elsewhere": {"pid": int(dead.stdout), "host": host + "-other"}}
    for name, owner in markers.items():
        (tmp_path / "versions" / name).mkdir()
        (tmp_path / "versions" / name / "BUILDING").write_text(json.dumps(owner))
    (tmp_path / "versions" / "v000093-unmarked").mkdir()  # a build between mkdir and marker
    report = build_synthetic_index(tmp_path, products, enc, config)
    assert report.removed_versions == ["v000090-killed"]
    left = {p.name for p in (tmp_path / "versions").iterdir()}
    assert {"v000091-running", "v000092-elsewhere", "v000093-unmarked", report.version} <= left
    assert not (tmp_path / "versions" / report.version / "BUILDING").exists()


def test_failed_build_never_becomes_current(tmp_path, products):
    enc = HashEncoder()
    good = build_synthetic_index(tmp_path, products, enc, IndexConfig(kind="flat"))

    def boom(texts):
        raise RuntimeError("encoder crashed")

    from vlsearch.index.builder import build_index_from_parts

    with pytest.raises(RuntimeError):
        build_index_from_parts(tmp_path, products, lambda a, b: enc.encode_products(products[a:b]),
                               boom, ["nike shoes"], [1], IndexConfig(kind="flat"), progress=False)
    assert current_version(tmp_path).name == good.version
    assert [p.name for p in (tmp_path / "versions").iterdir()] == [good.version]


def test_missing_or_half_written_index_dir(tmp_path):
    with pytest.raises(WorkdirError, match="not found"):
        current_version(tmp_path / "nope")
    with pytest.raises(WorkdirError, match="no published index"):
        current_version(tmp_path)
    (tmp_path / "versions" / "v000001-x").mkdir(parents=True)
    os.symlink("versions/v000001-x", tmp_path / "current")
    with pytest.raises(WorkdirError, match="half-written"):
        current_version(tmp_path)
