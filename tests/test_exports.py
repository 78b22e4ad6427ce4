"""`vlsearch export --format sentence-transformers`: the exported directory loads with
sentence-transformers' own SentenceTransformer and encodes like the Retriever (term sorting
and Keyword Enhancement included); its BERT folder opens with transformers' Auto classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsearch.catalog import Product
from vlsearch.cli import main
from vlsearch.config import preset
from vlsearch.model import Retriever
from vlsearch.model.keywords import mine_keywords

GRID, DIM = (2, 2), 8
CLICKS = [("red dress", "red cotton dress", 5), ("red shirt", "red silk shirt", 4),
          ("dress", "blue cotton dress", 3), ("red", "red silk shirt", 3), ("shoes", "white running shoes", 2)]
QUERIES = ["red", "dress red", "red dress", "nike running shoes for men", "Red", "连衣裙", "", "a " * 40]
TOLERANCE = 1e-5


def _model(tmp_path, config, **kwargs):
    torch.manual_seed(0)
    table = mine_keywords(CLICKS, min_term_count=1, min_pair_count=1, per_term=8)
    retriever = Retriever.build(config, patch_dim=DIM, grid=GRID, keywords=table, **kwargs)
    # move every weight off its initial value so a mix-up of towers or heads shows
    with torch.no_grad():
        for p in retriever.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return retriever, retriever.save(tmp_path / "model")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    config = preset("minilm")
    config.model.keywords_per_query, config.model.keyword_max_query_terms = 2, 2
    return _model(tmp_path_factory.mktemp("minilm"), config)


def test_query_tower_export_matches_encode_queries(minilm, tmp_path):
    from sentence_transformers import SentenceTransformer

    retriever, model_dir = minilm
    assert main(["export", "--model", str(model_dir), "--format", "sentence-transformers",
                 "--out", str(tmp_path / "st"), "--quiet"]) == 0
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    ours = retriever.encode_queries(QUERIES)
    theirs = st.encode(QUERIES, convert_to_numpy=True, batch_size=3)
    assert theirs.shape == ours.shape == (len(QUERIES), retriever.embed_dim)
    assert np.abs(theirs - ours).max() < TOLERANCE
    # Keyword Enhancement is in the export: "red" gets keywords, and they change its vector
    assert retriever.query_keywords(["red"])[0]
    plain = retriever.tokenizer.encode(["red"], retriever.config.model.max_query_len, sort_terms=True)
    assert st.preprocess(["red"])["input_ids"].shape[1] > plain.input_ids.shape[1]
    # term sorting: an already-sorted query gives the same vector
    assert np.abs(theirs[1] - theirs[2]).max() < TOLERANCE


def test_bert_folder_opens_with_transformers_auto_classes(minilm, tmp_path):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    _retriever, model_dir = minilm
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "st"), "--quiet"]) == 0
    folder = tmp_path / "st" / "0_VlsearchTextInput"
    assert AutoConfig.from_pretrained(folder).model_type == "bert"
    assert AutoModel.from_pretrained(folder).config.hidden_size == 384
    assert AutoTokenizer.from_pretrained(folder)("red dress")["input_ids"]


def test_title_encoder_export_equals_a_title_only_product_tower(tmp_path):
    from sentence_transformers import SentenceTransformer

    config = preset("tiny")
    config.model.use_images = False
    config.model.pooling = "cls"
    retriever, model_dir = _model(tmp_path, config)
    assert main(["export", "--model", str(model_dir), "--tower", "title", "--out", str(tmp_path / "st"),
                 "--quiet"]) == 0
    titles = ["red cotton dress", "dress cotton red", "Nike Men White Running Shoes", "连衣裙 红色"]
    products = [Product(id=str(i), title=t, image_paths=[], brand=None, category="c", attributes={})
                for i, t in enumerate(titles)]
    ours = retriever.encode_products(products)
    st = SentenceTransformer(str(tmp_path / "st"), device="cpu", trust_remote_code=True)
    theirs = st.encode(titles, convert_to_numpy=True)
    assert np.abs(theirs - ours).max() < TOLERANCE
    assert np.abs(theirs[0] - theirs[1]).max() < TOLERANCE  # title terms are sorted too


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
