"""Lexical channel analysis and stored lists: stemmed BM25 ("shoes" finds "Sports Shoe"),
jieba-segmented Chinese titles and queries, an old unstemmed index still read as built, and
logged queries answered from the BM25 lists stored in the qid table (same as live BM25)."""

from __future__ import annotations

import json
import random

import pytest
from index_helpers import HashEncoder, build_synthetic_index, synthetic_products

from vlsearch.catalog import Product
from vlsearch.config import IndexConfig, ServeConfig
from vlsearch.errors import InputError
from vlsearch.index.lexical import ANALYSIS_FILE, LexicalIndex, build_lexical
from vlsearch.serving.engine import Engine


def product(i: int, title: str, **attrs) -> Product:
    return Product(id=str(i), title=title, image_paths=[], brand=attrs.pop("brand", None),
                   category=attrs.pop("category", None), attributes=attrs)


def test_stemmed_bm25_finds_singular_and_plural(tmp_path):
    products = [product(0, "Puma Men Black Sports Shoe"), product(1, "Fabindia Women Kurtas"),
                product(2, "Titan Men Watch")]
    build_lexical(products, tmp_path / "lex")
    lex = LexicalIndex.open(tmp_path / "lex")
    assert lex.search("shoes", 10)[1].tolist() == [0]
    assert lex.search("kurta", 10)[1].tolist() == [1]
    assert lex.search("watches", 10)[1].tolist() == [2]
    build_lexical(products, tmp_path / "plain", stemmer="")
    assert LexicalIndex.open(tmp_path / "plain").search("shoes", 10)[1].tolist() == []
    with pytest.raises(InputError, match="stemmer"):
        build_lexical(products, tmp_path / "bad", stemmer="klingon")


def test_index_without_analysis_file_is_read_unstemmed(tmp_path):
    products = [product(0, "Puma Sports Shoe"), product(1, "Nike Running Shoes")]
    build_lexical(products, tmp_path / "lex", stemmer="")
    (tmp_path / "lex" / ANALYSIS_FILE).unlink()  # as built before analysis.json existed
    # tantivy's default tokenizer is what the old index used; the query side matches it
    lex = LexicalIndex.open(tmp_path / "lex")
    assert lex.analysis is None and lex.search("shoes", 10)[1].tolist() == [1]


COLOURS = ["红色", "黑色", "白色", "蓝色"]
KINDS = ["运动鞋", "连衣裙", "衬衫", "手表"]
BRANDS = ["李宁", "安踏", "华为"]


def chinese_catalog(n: int = 120, seed: int = 0) -> list[Product]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        brand, colour, kind = rng.choice(BRANDS), rng.choice(COLOURS), rng.choice(KINDS)
        out.append(product(i, f"{brand}{colour}{kind}", brand=brand, category=kind, colour=colour))
    return out


def test_chinese_titles_are_segmented_for_keyword_matches(tmp_path):
    products = chinese_catalog()
    build_lexical(products, tmp_path / "lex")
    lex = LexicalIndex.open(tmp_path / "lex")
    assert json.loads((tmp_path / "lex" / ANALYSIS_FILE).read_text())["catalog_has_cjk"]
    query = "黑色运动鞋"  # no spaces: segmented into 黑色 / 运动鞋
    assert len(lex.terms(query)) >= 2
    _, rows = lex.search(query, 200)
    assert len(rows) > 0
    both = {i for i, p in enumerate(products) if "黑色" in p.title and "运动鞋" in p.title}
    assert both and set(rows[:len(both)].tolist()) == both  # products with both words rank first
    assert set(rows.tolist()) == {i for i, p in enumerate(products) if "黑色" in p.title or "运动鞋" in p.title}


def test_logged_queries_answer_the_lexical_channel_from_the_qid_table(tmp_path, monkeypatch):
    products = synthetic_products(300)
    enc = HashEncoder()
    build_synthetic_index(tmp_path, products, enc, IndexConfig(kind="flat", qid_top_k=120))
    engine = Engine.open(tmp_path, retriever=enc)
    live = Engine.open(tmp_path, ServeConfig(qid_table=False), retriever=enc)
    assert engine._state.stored_lexical
    queries = list(dict.fromkeys(engine._state.qid.queries))[:40]
    for text in queries:
        a = engine.search(text, k=100, channels=["lexical"])
        b = live.search(text, k=100, channels=["lexical"])
        assert [h.product_id for h in a.hits] == [h.product_id for h in b.hits], text
        assert [h.channel_scores["lexical"] for h in a.hits] == pytest.approx(
            [h.channel_scores["lexical"] for h in b.hits], rel=1e-5)
    # the stored list is what answered: lookup_lexical finds every logged query
    from vlsearch.text import query_id

    assert all(engine._state.qid.lookup_lexical(query_id(t)) is not None for t in queries)
    assert engine._state.qid.lookup_lexical(query_id("never logged words")) is None

    def no_bm25(*args, **kwargs):
        raise AssertionError("BM25 ran at request time for a logged query")

    # (the short-list fill is a live search by design: off here, so only the stored lists answer)
    engine = Engine.open(tmp_path, ServeConfig(fill_relax_order=()), retriever=enc)
    monkeypatch.setattr(engine._state.lexical, "search", no_bm25)
    for text in queries:
        engine.search(text, k=100)  # default channels, the query's own constraints
    with pytest.raises(AssertionError, match="BM25 ran"):
        engine.search("never logged words", k=10)
