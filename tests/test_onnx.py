"""ONNX query encoder: exported into the index version at build time, parity with torch on
the test-split queries (cosine >= 0.9999, same top-100 except ties), refusal when parity
fails, and the engine's choice of encoder."""

from __future__ import annotations

import numpy as np
import pytest
from index_helpers import sample_index

from vlsearch.config import ServeConfig
from vlsearch.index.builder import current_version
from vlsearch.io import read_json
from vlsearch.model import Retriever
from vlsearch.model.onnx_query import (
    QUERY_ONNX,
    OnnxExportError,
    OnnxQueryEncoder,
    export_query_onnx,
    load_query_encoder,
    parity,
)
from vlsearch.serving.engine import Engine


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_catalog_dir):
    return sample_index(tmp_path_factory, sample_catalog_dir)


@pytest.fixture(scope="module")
def queries(built):
    from vlsearch.evaluation import read_beir_queries

    return [q.text for q in read_beir_queries(built[1] / "eval" / "test" / "queries.jsonl")]


def test_index_version_carries_a_checked_onnx_query_encoder(built):
    version = current_version(built[0])
    assert (version / "model" / QUERY_ONNX).is_file()
    report = read_json(version / "manifest.json")["onnx_query_encoder"]
    assert report["exported"] and report["min_cosine"] >= 0.9999 and report["queries"] > 0


def test_parity_with_torch_on_test_queries(built, queries):
    version = current_version(built[0])
    retriever = Retriever.load(version / "model")
    assert any(retriever.query_keywords(queries)), "no test query exercises Keyword Enhancement"
    encoder = OnnxQueryEncoder(retriever, version / "model" / QUERY_ONNX)
    assert parity(retriever, encoder, queries).min() >= 0.9999
    batched = encoder.encode_queries(queries[:16])
    np.testing.assert_allclose(batched, retriever.encode_queries(queries[:16]), atol=2e-4)


def test_engine_serves_with_onnx_and_ranks_like_torch(built, queries):
    onnx = Engine.open(built[0], ServeConfig(qid_table=False))
    torch_ = Engine.open(built[0], ServeConfig(qid_table=False, query_encoder="torch"))
    assert isinstance(onnx._state.encoder, OnnxQueryEncoder)
    assert isinstance(torch_._state.encoder, Retriever)
    for text in queries:
        a = onnx.search(text, k=100, channels=["embedding"], auto_constraints=False)
        b = torch_.search(text, k=100, channels=["embedding"], auto_constraints=False)
        sa = np.array([h.channel_scores["embedding"] for h in a.hits])
        sb = np.array([h.channel_scores["embedding"] for h in b.hits])
        np.testing.assert_allclose(sa, sb, atol=1e-4)
        ids_a, ids_b = [h.product_id for h in a.hits], [h.product_id for h in b.hits]
        # same ids except ties: any position that differs has a near-equal score neighbour
        for i, (x, y) in enumerate(zip(ids_a, ids_b)):
            if x != y:
                assert abs(sa[i] - sb[i]) < 1e-4 and np.isclose(sa, sa[i], atol=1e-4).sum() > 1, text
        assert set(ids_a[:90]) <= set(ids_b) and len(ids_a) == len(ids_b)


def test_export_refuses_when_parity_fails(built, tmp_path, queries):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(built[2], model)
    retriever = Retriever.load(model)
    report = export_query_onnx(retriever, model, queries[:5], min_cosine=1.5)  # unreachable
    assert not report.exported and "refused" in report.reason and not (model / QUERY_ONNX).exists()
    assert not list(model.glob("*.tmp"))
    assert load_query_encoder(retriever, model) is retriever  # torch stays the fallback
    with pytest.raises(OnnxExportError, match="does not exist"):
        load_query_encoder(retriever, model, "onnx")
    ok = export_query_onnx(retriever, model, queries[:5])
    assert ok.exported and isinstance(load_query_encoder(retriever, model), OnnxQueryEncoder)
