"""Live catalog updates: add / change / delete on Flat and IVF indexes, searches see the change,
deleted products never come back (embedding, qid table, lexical), the qid table equals a fresh
build's, bad input, a concurrent search loop, and kill -9 during `vlsearch update` then rerun."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from index_helpers import (
    HashEncoder,
    build_synthetic_index,
    sample_index,
    synthetic_products,
    synthetic_queries,
)
from test_milvus import lite_server  # noqa: F401 - the fixture: a milvus-lite server several processes share

from vlsearch.catalog import Product
from vlsearch.config import IndexConfig, preset
from vlsearch.errors import InputError
from vlsearch.index.builder import BUILDING, COMPLETE, build_index, current_version
from vlsearch.index.qid_table import QidTable
from vlsearch.index.understanding import (
    Lexicon,
    differing_phrases,
    may_read_differently,
    understand,
)
from vlsearch.index.update import update_index
from vlsearch.index.update_delta import read_delete_ids, update_from_files
from vlsearch.serving.engine import Engine

N = 400
BACKENDS = ["faiss", "milvus"]


def _sample_copy(tmp_path, tmp_path_factory, sample_catalog_dir, backend: str, milvus_uri: str):
    """``tmp_path/index``: the shared sample index (FAISS, copied) or the same catalog and
    model indexed on the Milvus backend at ``milvus_uri``; returns the model directory."""
    index_dir, workdir, model = sample_index(tmp_path_factory, sample_catalog_dir)
    if backend == "faiss":
        shutil.copytree(index_dir, tmp_path / "index", symlinks=True)
    else:
        config = dataclasses.replace(preset("tiny").index, kind="flat", backend="milvus", milvus_uri=milvus_uri)
        build_index(workdir, model, tmp_path / "index", config, progress=False)
    return model


def _build(tmp_path, kind: str, products=None, queries=None, backend: str = "faiss"):
    products = products or synthetic_products(N)
    config = IndexConfig(kind=kind, nlist=8, nprobe=8, qid_top_k=40, backend=backend,
                         milvus_uri=str(tmp_path / "milvus.db"))
    build_synthetic_index(tmp_path, products, HashEncoder(), config, queries=queries)
    return products, config


def _delta(products):
    """Two new products (one of a new brand), two changed ones, two deleted ids."""
    new = [
        Product(id="9001", title="Zorblax Men Red Tshirts", image_paths=[], brand="Zorblax", category="Tshirts",
                attributes={"gender": "Men", "colour": "Red", "usage": "Casual", "master_category": "Apparel",
                            "sub_category": "Topwear", "article_type": "Tshirts"}),
        Product(id="9002", title="Nike Women Black Watches", image_paths=[], brand="Nike", category="Watches",
                attributes={"gender": "Women", "colour": "Black", "master_category": "Accessories",
                            "sub_category": "Watches", "article_type": "Watches"}),
    ]
    changed = [dataclasses.replace(products[0], title=products[0].title + " Glittery Edition"),
               dataclasses.replace(products[1], attributes={**products[1].attributes, "colour": "Yellow"})]
    return new, changed, [products[2].id, products[3].id]


def _all_ids(engine: Engine, queries) -> set[str]:
    seen: set[str] = set()
    for q in queries:
        seen.update(h.product_id for h in engine.search(q, k=50).hits)
    return seen


@pytest.mark.parametrize(("backend", "kind"), [("faiss", "flat"), ("faiss", "ivf"), ("milvus", "flat"),
                                               ("milvus", "hnsw")])
def test_add_change_delete_seen_by_search_and_never_back(tmp_path, backend, kind):
    products, _ = _build(tmp_path, kind, backend=backend)
    engine = Engine.open(tmp_path, retriever=HashEncoder())
    queries = list(dict.fromkeys(synthetic_queries(products)))
    new, changed, gone = _delta(products)

    report = engine.upsert(new + changed + [products[5]])  # products[5] is unchanged
    assert (report.added, report.changed, report.unchanged, report.deleted) == (2, 2, 1, 0)
    assert engine.version == report.version and engine.n_products == N + 2
    hit = engine.search("zorblax tshirts", k=5)
    assert [h.product_id for h in hit.hits][:1] == ["9001"]  # the new brand is understood too
    assert {c.field for c in hit.constraints} == {"brand", "category"}
    assert engine.search("glittery edition", k=3, channels=["lexical"]).hits[0].product_id == products[0].id
    dense = engine.search(changed[0].title, k=3, channels=["embedding"])
    assert dense.hits[0].product_id == products[0].id and not dense.qid_hit
    white = engine.search(products[1].category, k=N, filters={"colour": ["Yellow"]}, auto_constraints=False)
    assert products[1].id in [h.product_id for h in white.hits]  # its changed attribute is filtered on
    was = engine.search(products[1].category, k=N, filters={"colour": [products[1].attributes["colour"]]},
                        auto_constraints=False)
    assert products[1].id not in [h.product_id for h in was.hits]
    assert engine.product(products[0].id)["title"].endswith(" Glittery Edition")

    report = engine.delete(gone + ["no-such-id"])
    assert report.deleted == 2 and any("no-such-id" in p for p in report.problems)
    assert engine.n_products == N
    for pid in gone:
        with pytest.raises(KeyError):
            engine.product(pid)
    titles = [products[2].title, products[3].title]
    found = _all_ids(engine, queries + titles)
    assert not found & set(gone)  # not from the ANN, the qid table, nor the lexical channel
    for title in titles:
        for channels in (["embedding"], ["lexical"]):
            ids = [h.product_id for h in engine.search(title, k=N, channels=channels).hits]
            assert not set(ids) & set(gone)
    again = engine.delete(gone)
    assert again.version == "" and all("already deleted" in p for p in again.problems)

    # a reopened engine (another process, a restart) sees the same
    fresh = Engine.open(tmp_path, retriever=HashEncoder())
    assert fresh.version == engine.version and not _all_ids(fresh, titles) & set(gone)


@pytest.mark.parametrize("backend", BACKENDS)
def test_qid_table_after_updates_equals_a_fresh_build(tmp_path, backend):
    """Flat (exact) index: after add + change + delete the qid table answers every logged
    query as a build of the final catalog does (refreshed where needed, copied elsewhere)."""
    products = synthetic_products(N)
    queries = list(dict.fromkeys(synthetic_queries(products)))
    _build(tmp_path / "live", "flat", products, queries, backend)
    new, changed, gone = _delta(products)
    update_index(tmp_path / "live", new + changed, [], HashEncoder())
    report = update_index(tmp_path / "live", [], gone, HashEncoder())
    assert 0 < report.qid_refreshed < report.qid_entries

    final = {p.id: p for p in products}
    final.update({p.id: p for p in changed + new})
    for pid in gone:
        del final[pid]
    _build(tmp_path / "fresh", "flat", list(final.values()), queries, backend)

    def answers(index_dir):
        version = current_version(index_dir)
        table = QidTable.load(version / "qid")
        ids = pq.read_table(version / "products.parquet").column("id").to_pylist()
        out = {}
        assert table.has_lexical
        for qid in np.asarray(table.qids).tolist():
            rows, scores, sig = table.lookup(qid)
            out[qid] = ([ids[r] for r in rows], np.round(scores, 5).tolist(), sig)
            lex_rows, _, _ = table.lookup_lexical(qid)
            assert not {ids[r] for r in lex_rows} & set(gone)  # nor from the stored BM25 lists
        return out

    live, fresh = answers(tmp_path / "live"), answers(tmp_path / "fresh")
    assert live.keys() == fresh.keys()
    for qid in live:
        (a_ids, a_s, a_sig), (b_ids, b_s, b_sig) = live[qid], fresh[qid]
        assert a_sig == b_sig and a_s == b_s, qid  # same scores: same answers up to ties
        assert not set(a_ids) & set(gone)
        # ids must agree wherever no tie can swap them (the last score may tie with a product
        # just outside the list)
        strict = [i for i, s in enumerate(a_s) if a_s.count(s) == 1 and s != a_s[-1]]
        assert [a_ids[i] for i in strict] == [b_ids[i] for i in strict]


def test_hnsw_refuses_changes_but_takes_new_products(tmp_path):
    products, _ = _build(tmp_path, "hnsw")
    new, changed, _ = _delta(products)
    with pytest.raises(InputError, match="HNSW"):
        update_index(tmp_path, changed, [], HashEncoder())
    assert update_index(tmp_path, new, [], HashEncoder()).added == 2
    engine = Engine.open(tmp_path, retriever=HashEncoder())
    assert engine.search("zorblax tshirts", k=3).hits[0].product_id == "9001"


@pytest.mark.parametrize(("backend", "kind"), [("faiss", "ivf"), ("milvus", "hnsw")])
def test_update_under_a_concurrent_search_loop(tmp_path, backend, kind):
    products, _ = _build(tmp_path, kind, backend=backend)
    engine = Engine.open(tmp_path, retriever=HashEncoder())
    other = Engine.open(tmp_path, retriever=HashEncoder())  # stands for another serving process
    queries = list(dict.fromkeys(synthetic_queries(products))) + [p.title for p in products[:40]]
    gone: set[str] = set()
    failures: list[str] = []
    stop = threading.Event()
    searches = [0]

    def loop(e: Engine):
        i = 0
        while not stop.is_set():
            try:
                e.search(queries[i % len(queries)], k=20)
                searches[0] += 1
            except Exception as exc:  # noqa: BLE001 - the test counts every failure
                failures.append(repr(exc))
            i += 1

    threads = [threading.Thread(target=loop, args=(e,)) for e in (engine, other)]
    for t in threads:
        t.start()
    try:
        for step in range(4):
            batch = products[40 + 10 * step: 50 + 10 * step]
            changed = [dataclasses.replace(p, title=p.title + " Edition") for p in batch[:5]]
            doomed = [p.id for p in batch[5:]]
            update_index(tmp_path, changed, doomed, HashEncoder())
            gone.update(doomed)
            # after the update returns, no search of either engine returns a deleted product
            for e in (engine, other):
                for p in batch[5:]:
                    assert not {h.product_id for h in e.search(p.title, k=50).hits} & gone
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [] and searches[0] > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_rows_and_unknown_ids_are_reported_good_rows_applied(tmp_path, tmp_path_factory, sample_catalog_dir,
                                                                 backend):
    model = _sample_copy(tmp_path, tmp_path_factory, sample_catalog_dir, backend, str(tmp_path / "milvus.db"))
    engine = Engine.open(tmp_path / "index")
    pid = engine._state.ids[0]
    base = engine.product(pid)
    delta = tmp_path / "delta.jsonl"
    delta.write_text("\n".join([
        json.dumps({"id": pid, "title": "Renamed " + base["title"], "brand": base["brand"],
                    "category": base["category"], **base["attributes"]}),
        json.dumps({"id": "new-1"}),  # line 2: no title
        "{not json",  # line 3
        json.dumps({"id": "new-2", "title": f"{base['brand']} Men Blue Tshirts", "category": "Tshirts",
                    "gender": "Men"}),  # no brand given: the index's brand list supplies it
    ]) + "\n")
    deletes = tmp_path / "delete.txt"
    deletes.write_text(f"# ids\n{engine._state.ids[1]}\nghost-id\n\nbad id\n")
    ids, problems = read_delete_ids(deletes)
    assert ids == [engine._state.ids[1], "ghost-id"] and problems[0].line == 5
    report = update_from_files(tmp_path / "index", delta, deletes, model, progress=False)
    text = "\n".join(report.problems)
    assert f"{delta}:2" in text and f"{delta}:3" in text and f"{deletes}:5" in text
    assert "ghost-id" in text
    assert (report.added, report.changed, report.deleted) == (1, 1, 1)
    engine.reload_if_changed()
    assert engine.product(pid)["title"] == "Renamed " + base["title"]
    assert base["brand"] and engine.product("new-2")["brand"] == base["brand"]
    with pytest.raises(KeyError):
        engine.product(engine._state.ids[1])
    other_model = tmp_path / "other-model"
    shutil.copytree(model, other_model)
    from vlsearch.model.retriever import WEIGHTS_FILE

    with open(other_model / WEIGHTS_FILE, "r+b") as handle:  # same shapes, other weights
        handle.seek(-4, os.SEEK_END)
        handle.write(b"\x01\x02\x03\x04")
    with pytest.raises(InputError, match="not the model"):
        update_from_files(tmp_path / "index", delta, None, other_model, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_during_update_then_rerun_finishes_it(tmp_path, tmp_path_factory, sample_catalog_dir, backend, request):
    # milvus-lite's file opens in one process: the test and `vlsearch update` share a local server
    uri = request.getfixturevalue("lite_server")[0] if backend == "milvus" else ""
    model = _sample_copy(tmp_path, tmp_path_factory, sample_catalog_dir, backend, uri)
    engine = Engine.open(tmp_path / "index")
    before = engine.version
    rows = list(range(120))
    delta = tmp_path / "delta.jsonl"
    lines = []
    for r in rows:
        p = engine.product(engine._state.ids[r])
        lines.append(json.dumps({"id": p["id"], "title": p["title"] + " v2", "brand": p["brand"],
                                 "category": p["category"], **p["attributes"]}))
    delta.write_text("\n".join(lines) + "\n")
    deletes = tmp_path / "delete.txt"
    doomed = engine._state.ids[200:210]
    deletes.write_text("\n".join(doomed) + "\n")
    cmd = [sys.executable, "-m", "vlsearch.cli", "update", "--index", str(tmp_path / "index"),
           "--catalog", str(delta), "--delete", str(deletes), "--model", str(model), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    versions = tmp_path / "index" / "versions"
    known = {p.name for p in versions.iterdir()}
    half = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        half = next((p for p in versions.iterdir() if p.name not in known), None)
        if half is not None and (half / BUILDING).is_file():
            break  # the update is writing its version (it names its process in BUILDING)
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert half is not None and not (half / COMPLETE).exists(), "the update finished before the kill"
    assert current_version(tmp_path / "index").name == before  # every product before its change
    assert not engine.reload_if_changed() and engine.search("shirt", k=5).hits is not None

    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "120 changed, -10 deleted" in done.stdout
    assert not half.exists()  # the killed update's half-written version was removed
    if backend == "milvus":  # and so was its collection; the alias names the new version's
        from vlsearch.index.milvus_client import alias_name, collection_name, connect

        client = connect(IndexConfig(backend="milvus", milvus_uri=uri))
        assert collection_name("vlsearch", half.name) not in client.list_collections()
        assert client.describe_alias(alias_name("vlsearch"))["collection_name"] == \
            collection_name("vlsearch", current_version(tmp_path / "index").name)
    engine.reload_if_changed()
    assert engine.version != before
    assert all(engine.product(engine._state.ids[r])["title"].endswith(" v2") for r in rows)
    assert not {h.product_id for q in ("shirt", "shoes", "watch") for h in engine.search(q, k=100).hits} & set(doomed)
    rerun = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "unchanged (nothing to apply)" in rerun.stdout


@pytest.mark.parametrize(("backend", "kind"), [("faiss", "ivf"), ("milvus", "flat")])
def test_qid_entries_past_the_research_limit_are_invalidated(tmp_path, backend, kind):
    products, config = _build(tmp_path, kind, backend=backend)
    before = QidTable.load(current_version(tmp_path) / "qid")
    new, changed, gone = _delta(products)
    limited = dataclasses.replace(config, update_qid_research_limit=1)
    report = update_index(tmp_path, new + changed, gone, HashEncoder(), limited)
    assert report.qid_refreshed == 1 and report.qid_dropped > 0
    after = QidTable.load(current_version(tmp_path) / "qid")
    assert len(after) == len(before) - report.qid_dropped
    engine = Engine.open(tmp_path, retriever=HashEncoder())
    queries = list(dict.fromkeys(synthetic_queries(products)))
    assert not _all_ids(engine, queries) & set(gone)  # dropped entries are answered live
    ids = engine._state.ids
    for qid in np.asarray(after.qids).tolist():
        rows, _, _ = after.lookup(qid)
        assert not {ids[r] for r in rows} & set(gone)


def test_unchanged_images_reuse_the_feature_cache(tmp_path, tmp_path_factory, sample_catalog_dir):
    """Retitled products keep their image: its features come from the work directory's cache
    (no backbone run) and the vectors equal an encoding from the image files; a product given
    another product's image goes through the backbone."""
    from vlsearch.model import Retriever

    model = _sample_copy(tmp_path, tmp_path_factory, sample_catalog_dir, "faiss", "")
    engine = Engine.open(tmp_path / "index")
    state = engine._state
    rows = [r for r in range(len(state.ids)) if state.image_paths[r]][:4]
    delta = []
    for r in rows:
        p = engine.product(state.ids[r])
        delta.append(Product(id=p["id"], title=p["title"] + " Reissue", image_paths=[state.image_paths[r]],
                             brand=p["brand"], category=p["category"], attributes=p["attributes"]))
    delta[-1].image_paths = [state.image_paths[rows[0]]]  # another product's image: not its cache row
    retriever = Retriever.load(model)
    report = update_index(tmp_path / "index", delta, [], retriever)
    assert report.changed == 4 and report.images_reused == 3
    vectors = np.load(current_version(tmp_path / "index") / "vectors.npy")
    from_files = retriever.encode_products(delta)
    np.testing.assert_allclose(vectors[rows].astype(np.float32), from_files, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_untouched_entries_are_carried_over_byte_for_byte(tmp_path, backend):
    """The qid update's skip rules: an entry whose dense list holds no changed or deleted row
    and that no upserted product beats keeps its dense list unchanged, byte for byte; a BM25
    list holding a product whose document did not change (another season: not a lexical
    field) is not searched again; a deleted member of a BM25 list that held every match is
    removed in place (the others' scores kept); understanding is the base version's."""
    products = synthetic_products(N)
    queries = list(dict.fromkeys(synthetic_queries(products)))
    _build(tmp_path, "flat", products, queries, backend)
    base = current_version(tmp_path)
    before = QidTable.load(base / "qid")
    qv = np.load(base / "query_vectors.npy")
    season = dataclasses.replace(products[0], attributes={**products[0].attributes, "season": "Winter"})
    retitled = dataclasses.replace(products[1], title=products[1].title + " Glittery")
    report = update_index(tmp_path, [season, retitled], [products[2].id], HashEncoder())
    assert report.changed == 2 and report.deleted == 1
    after = QidTable.load(current_version(tmp_path) / "qid")
    assert np.array_equal(np.asarray(after.qids), np.asarray(before.qids))
    assert np.array_equal(np.asarray(after.signatures), np.asarray(before.signatures))

    vec = HashEncoder().encode_products([season, retitled])
    old_rows, old_scores = np.asarray(before.rows), np.asarray(before.scores)
    last = np.where(old_rows[:, -1] >= 0, old_scores[:, -1], -np.inf)
    untouched = ~np.isin(old_rows, [0, 1, 2]).any(axis=1) & ((qv @ vec.T) <= last[:, None]).all(axis=1)
    assert untouched.sum() > 0
    for name in ("rows", "scores"):
        assert np.asarray(getattr(after, name))[untouched].tobytes() == \
            np.asarray(getattr(before, name))[untouched].tobytes()

    lex_rows, lex_scores = np.asarray(before.lexical_rows), np.asarray(before.lexical_scores)
    new_lex_rows, new_lex_scores = np.asarray(after.lexical_rows), np.asarray(after.lexical_scores)
    glitter = np.asarray(["glitter" in q for q in before.queries])
    holds_season = np.isin(lex_rows, [0]).any(axis=1) & ~np.isin(lex_rows, [1, 2]).any(axis=1) & ~glitter
    assert holds_season.sum() > 0
    assert new_lex_rows[holds_season].tobytes() == lex_rows[holds_season].tobytes()
    assert new_lex_scores[holds_season].tobytes() == lex_scores[holds_season].tobytes()
    partial = np.isin(lex_rows, [2]).any(axis=1) & ~np.isin(lex_rows, [1]).any(axis=1) \
        & (lex_rows[:, -1] < 0) & ~glitter
    assert partial.sum() > 0
    for e in np.flatnonzero(partial):
        stay = (lex_rows[e] >= 0) & (lex_rows[e] != 2)
        n = int(stay.sum())
        assert new_lex_rows[e, :n].tolist() == lex_rows[e][stay].tolist() and (new_lex_rows[e, n:] == -1).all()
        assert new_lex_scores[e, :n].tobytes() == lex_scores[e][stay].tobytes()


def test_only_queries_a_changed_phrase_can_match_are_understood_again():
    old = Lexicon()
    old.add(("nike",), "brand", ["nike"])
    old.add(("shoe",), "category", ["shoes"])
    new = Lexicon(phrases=dict(old.phrases))
    new.add(("zorblax",), "brand", ["zorblax"])
    new.add(("red", "tape"), "brand", ["red tape"])
    changed = differing_phrases(old, new)
    assert changed == {("zorblax",), ("red", "tape")}
    texts = ["nike shoes", "zorblax shoes", "red tape shoes", "red shoes", "tape"]
    assert may_read_differently(texts, changed) == [False, True, True, False, False]
    for text, differs in zip(texts, may_read_differently(texts, changed)):
        if not differs:  # the rule's promise
            assert understand(text, old).constraints == understand(text, new).constraints
