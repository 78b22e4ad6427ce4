"""Spelling correction against the catalog vocabulary: typo'd real queries are fixed
("nkie shoos" -> "nike shoes"), clean ones left alone, unknown terms reported; the engine
searches the corrected query and says so (``corrected_from``), over HTTP too."""

from __future__ import annotations

import pytest
from index_helpers import sample_index

from vlsearch.index.spelling import SPELLING_FILE, SpellCorrector, build_vocabulary, load_vocabulary

REAL_TYPOS = {  # typed -> meant, as shoppers type them
    "nkie shoos": "nike shoes",
    "addidas tshrit": "adidas tshirt",
    "sunglases": "sunglasses",
    "jeens for men": "jeans for men",
    "mens blak watch": "mens black watch",
    "puma sneekers": "puma sneakers",
    "womens handbgs": "womens handbags",
    "red kurtha": "red kurta",
    "leather wallett": "leather wallet",
    "formal shrits": "formal shirts",
}


@pytest.fixture(scope="module")
def real_speller(fashion_dir):
    from vlsearch.catalog import load_catalog
    from vlsearch.index.understanding import build_lexicon

    products = load_catalog(fashion_dir, limit=4000).products
    vocabulary = build_vocabulary([p.title for p in products], build_lexicon(products).phrases)
    return SpellCorrector(vocabulary), products


@pytest.mark.real
def test_typod_real_queries_are_fixed(real_speller):
    speller, _products = real_speller
    fixed = {typed: speller.correct(typed).text for typed in REAL_TYPOS}
    assert fixed["nkie shoos"] == "nike shoes"
    share = sum(fixed[t] == meant for t, meant in REAL_TYPOS.items()) / len(REAL_TYPOS)
    assert share >= 0.8, fixed
    correction = speller.correct("nkie shoos")
    assert correction.changes == [("nkie", "nike"), ("shoos", "shoes")] and correction.original == "nkie shoos"


@pytest.mark.real
def test_clean_queries_from_real_titles_are_left_alone(real_speller):
    speller, products = real_speller
    queries = {f"{p.brand} {p.category}".lower() for p in products[:400] if p.brand and p.category}
    changed = [q for q in queries if speller.correct(q).changed]
    assert len(changed) / len(queries) < 0.02, changed
    untouched = speller.correct("red dress for women")
    assert not untouched.changed and untouched.text == "red dress for women" and not untouched.unknown


@pytest.mark.real
def test_unknown_terms_are_reported_not_invented(real_speller):
    speller, _ = real_speller
    chinese = speller.correct("连衣裙")
    assert chinese.unknown == ["连衣裙"] and not chinese.changed
    nonsense = speller.correct("qzxv wvvkpt")
    assert nonsense.unknown == ["qzxv", "wvvkpt"] and not nonsense.changed
    assert not speller.correct("shoes 42").unknown  # numbers are never unknown


def test_engine_searches_the_corrected_query_and_says_so(tmp_path_factory, sample_catalog_dir):
    from fastapi.testclient import TestClient

    from vlsearch.serving.app import create_app
    from vlsearch.serving.engine import Engine, current_version

    index_dir = sample_index(tmp_path_factory, sample_catalog_dir)[0]
    vocabulary = load_vocabulary(current_version(index_dir) / SPELLING_FILE)
    assert "nike" in vocabulary and "shoes" in vocabulary
    engine = Engine.open(index_dir)
    typed = engine.search("nkie shoos", k=10)
    clean = engine.search("nike shoes", k=10)
    assert typed.corrected_from == "nkie shoos" and typed.query == "nike shoes"
    assert [h.product_id for h in typed.hits] == [h.product_id for h in clean.hits]
    assert {c.field for c in typed.constraints} >= {"brand"}  # understood after correction
    assert clean.corrected_from is None
    off = engine.search("nkie shoos", k=10, spelling=False)
    assert off.corrected_from is None and off.query == "nkie shoos"

    client = TestClient(create_app(engine=engine))
    body = client.get("/search", params={"q": "nkie shoos", "k": 5}).json()
    assert body["corrected_from"] == "nkie shoos" and body["query"] == "nike shoes"
    body = client.get("/search", params={"q": "qzxvw", "k": 5}).json()
    assert body["unknown_terms"] == ["qzxvw"] and body["corrected_from"] is None
    assert client.post("/search", json={"q": "nkie shoos", "spell": False}).json()["corrected_from"] is None
