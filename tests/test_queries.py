"""Tests of vlsearch.queries: relevance rule, mocked-query generator, splits, Q(p), BEIR
export and the click-log readers."""

from __future__ import annotations

import collections
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlsearch.catalog import Product
from vlsearch.config import DataConfig
from vlsearch.errors import InputError
from vlsearch.queries import (
    CATEGORY_PHRASES,
    COLOUR_PHRASES,
    GENDER_PHRASES,
    SYNONYMS,
    USAGE_PHRASES,
    ClickLog,
    MockQuery,
    RelevanceIndex,
    colour_probe_queries,
    export_beir,
    generate_queries,
    intent_key,
    names_colour,
    read_click_log,
    relevant,
    sampling_probabilities,
    split_products,
    split_queries,
)
from vlsearch.queries.generator import _typo
from vlsearch.text import normalize_query, query_id, segment


def make_product(pid, category, brand=None, title=None, **attributes) -> Product:
    return Product(
        id=str(pid), title=title or f"{brand or ''} {category or ''}".strip(), image_paths=[],
        brand=brand, category=category, attributes=dict(attributes),
    )


CATEGORIES = ["Tshirts", "Shirts", "Watches", "Kurtas", "Handbags", "Jeans", "Sports Shoes",
              "Casual Shoes", "Flip Flops", "Sunglasses", "Perfume and Body Mist", "Odd Thing"]
COLOURS = ["Black", "Navy Blue", "Grey", "Red", "White", "Off White", "Multi", "NA"]
GENDERS = ["Men", "Women", "Boys", "Girls", "Unisex"]
USAGES = ["Casual", "Sports", "Formal", "Ethnic", "Party", "NA"]


def hand_catalog(n: int = 600, seed: int = 0) -> list[Product]:
    rng = random.Random(seed)
    products = []
    for i in range(n):
        category = rng.choice(CATEGORIES + [None])
        brand = rng.choice(["Nike", "Peter England", "United Colors of Benetton", "Titan", None])
        colour = rng.choice(COLOURS)
        title_colour = colour if rng.random() < 0.8 else ""
        products.append(make_product(
            i, category, brand,
            title=f"{brand or ''} {rng.choice(GENDERS)} {title_colour} {category or ''}",
            gender=rng.choice(GENDERS), colour=colour, usage=rng.choice(USAGES),
            master_category=rng.choice(["Apparel", "Footwear", "Accessories", "Personal Care"]),
        ))
    return products


HAND = hand_catalog()
INDEX = RelevanceIndex(HAND)


@pytest.fixture(scope="module")
def real_products(fashion_dir) -> list[Product]:
    from vlsearch.catalog import load_catalog

    return load_catalog(fashion_dir, limit=3000).products


# ------------------------------------------------------------------------ relevance rule


def test_relevance_rule_gender():
    men = make_product(1, "Tshirts", gender="Men")
    women = make_product(2, "Tshirts", gender="Women")
    unisex = make_product(3, "Tshirts", gender="Unisex")
    boys = make_product(4, "Tshirts", gender="Boys")
    girls = make_product(5, "Tshirts", gender="Girls")
    table = {
        "men": "1 3", "Men": "1 3", "men's": "1 3", "male": "1 3",
        "women": "2 3", "ladies": "2 3",
        "unisex": "3", "boys": "4", "girls": "5", "kids": "4 5",
    }
    everyone = [men, women, unisex, boys, girls]
    for value, expected in table.items():
        got = [p.id for p in everyone if relevant(p, {"gender": value})]
        assert got == expected.split(), value


def test_relevance_rule_values_are_case_and_space_insensitive():
    p = make_product(1, "Sports Shoes", brand="United Colors of Benetton", colour="Navy Blue",
                     gender="Men", usage="Sports")
    assert relevant(p, {"category": "sports  shoes", "brand": "united colors OF benetton",
                        "colour": "NAVY BLUE", "usage": "sports"})
    assert not relevant(p, {"colour": "Blue"})  # navy blue is not blue
    assert not relevant(p, {"brand": "Benetton"})
    assert relevant(p, {})  # nothing expressed: everything matches
    assert relevant(p, {"colour": ""})  # an empty value expresses nothing


def test_relevance_rule_missing_product_values_and_other_keys():
    p = make_product(1, None, brand=None, colour="NA", season="Summer")
    assert not relevant(p, {"category": "Tshirts"})
    assert not relevant(p, {"brand": "Nike"})
    assert not relevant(p, {"colour": "NA Blue"})
    assert relevant(p, {"season": "summer"}) and not relevant(p, {"season": "Winter"})
    q = make_product(2, None, article_type="Tops")  # category falls back to article_type
    assert relevant(q, {"category": "tops"})


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["category", "colour", "gender", "brand", "usage"]),
    st.sampled_from(CATEGORIES + COLOURS + GENDERS + USAGES + ["Nike", "kids", "titan", ""]),
    max_size=4,
))
def test_relevance_index_equals_the_rule(attributes):
    products = HAND
    expected = [p.id for p in products if relevant(p, attributes)]
    assert INDEX.matching(attributes) == expected



def test_intent_key_is_canonical():
    assert intent_key({"gender": "Men", "category": "Tshirts"}) == intent_key(
        {"category": "tshirts", "gender": "men's"}
    ) == (("category", "tshirts"), ("gender", "men"))


# ------------------------------------------------------------------------ generator


def test_every_query_is_satisfied_by_its_source_hand_built():
    by_id = {p.id: p for p in HAND}
    queries = generate_queries(HAND, DataConfig(queries_per_product=5, typo_rate=0.1), seed=1)
    assert queries
    for q in queries:
        assert relevant(by_id[q.product_id], q.attributes), q
        assert "category" in q.attributes or "brand" in q.attributes, q
        assert set(q.attributes) <= {"category", "colour", "gender", "brand", "usage"}
        assert q.count >= 1 and isinstance(q.count, int)
        assert q.text == q.text.strip() and "  " not in q.text
    # products with neither category nor brand give no query
    no_anchor = {p.id for p in HAND if not p.category and not p.brand}
    assert no_anchor and not no_anchor & {q.product_id for q in queries}


def test_attributes_are_in_catalog_spelling():
    p = make_product(7, "Tshirts", brand="Nike", colour="Navy Blue", gender="Men", usage="Sports",
                     master_category="Apparel")
    queries = generate_queries([p], DataConfig(queries_per_product=40), seed=0)
    values = collections.defaultdict(set)
    for q in queries:
        for key, value in q.attributes.items():
            values[key].add(value)
    assert values["category"] == {"Tshirts"} and values["brand"] == {"Nike"}
    assert values["colour"] == {"Navy Blue"} and values["usage"] == {"Sports"}
    assert values["gender"] == {"Men"}
    kid = make_product(8, "Tshirts", gender="Boys")
    genders = {q.attributes.get("gender")
               for q in generate_queries([kid], DataConfig(queries_per_product=40), seed=0)}
    assert {"Boys", "Kids"} <= genders


def test_queries_per_product_and_distinct_texts():
    config = DataConfig(queries_per_product=4)
    queries = generate_queries(HAND, config, seed=5)
    per_product = collections.Counter(q.product_id for q in queries)
    rich = [p.id for p in HAND if p.category and p.brand]
    assert all(per_product[i] == 4 for i in rich)
    texts = collections.defaultdict(list)
    for q in queries:
        texts[q.product_id].append(q.text)
    assert all(len(set(v)) == len(v) for v in texts.values())


def test_generator_is_deterministic_and_order_independent():
    config = DataConfig(queries_per_product=3, typo_rate=0.1)
    a = generate_queries(HAND, config, seed=11)
    b = generate_queries(HAND, config, seed=11)
    assert a == b
    c = generate_queries(list(reversed(HAND)), config, seed=11)
    key = lambda q: (q.product_id, q.text)
    assert sorted(a, key=key) == sorted(c, key=key)
    assert generate_queries(HAND, config, seed=12) != a


def test_phrasing_variety_on_one_product():
    p = make_product(1, "Tshirts", brand="Nike", colour="Grey", gender="Men", usage="Sports",
                     master_category="Apparel")
    texts = [q.text for q in generate_queries([p], DataConfig(queries_per_product=300,
                                                              typo_rate=0.0), seed=2)]
    joined = "\n".join(texts)
    for phrase in ("tshirts", "tshirt", "t-shirt", "tees", "grey", "gray", "men's", "mens",
                   "for men", "nike"):
        assert re.search(rf"(^|\s){re.escape(phrase)}($|\s)", joined, re.MULTILINE), phrase
    # word order varies: the category is not always the last phrase
    cat_last = sum(bool(re.search(r"(tshirts?|t-shirts?|t shirt|tees?)$", t)) for t in texts)
    assert 0.4 * len(texts) < cat_last < 0.95 * len(texts)


def test_size_distribution_and_click_counts():
    queries = generate_queries(HAND, DataConfig(queries_per_product=4), seed=3)
    sizes = collections.Counter(len(q.attributes) for q in queries)
    two_three = sizes[2] + sizes[3]
    assert two_three > 0.5 * len(queries)
    assert sizes[1] > 0 and sizes[4] > 0
    counts = np.array([q.count for q in queries])
    assert counts.min() >= 1
    assert counts.max() > 10 * np.median(counts)  # heavy tail
    mass = np.array(sorted(sampling_probabilities(queries).values(), reverse=True))
    assert mass[: len(mass) // 100].sum() > 0.04  # the top 1% of products: over 4% of clicks


def _vocabulary(products) -> set[str]:
    words: set[str] = set()
    for table in (CATEGORY_PHRASES, COLOUR_PHRASES):
        for key, phrases in table.items():
            words.update(segment(key))
            for phrase in phrases:
                words.update(segment(phrase))
    for table in (GENDER_PHRASES, USAGE_PHRASES):
        for key, (before, after) in table.items():
            words.update(segment(key))
            for phrase in before + after:
                words.update(segment(phrase))
    for p in products:
        for value in (p.brand, p.category, *p.attributes.values()):
            if value:
                words.update(segment(value))
    return words


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.3])
def test_typo_rate_is_roughly_the_configured_rate(rate):
    vocab = _vocabulary(HAND)
    queries = generate_queries(HAND, DataConfig(queries_per_product=4, typo_rate=rate), seed=4)
    with_typo = sum(any(w not in vocab for w in segment(q.text)) for q in queries)
    share = with_typo / len(queries)
    # a typo occasionally lands on another real word (or a word of <3 letters has none)
    assert rate * 0.7 - 0.005 <= share <= rate * 1.05 + 0.005, share


def test_typo_kinds_and_short_words():
    rng = random.Random(0)
    assert _typo(rng, "a to xy") == "a to xy"  # only 1-2 letter words: untouched
    seen = set()
    for _ in range(300):
        out = _typo(rng, "to bag")
        assert out.startswith("to ") and out != "to bag"
        seen.add(out[3:])
    swaps, drops, doubles = {"abg", "bga"}, {"ag", "bg", "ba"}, {"bbag", "baag", "bagg"}
    assert seen <= swaps | drops | doubles
    assert seen & swaps and seen & drops and seen & doubles


def test_generation_is_fast():
    products = hand_catalog(20_000, seed=9)
    started = time.perf_counter()
    queries = generate_queries(products, DataConfig(), seed=0)
    elapsed = time.perf_counter() - started
    assert len(queries) > 50_000
    assert elapsed < 15, elapsed  # ~1 s here; the full 44k catalog takes ~2-3 s


@pytest.mark.real
def test_real_catalog_queries(real_products):
    by_id = {p.id: p for p in real_products}
    config = DataConfig()
    queries = generate_queries(real_products, config, seed=config.seed)
    assert len(queries) > 0.9 * len(real_products) * config.queries_per_product
    for q in queries:
        assert relevant(by_id[q.product_id], q.attributes), q
    texts = [q.text for q in queries]
    assert any("'s " in t for t in texts)  # possessives
    assert any(t.endswith(("for men", "for women")) for t in texts)
    assert {"tshirts", "tshirt"} & {w for t in texts for w in t.split()}
    # shown with `pytest -s`: they must read like what shoppers type
    print("\n40 generated queries from the real catalog:")
    for q in random.Random(0).sample(queries, 40):
        print(f"  {q.text!r:48} clicks={q.count:<5} {q.attributes}")


def test_colour_probe_asks_for_colours_only_images_show(real_products):
    by_id = {p.id: p for p in real_products}
    probe = colour_probe_queries(real_products, seed=5)
    colours = {p.attributes.get("colour") for p in real_products} - {None}
    # about one product in eleven of the real catalog has a title without any colour
    assert 0.04 * len(real_products) < len(probe) < 0.2 * len(real_products)
    assert len({q.product_id for q in probe}) == len(probe)
    for q in probe:
        source = by_id[q.product_id]
        assert set(q.attributes) <= {"category", "colour", "gender"}
        assert {"category", "colour"} <= set(q.attributes)
        assert relevant(source, q.attributes), q
        assert not any(names_colour(source.title, c) for c in colours), (q, source.title)
        assert any(names_colour(q.text, c) for c in colours), q  # the query does name it
    # a product whose title names its colour is never a probe; same seed, same queries
    assert not {p.id for p in real_products if names_colour(p.title, p.attributes.get("colour") or "")
                } & {q.product_id for q in probe}
    assert colour_probe_queries(list(reversed(real_products)), seed=5)[::-1] == probe
    assert [q.text for q in colour_probe_queries(real_products, seed=6)] != [q.text for q in probe]


# ------------------------------------------------------------------------ splits


def test_split_products_exact_deterministic_order_free():
    train, heldout = split_products(HAND, 0.1, seed=3)
    assert len(heldout) == 60 and len(train) == 540
    assert not set(train) & set(heldout)
    assert [p.id for p in HAND if p.id in set(heldout)] == heldout  # catalog order
    again = split_products(list(reversed(HAND)), 0.1, seed=3)
    assert set(again.heldout) == set(heldout)
    assert set(split_products(HAND, 0.1, seed=4).heldout) != set(heldout)
    assert split_products(HAND, 0.0, seed=3).heldout == []
    with pytest.raises(ValueError):
        split_products(HAND, 1.0, seed=3)


def test_split_queries_rules():
    config = DataConfig(queries_per_product=4, typo_rate=0.05)
    queries = generate_queries(HAND, config, seed=2)
    _, heldout = split_products(HAND, 0.1, seed=2)
    train, valid, test = split_queries(queries, 0.1, 0.1, seed=2, heldout_product_ids=heldout)
    heldout_set = set(heldout)
    # held-out products never appear in any split (and so never in the training clicks)
    for part in (train, valid, test):
        assert not {q.product_id for q in part} & heldout_set
    clicks = ClickLog.from_queries(train)
    assert not set(clicks.product_id) & heldout_set
    # intents disjoint
    intents = [{q.intent for q in part} for part in (train, valid, test)]
    assert not intents[0] & intents[1] and not intents[0] & intents[2]
    assert not intents[1] & intents[2]
    all_intents = {q.intent for q in queries if q.product_id not in heldout_set}
    assert abs(len(intents[1]) - 0.1 * len(all_intents)) <= 1
    # no evaluation text (qid) in training
    train_ids = {query_id(q.text) for q in train}
    assert not train_ids & {query_id(q.text) for q in valid + test}
    # nothing invented; little dropped
    assert len(train) + len(valid) + len(test) <= len(queries)
    kept = sum(q.product_id not in heldout_set for q in queries)
    assert len(train) + len(valid) + len(test) > 0.9 * kept
    # deterministic
    assert split_queries(queries, 0.1, 0.1, seed=2, heldout_product_ids=heldout) == (
        train, valid, test)


def test_split_queries_edge_cases():
    assert split_queries([], 0.05, 0.05, seed=0) == ([], [], [])
    with pytest.raises(ValueError):
        split_queries([], 0.6, 0.5, seed=0)


@pytest.mark.real
def test_real_catalog_splits(real_products):
    config = DataConfig()
    train_ids, heldout_ids = split_products(real_products, config.heldout_product_fraction,
                                            config.seed)
    train_products = [p for p in real_products if p.id in set(train_ids)]
    queries = generate_queries(train_products, config, config.seed)
    train, valid, test = split_queries(queries, config.valid_query_fraction,
                                       config.test_query_fraction, config.seed)
    assert valid and test
    assert not {q.intent for q in train} & {q.intent for q in valid + test}
    assert not {normalize_query(q.text) for q in train} & {normalize_query(q.text)
                                                           for q in valid + test}
    assert not set(heldout_ids) & {q.product_id for q in train}


# ------------------------------------------------------------------------ Q(p)


def test_sampling_probabilities():
    log = ClickLog(["a", "b", "a", "c"], ["p1", "p2", "p1", "p3"], np.array([3, 1, 2, 4]))
    q = sampling_probabilities(log)
    assert q == pytest.approx({"p1": 0.5, "p2": 0.1, "p3": 0.4})
    queries = generate_queries(HAND[:200], DataConfig(), seed=0)
    probs = sampling_probabilities(queries)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert all(v > 0 for v in probs.values())
    assert sampling_probabilities(ClickLog()) == {}


# ------------------------------------------------------------------------ BEIR export


def test_export_beir(tmp_path: Path):
    from vlsearch.evaluation import read_beir_queries, read_qrels

    by_id = {p.id: p for p in HAND}
    queries = generate_queries(HAND, DataConfig(queries_per_product=3), seed=6)
    n = export_beir(queries, HAND, tmp_path / "eval", max_queries=150, seed=1)
    assert n == 150
    header = (tmp_path / "eval" / "qrels.tsv").read_text().splitlines()[0]
    assert header == "query-id\tcorpus-id\tscore"
    beir = read_beir_queries(tmp_path / "eval" / "queries.jsonl")
    qrels = read_qrels(tmp_path / "eval" / "qrels.tsv")
    assert len(beir) == 150 and len({q.id for q in beir}) == 150
    for q in beir:
        meta = q.metadata
        attributes = meta["attributes"]
        judged = qrels[q.id]
        assert judged[meta["source_product"]] == 2
        assert list(judged.values()).count(2) == 1
        assert meta["category"] == attributes.get("category")
        # every judged product is relevant, and every relevant product is judged
        expected = {p.id for p in HAND if relevant(p, attributes)}
        assert set(judged) == expected
        source = by_id[meta["source_product"]]
        colour = attributes.get("colour")
        assert meta["colour_only_in_image"] == bool(
            colour and colour.lower() not in source.title.lower()
            and not (colour == "Grey" and "gray" in source.title.lower())
        )
    # the sample is seeded and keeps the original order
    again = export_beir(queries, HAND, tmp_path / "again", max_queries=150, seed=1)
    assert again == 150
    assert (tmp_path / "eval" / "queries.jsonl").read_text() == (
        tmp_path / "again" / "queries.jsonl").read_text()
    where = {(m.text, m.product_id): i for i, m in enumerate(queries)}
    positions = [where[(q.text, q.metadata["source_product"])] for q in beir]
    assert positions == sorted(positions)


def test_export_beir_colour_flag_uses_synonyms(tmp_path: Path):
    products = [
        make_product("a", "Tshirts", title="Nike Men Navy T-shirt", colour="Navy Blue"),
        make_product("b", "Tshirts", title="Nike Men T-shirt", colour="Navy Blue"),
        make_product("c", "Tshirts", title="Nike Men Gray Tee", colour="Grey"),
    ]
    queries = [
        MockQuery("navy tshirt", {"category": "Tshirts", "colour": "Navy Blue"}, "a"),
        MockQuery("navy tshirt", {"category": "Tshirts", "colour": "Navy Blue"}, "b"),
        MockQuery("grey tee", {"category": "Tshirts", "colour": "Grey"}, "c"),
        MockQuery("tshirts", {"category": "Tshirts"}, "c"),
    ]
    export_beir(queries, products, tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert [x["metadata"]["colour_only_in_image"] for x in lines] == [False, True, False, False]
    qrels = (tmp_path / "qrels.tsv").read_text().splitlines()[1:]
    assert qrels[:2] == ["q0\ta\t2", "q0\tb\t1"]
    assert sum(1 for x in qrels if x.startswith("q3\t")) == 3


@pytest.mark.real
def test_export_beir_real_catalog_is_fast_and_correct(real_products, tmp_path):
    from vlsearch.evaluation import read_qrels

    queries = generate_queries(real_products, DataConfig(), seed=0)
    started = time.perf_counter()
    n = export_beir(queries, real_products, tmp_path, max_queries=1000, seed=0)
    assert n == 1000 and time.perf_counter() - started < 10
    qrels = read_qrels(tmp_path / "qrels.tsv")
    by_id = {p.id: p for p in real_products}
    lines = [json.loads(x) for x in (tmp_path / "queries.jsonl").read_text().splitlines()]
    for x in lines[:200]:
        attrs = x["metadata"]["attributes"]
        judged = qrels[x["_id"]]
        assert all(relevant(by_id[pid], attrs) for pid in judged)
        assert len(judged) == sum(relevant(p, attrs) for p in real_products)
    flagged = sum(x["metadata"]["colour_only_in_image"] for x in lines)
    with_colour = sum("colour" in x["metadata"]["attributes"] for x in lines)
    assert 0 < flagged < 0.5 * with_colour


# ------------------------------------------------------------------------ click logs


def test_read_csv_click_log_with_bad_lines(tmp_path: Path):
    path = tmp_path / "clicks.csv"
    path.write_bytes(
        b"Query,product_id,count\n"
        b"red dress,15970,3\n"
        b'"nike, shoes",39386,1\n'
        b",123,1\n"  # 4: empty query
        b"blue jeans,,2\n"  # 5: empty product
        b"blue jeans,77,zero\n"  # 6: bad count
        b"blue jeans,77,0\n"  # 7: count must be positive
        b"too,many,fields,here\n"  # 8
        b"\n"
        b"bad \xff bytes,5,1\n"  # 10
        b"!!!,5,1\n"  # 11: no term
        b'"multi\nline query",42,2.0\n'  # 12-13
        b"last,43,1\n"  # 14
    )
    log = read_click_log(path)
    assert log.query == ["red dress", "nike, shoes", "multi\nline query", "last"]
    assert log.product_id == ["15970", "39386", "42", "43"]
    assert log.count.tolist() == [3, 1, 2, 1] and log.count.dtype == np.int64
    assert log.rows_read == 11  # blank lines are not rows
    lines = {(p.line, p.field) for p in log.problems}
    assert lines == {(4, "query"), (5, "product_id"), (6, "count"), (7, "count"), (8, None),
                     (10, "query"), (11, "query")}
    assert all(p.file == str(path) for p in log.problems)
    assert f"{path}:6 [count]" in str(next(p for p in log.problems if p.line == 6))
    assert "7 skipped" in log.summary()
    assert next(iter(log.rows())) == ("red dress", "15970", 3)
    assert log.qids().tolist() == [query_id(q) for q in log.query]


def test_read_click_log_count_optional_and_tsv(tmp_path: Path):
    path = tmp_path / "c.tsv"
    path.write_text("product_id\tquery\n1\tred dress\n2\tblue jeans\n")
    log = read_click_log(path)
    assert log.query == ["red dress", "blue jeans"] and log.count.tolist() == [1, 1]


def test_read_click_log_missing_columns_and_empty(tmp_path: Path):
    path = tmp_path / "c.csv"
    path.write_text("query,product\nred,1\n")
    with pytest.raises(InputError, match=r"c\.csv.*product_id"):
        read_click_log(path)
    path.write_text("")
    with pytest.raises(InputError, match=r"c\.csv.*empty"):
        read_click_log(path)
    path.write_text("query,product_id\n")
    with pytest.raises(InputError, match=r"c\.csv.*no rows"):
        read_click_log(path)
    with pytest.raises(InputError, match="not found"):
        read_click_log(tmp_path / "missing.csv")
    (tmp_path / "c.xlsx").write_text("x")
    with pytest.raises(InputError, match="unknown click-log format"):
        read_click_log(tmp_path / "c.xlsx")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('{"q": "red", "product_id": 1}\n')
    with pytest.raises(InputError, match=r"c\.jsonl.*query"):
        read_click_log(jsonl)
    jsonl.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        read_click_log(jsonl)


def test_read_jsonl_click_log(tmp_path: Path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'{"query": "red dress", "product_id": 15970, "count": 2}\n'
        b'{"query": "blue", "product_id": "7"}\n'
        b"{not json\n"  # 3
        b"[1, 2]\n"  # 4
        b'{"query": "x"}\n'  # 5: missing product_id
        b'{"query": "ok", "product_id": "8", "count": 1.5}\n'  # 6
        b'{"query": "caf\xff", "product_id": "8"}\n'  # 7
        b"\n"
        b'{"query": "bool", "product_id": true}\n'  # 9
    )
    log = read_click_log(path)
    assert log.query == ["red dress", "blue"] and log.product_id == ["15970", "7"]
    assert log.count.tolist() == [2, 1]
    assert {(p.line, p.field) for p in log.problems} == {
        (3, None), (4, None), (5, "product_id"), (6, "count"), (7, None), (9, "product_id")}


def test_click_log_parquet_round_trip(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    queries = generate_queries(HAND[:50], DataConfig(), seed=0)
    log = ClickLog.from_queries(queries + queries[:5])  # duplicates merge, counts add up
    assert len(log) == len(queries)
    assert log.total_clicks == sum(q.count for q in queries) + sum(q.count for q in queries[:5])
    log.write_parquet(tmp_path / "train.parquet")
    table = pq.read_table(tmp_path / "train.parquet")
    assert table.column_names == ["query", "product_id", "count", "qid"]
    assert table.schema.field("qid").type == pa.uint32()
    back = read_click_log(tmp_path / "train.parquet")
    assert back.query == log.query and back.product_id == log.product_id
    assert np.array_equal(back.count, log.count) and not back.problems
    # bad Parquet rows are reported with their row number
    pq.write_table(pa.table({"query": ["a", None, "c"], "product_id": [1, 2, None]}),
                   tmp_path / "bad.parquet")
    bad = read_click_log(tmp_path / "bad.parquet")
    assert bad.query == ["a"] and bad.count.tolist() == [1]
    assert {(p.line, p.field) for p in bad.problems} == {(2, "query"), (3, "product_id")}
    pq.write_table(pa.table({"query": ["a"]}), tmp_path / "nocol.parquet")
    with pytest.raises(InputError, match="nocol.parquet.*product_id"):
        read_click_log(tmp_path / "nocol.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="junk.parquet"):
        read_click_log(tmp_path / "junk.parquet")
    heldout = back.without_products({log.product_id[0]})
    assert log.product_id[0] not in heldout.product_id


def test_synonym_tables_for_query_understanding():
    assert set(SYNONYMS) == {"category", "colour", "gender", "usage"}
    assert "sneakers" in SYNONYMS["category"]["sports shoes"]
    assert "for men" in SYNONYMS["gender"]["men"]
    # no phrase maps to two categories (queries would be ambiguous by construction)
    owner: dict[str, str] = {}
    for category, phrases in CATEGORY_PHRASES.items():
        for phrase in phrases:
            key = normalize_query(phrase)
            assert owner.setdefault(key, category) == category, phrase
    assert len(CATEGORY_PHRASES) >= 60


def test_single_attribute_queries_one_per_value_with_every_holder_relevant(tmp_path):
    from vlsearch.catalog import Product
    from vlsearch.evaluation import read_beir_queries, read_qrels
    from vlsearch.queries.generator import export_beir, single_attribute_queries

    def product(pid, **attrs):
        return Product(id=pid, title=f"t{pid}", image_paths=[], brand=None,
                       category=attrs.pop("category", "Tshirts"), attributes=attrs)

    products = [product("1", season="Summer", master_category="Footwear", gender="Men"),
                product("2", season="summer", master_category="Apparel", gender="Unisex"),
                product("3", season="Winter", gender="Women", category="Shirts")]
    queries = single_attribute_queries(products)
    by_key = {}
    for q in queries:
        (key, value), = q.attributes.items()
        by_key.setdefault(key, []).append((value, q.text))
    assert by_key["season"] == [("summer", "summer"), ("winter", "winter")]  # one per value
    assert by_key["master_category"] == [("apparel", "apparel"), ("footwear", "footwear")]
    assert ("tshirts", "tshirts") in by_key["category"] and "colour" not in by_key
    export_beir(queries, products, tmp_path)
    read = {q.text: q.id for q in read_beir_queries(tmp_path / "queries.jsonl")}
    qrels = read_qrels(tmp_path / "qrels.tsv")
    assert set(qrels[read["summer"]]) == {"1", "2"}  # every product with the value
    assert set(qrels[read["men"]]) == {"1", "2"}  # unisex products satisfy "men"
    assert set(qrels[read["women"]]) == {"2", "3"}
