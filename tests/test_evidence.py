"""Mined query understanding (index/evidence.py): a generated catalog with a known click log.

Every term's evidence is planted: brand names and confident category terms must become
hard, ambiguous ones unions (or soft), balanced words nothing, thresholds hold exactly, a
catalog/log conflict resolves as documented, and a Chinese catalog + log works the same."""

from __future__ import annotations

import dataclasses

import pytest

from vlsearch.catalog import Product
from vlsearch.config import IndexConfig
from vlsearch.index.evidence import mine_terms
from vlsearch.index.understanding import build_lexicon, understand

# one source alone never hard here (planted shares are exact); its own test below
CONFIG = IndexConfig(mine_min_support=20, mine_min_confidence=0.9, mine_max_values=3, mine_min_lift=1.5,
                     mine_single_source_confidence=1.01)


def _product(i, title, brand, category, gender="Men", usage="Casual", colour="Black"):
    return Product(id=str(i), title=title, image_paths=[], brand=brand, category=category,
                   attributes={"gender": gender, "usage": usage, "colour": colour, "article_type": category})


def _catalog():
    """Titles and attributes with planted evidence (counts are the point of each block).
    Mined phrases are keyed by their folded form ("sneakers" → "sneaker")."""
    rows = []

    def add(n, title, brand, category, **kw):
        for _ in range(n):
            rows.append(_product(len(rows), title, brand, category, **kw))

    add(30, "Zorro cotton Kurta for men", "Zorro", "Kurtas", usage="Ethnic")  # kurta: confident category
    add(20, "Velo Kurta for women", "Velo", "Kurtas", gender="Women", usage="Ethnic")
    add(10, "Velo dupatta for women", "Velo", "Dupatta", gender="Women", usage="Ethnic")
    add(25, "Ambra casual sneakers for women", "Ambra", "Casual Shoes", gender="Women")  # sneakers:
    add(5, "Ambra sneakers for men", "Ambra", "Sports Shoes", usage="Sports")  # 25 casual, 5 sports
    add(30, "Velo trainers for men", "Velo", "Sports Shoes", usage="Sports")  # trainers: catalog sports
    add(20, "Velo sports tee for women", "Velo", "Tshirts", gender="Women", usage="Sports")
    add(40, "Ambra cotton tee for men", "Ambra", "Tshirts")  # tee: Tshirts
    add(19, "Ambra loafers for men", "Ambra", "Loafers")  # one product short of the support
    add(20, "Ambra moccasin for men", "Ambra", "Moccasins")  # exactly at the support
    add(18, "Velo espadrille for women", "Velo", "Casual Shoes", gender="Women")  # 18 + 2 = 0.9
    add(2, "Velo espadrille for women", "Velo", "Flats", gender="Women")
    add(17, "Velo slipon for women", "Velo", "Casual Shoes", gender="Women")  # 17 + 3: 0.85 < 0.9
    add(3, "Velo slipon for women", "Velo", "Sandals", gender="Women")
    return rows


def _clicks(products):
    """Logged queries and what was clicked, by product id (count 1 per row)."""
    by_cat = {}
    for p in products:
        by_cat.setdefault(p.category, []).append(p.id)
    rows = []

    def click(query, category, n, start=0):
        ids = by_cat[category]
        rows.extend((query, ids[(start + i) % len(ids)], 1) for i in range(n))

    click("kurta", "Kurtas", 40)
    click("zorro kurta", "Kurtas", 25)
    click("sneakers", "Sports Shoes", 30)  # the log says sports, the titles mostly casual
    click("trainers", "Casual Shoes", 25)  # the log says casual, the titles sports: a conflict
    click("tee", "Tshirts", 30)
    click("cotton tee", "Tshirts", 10)
    click("loafers", "Loafers", 19)
    click("moccasin", "Moccasins", 20)
    click("espadrille", "Casual Shoes", 20)
    click("slipon", "Casual Shoes", 20)
    click("gym", "Tshirts", 20, start=40)  # only in the log: the sports tees and shoes
    click("gym", "Sports Shoes", 15)
    # "men's": shoppers typing it click men's and women's products alike
    rows.extend(("men's", p.id, 1) for p in products[20:80])
    return rows


@pytest.fixture(scope="module")
def catalog():
    return _catalog()


@pytest.fixture(scope="module")
def mined(catalog):
    return {" ".join(t.phrase): t for t in mine_terms(catalog, _clicks(catalog), CONFIG)}


def test_brands_and_confident_category_terms_become_hard(mined):
    assert (mined["zorro"].field, mined["zorro"].values, mined["zorro"].kind) == ("brand", ("zorro",), "hard")
    kurta = mined["kurta"]
    assert (kurta.field, kurta.values, kurta.kind, kurta.reason) == ("category", ("kurtas",), "hard", "agree")
    assert kurta.catalog_support == 50 and kurta.log_support >= 50
    assert mined["tee"].field == "category" and mined["tee"].values == ("tshirts",) and mined["tee"].hard
    # the field with the largest lift wins: "kurta" names the category, not the usage Ethnic
    assert mined["kurta"].lift > 1.5


def test_ambiguous_term_becomes_a_union_or_a_preference(catalog, mined):
    sneakers = mined["sneaker"]
    assert sneakers.field == "category" and sneakers.values == ("casual shoes", "sports shoes")
    assert sneakers.kind == "union" and sneakers.hard
    soft = {" ".join(t.phrase): t for t in
            mine_terms(catalog, _clicks(catalog), dataclasses.replace(CONFIG, mine_ambiguous="soft"))}
    assert soft["sneaker"].kind == "soft" and not soft["sneaker"].hard
    assert soft["kurta"].kind == "hard"  # single-valued terms stay hard


def test_catalog_and_log_conflict_resolves_as_documented(catalog, mined):
    # titles say Sports Shoes, clicks say Casual Shoes: their union, both confident, small
    trainers = mined["trainer"]
    assert trainers.values == ("casual shoes", "sports shoes") and trainers.reason == "union"
    assert trainers.kind == "union"
    # a union larger than mine_max_values is a conflict: soft, never a filter
    narrow = {" ".join(t.phrase): t for t in
              mine_terms(catalog, _clicks(catalog), dataclasses.replace(CONFIG, mine_max_values=1))}
    assert narrow["trainer"].kind == "soft" and narrow["trainer"].reason == "conflict"
    # evidence in one source only (the log knows "gym", no title says it): a preference
    gym = mined["gym"]
    assert gym.kind == "soft" and gym.reason == "single-source" and gym.log_support == 35


def test_stop_words_and_balanced_terms_do_not_constrain(mined, catalog):
    assert "for" not in mined  # spread over every field, or no lift ("Casual" is the base rate)
    assert not mined["cotton"].hard  # titles only (no log evidence): a preference at most
    # "men" (from "men's"): balanced between men and women in the clicks -> no hard constraint
    men = mined.get("men")
    assert men is None or not men.hard
    # multi-term phrases that say nothing their terms do not are dropped
    assert "zorro kurta" not in mined and "for men" not in mined


def test_thresholds_are_respected(mined, catalog):
    assert "loafers" not in mined  # 19 products and 19 clicks: under the support of 20
    assert mined["moccasin"].kind == "hard"  # exactly 20 of each
    assert mined["espadrille"].values == ("casual shoes",)  # 18/20 = 0.9 reaches the confidence
    assert mined["espadrille"].catalog_confidence == pytest.approx(0.9)
    # 17/20 = 0.85 does not: the catalog's set is {Casual Shoes, Sandals}, the log's {Casual Shoes}
    assert mined["slipon"].values == ("casual shoes", "sandals") and mined["slipon"].kind == "union"
    stricter = {" ".join(t.phrase): t for t in
                mine_terms(catalog, _clicks(catalog), dataclasses.replace(CONFIG, mine_min_support=21))}
    assert "moccasin" not in stricter and "kurta" in stricter


def test_a_near_certain_single_source_is_hard_and_gender_stays_soft(catalog):
    near = {" ".join(t.phrase): t for t in mine_terms(
        catalog, _clicks(catalog), dataclasses.replace(CONFIG, mine_single_source_confidence=0.98))}
    assert near["cotton"].kind == "union" and near["cotton"].reason == "single-source"  # 70/70 titles
    assert near["gym"].hard  # 35/35 clicks, no title says it
    # "women" in the titles: every such product is a woman's, but gender is never mined hard
    assert near["women"].field == "gender" and near["women"].kind == "soft"
    everything = dataclasses.replace(CONFIG, mine_single_source_confidence=0.98,
                                     mine_hard_fields=("brand", "category", "colour", "gender", "usage"))
    assert {" ".join(t.phrase): t for t in mine_terms(catalog, _clicks(catalog), everything)}["women"].hard


def test_a_term_before_the_category_word_is_a_modifier_not_the_head(catalog):
    """"Sneaker Socks" are socks: with the exact catalog phrases known, a title's words before
    the one naming its category give no category evidence."""
    socks = catalog + [_product(1000 + i, "Ambra sneaker socks", "Ambra", "Socks") for i in range(10)]
    lexicon = build_lexicon(socks)
    blind = {" ".join(t.phrase): t for t in mine_terms(socks, _clicks(catalog), CONFIG)}
    assert "socks" in blind["sneaker"].values  # 10 of 40 titles: socks in the value set
    seen = {" ".join(t.phrase): t for t in mine_terms(socks, _clicks(catalog), CONFIG, known=lexicon.phrases)}
    assert seen["sneaker"].values == ("casual shoes", "sports shoes") and seen["sneaker"].kind == "union"
    assert seen["sneaker"].catalog_support == 30  # the sock titles are not counted for category


def test_catalog_without_a_log_decides_alone(catalog):
    alone = {" ".join(t.phrase): t for t in mine_terms(catalog, None, CONFIG)}
    assert alone["kurta"].kind == "hard" and alone["kurta"].reason == "one-source-only"
    assert alone["sneaker"].values == ("casual shoes", "sports shoes")  # 25 casual + 5 sports
    assert "gym" not in alone


def test_lexicon_uses_mined_terms_and_keeps_exact_values_as_the_base(catalog):
    lexicon = build_lexicon(catalog)
    lexicon.add_mined(mine_terms(catalog, _clicks(catalog), CONFIG, known=lexicon.phrases))
    got = understand("zorro sneakers for women", lexicon)
    fields = {c.field: set(c.values) for c in got.constraints}
    assert fields == {"brand": {"zorro"}, "category": {"casual shoes", "sports shoes"},
                      "gender": {"women"}}  # "women": exact catalog gender (no Unisex in it)
    assert "zorro" in {" ".join(p) for p in lexicon.phrases}  # the brand: exact catalog value
    assert ("zorro",) not in lexicon.mined
    prefs = understand("zorro sports", lexicon)
    assert {c.field: c.values for c in prefs.constraints} == {"brand": ("zorro",)}
    assert [(c.field, c.values, c.source) for c in prefs.preferences] == [("usage", ("sports",), "soft")]
    # a preference on a field that also has a hard constraint adds nothing: dropped
    assert understand("gym tee", lexicon).preferences == []
    assert understand("cotton for", lexicon).constraints == []


def _chinese_catalog():
    rows = []

    def add(n, title, brand, category, gender="Men", usage="Casual"):
        for _ in range(n):
            rows.append(_product(len(rows), title, brand, category, gender=gender, usage=usage))

    add(20, "耐克 男士 跑鞋", "耐克", "运动鞋", usage="Sports")  # 跑鞋 (running shoe): sports shoes
    add(10, "李宁 男士 跑鞋", "李宁", "运动鞋", usage="Sports")
    add(15, "阿迪达斯 女士 球鞋", "阿迪达斯", "休闲鞋", gender="Women")  # 球鞋 (sneaker): both kinds
    add(15, "李宁 男士 球鞋", "李宁", "运动鞋", usage="Sports")
    add(30, "李宁 男士 卫衣", "李宁", "卫衣")
    return rows


def test_chinese_catalog_and_log():
    catalog = _chinese_catalog()
    by_cat = {}
    for p in catalog:
        by_cat.setdefault(p.category, []).append(p.id)
    clicks = [("跑鞋", pid, 1) for pid in by_cat["运动鞋"][:30]]
    clicks += [("球鞋", pid, 1) for pid in by_cat["休闲鞋"] + by_cat["运动鞋"][30:]]
    clicks += [("耐克跑鞋", pid, 1) for pid in by_cat["运动鞋"][:20]]
    mined = {" ".join(t.phrase): t for t in mine_terms(catalog, clicks, CONFIG)}
    assert mined["跑鞋"].field == "category" and mined["跑鞋"].values == ("运动鞋",) and mined["跑鞋"].kind == "hard"
    assert mined["球鞋"].values == ("休闲鞋", "运动鞋") and mined["球鞋"].kind == "union"
    lexicon = build_lexicon(catalog)
    lexicon.add_mined(mine_terms(catalog, clicks, CONFIG, known=lexicon.phrases))
    got = {c.field: set(c.values) for c in understand("耐克跑鞋", lexicon).constraints}
    assert got == {"brand": {"耐克"}, "category": {"运动鞋"}}


def test_a_live_update_keeps_the_mined_layer_over_the_new_catalog_values(catalog):
    lexicon = build_lexicon(catalog, {"category": {"kurtas": ("kurtha",)}})
    lexicon.add_mined(mine_terms(catalog, _clicks(catalog), CONFIG, known=lexicon.phrases))
    newer = catalog + [_product(5000, "Nova Kurta", "Nova", "Kurtas")]
    again = lexicon.with_catalog(build_lexicon(newer))
    assert ("nova",) in again.phrases and again.mined == lexicon.mined and again.synonyms == lexicon.synonyms
    assert {c.field: c.values for c in understand("nova sneakers", again).constraints} == {
        "brand": ("nova",), "category": ("casual shoes", "sports shoes")}
