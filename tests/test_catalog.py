"""Catalog loading, validation problems with file/line, image checks and brand mining."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlsearch.catalog import (
    GENDER_WORDS,
    BrandLexicon,
    ColumnMapping,
    load_catalog,
    mine_brands,
    verify_images,
)
from vlsearch.errors import InputError
from vlsearch.sample import BRANDS
from vlsearch.vocabulary import PRODUCT_ATTRIBUTE_KEYS

# ----------------------------------------------------------------------------- helpers


def make_kaggle(src: Path, dst: Path, n: int = 10, extra: list[bytes] | tuple = ()) -> Path:
    """A Kaggle-layout copy of the first ``n`` sample rows plus raw ``extra`` lines."""
    lines = (src / "styles.csv").read_bytes().splitlines(keepends=True)
    (dst / "images").mkdir(parents=True)
    for line in lines[1: n + 1]:
        pid = line.split(b",", 1)[0].decode()
        shutil.copy(src / "images" / f"{pid}.jpg", dst / "images" / f"{pid}.jpg")
    (dst / "styles.csv").write_bytes(b"".join(lines[: n + 1]) + b"".join(extra))
    return dst


def squeeze(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def problems_at(report, line):
    return [p for p in report.problems if p.line == line]


# ----------------------------------------------------------------------------- brands (real)

REAL_TITLES = {
    "Peter England Men Party Blue Jeans": "Peter England",
    "United Colors of Benetton Women Peach Top": "United Colors of Benetton",
    "U.S. Polo Assn. Denim Co. Men Blue & Red Check Shirt": "U.S. Polo Assn.",
    "U.S.Polo Assn Men Blue Polo T-shirt": "U.S. Polo Assn.",
    "Nike Fragrances Men Pure Deo": "Nike",
    "Nike Soleday Black Backpack": "Nike",
    "Olay Regenerist Cream Cleanser": "Olay",
    "Lakme Absolute Matte Pink Romance Lipstick 206": "Lakme",
    "Lotus Herbals Apricot Scrub": "Lotus Herbals",
    "Colorbar Purple Hue Eye Liner 002": "Colorbar",
    "FNF Printed Red Sari": "FNF",
    "Red Rose Black Camisole": "Red Rose",
    "Red Tape Men Black Shoes": "Red Tape",
    "Lotto Men's Leisure Brown Shoe": "Lotto",
    "UCB Women's Basic Neck Green T-shirt": "UCB",
    "Jealous 21 Women Purple Shirt": "Jealous 21",
    "W Women Printed Beige Kurta": "W",
    "Catwalk Women Leather Brown Flats": "Catwalk",
    "s.Oliver Women Stripes Beige Top": "s.Oliver",
    "Adidas Men Black Shorts": "ADIDAS",
    "ADIDAS Originals Unisex Dicolor Red Cap": "ADIDAS",
    "CASIO ENTICER Men Black Analogue Watch BS112": "CASIO",
    "Casio Enticer Men Black Dial Analogue Watch A479": "CASIO",
    "Lee Men Blue Chicago Fit Jeans": "Lee",
    "Lee Cooper Men Black Shoes": "Lee Cooper",
    "Scullers For Her Women Layered Brown Tunics": "Scullers",
    "Gini And Jony Girls Striped Green Top": "Gini and Jony",
    "Gini and JonyBoys Check Red Shirt": "Gini and Jony",
    "Jockey ELANCE Men Bikini White Brief 1005": "Jockey",
    "Turtle Check Men Navy Blue Shirt": "Turtle",
    "Fabindia Black Hand Printed Chanderi Dupatta": "Fabindia",
    "Timberland Unisex Infant Pink Casual Shoes": "Timberland",
    "Kids Ville Girls Pink Top": "Kids Ville",
    "Mr. Men Green T-shirt": "Mr. Men",
    "Do u speak green Men Cream T-shirt": "Do u speak green",
    "Madagascar3 Infant Boys White Snapsuit Romper": "Madagascar3",
    "Ray Ban Unisex Black Sunglass": "Ray-Ban",
    "Levi's Men White Brief": "Levis",
}


@pytest.fixture(scope="module")
def real(fashion_dir):
    return load_catalog(fashion_dir)


@pytest.mark.real
def test_real_catalog_loads_everything_with_problems_named(real, fashion_dir):
    report = real.report
    assert report.rows_read >= 44_000
    assert report.missing_images == 5
    assert report.loaded == report.rows_read - report.malformed - report.duplicate_ids
    assert report.malformed < 20  # rows without a title ("NA" or empty)
    for problem in report.problems:
        assert problem.file == str(fashion_dir / "styles.csv") and problem.line > 1
    ids = [p.id for p in real.products]
    assert len(ids) == len(set(ids))
    assert sum(bool(p.image_paths) for p in real.products) == report.loaded - 5


@pytest.mark.real
@pytest.mark.parametrize("title", sorted(REAL_TITLES))
def test_real_brands_hand_checked(real, title):
    assert real.brands.brand_of(title) == REAL_TITLES[title]


@pytest.mark.real
def test_real_brand_lexicon_shape(real):
    brands = real.brands
    top = [name for name, _ in brands.most_common(10)]
    assert top[:3] == ["Nike", "Puma", "ADIDAS"]
    assert {"United Colors of Benetton", "Catwalk", "Arrow", "Fastrack"} <= set(top)
    assert 300 <= len(brands) <= 500
    with_brand = sum(p.brand is not None for p in real.products)
    assert with_brand / len(real.products) > 0.995
    for name in brands.brands:  # gender words never end a brand (only inside "Mr. Men")
        assert name.split()[-1].lower() not in GENDER_WORDS or name == "Mr. Men"
    by_id = {p.id: p for p in real.products}
    assert by_id["39386"].brand == "Peter England"  # products carry the mined brand


@pytest.mark.real
def test_real_slice_with_limit(fashion_dir):
    loaded = load_catalog(fashion_dir, limit=2000)
    assert loaded.report.rows_read == 2000
    assert 1990 <= len(loaded.products) <= 2000
    root = os.path.realpath(fashion_dir)
    for product in loaded.products:
        assert product.category and product.category == product.attributes["article_type"]
        assert set(product.attributes) <= set(PRODUCT_ATTRIBUTE_KEYS)
        assert "NA" not in product.attributes.values()
        for path in product.image_paths:
            assert os.path.isabs(path) and path.startswith(root + os.sep) and os.path.exists(path)
    assert sum(p.brand is not None for p in loaded.products) > 0.95 * len(loaded.products)


# ----------------------------------------------------------------------------- brands (unit)


def test_mine_brands_rules():
    titles = [
        "Peter England Men Party Blue Jeans", "Peter England Men Blue Shirt",
        "peter england Women Black Top", "Lee Men Blue Jeans", "Lee Women Black Jeans",
        "Lee Men Grey Jeans", "Lee Cooper Men Black Shoes", "Lee Cooper Women Brown Shoes",
        "Casio Enticer Men Watch", "Casio Enticer Women Watch", "Casio Edifice Men Watch",
        "Casio Edifice Men Steel Watch", "Casio Men Black Watch", "Casio Women Watch",
        "Lotus Herbals Apricot Scrub", "Lotus Herbals Face Wash", "Lotus Herbals Sunscreen",
        "Black Dial Watch", "Black Leather Belt", "Navy Blue Men Shirt", "Navy Blue Men Tee",
        "Casio Youth Digital Watch",
    ]
    lexicon = mine_brands(titles, min_products=2, stop_phrases={"Navy Blue", "Black"})
    assert lexicon.brand_of("Peter England Kids Tee") == "Peter England"  # most common casing
    assert lexicon.brand_of("Lee Cooper Men Belt") == "Lee Cooper"
    assert lexicon.brand_of("Lee Men Belt") == "Lee"
    assert lexicon.brand_of("Casio Enticer Men Watch") == "Casio"  # a line folds into Casio
    assert lexicon.brand_of("Casio Youth Digital Watch") == "Casio"  # no gender word
    assert lexicon.brand_of("Lotus Herbals Night Cream") == "Lotus Herbals"
    assert lexicon.brand_of("Black Dial Watch") is None  # a colour is no brand
    assert lexicon.brand_of("Navy Blue Men Shirt") is None
    assert lexicon.counts["Peter England"] == 3


def test_lexicon_json_round_trip():
    titles = ["Nike Men Shoe", "NIKE Women Shoe", "Nike Men Tee", "Red Tape Men Shoe",
              "Red Tape Men Belt", "Olay Cream", "Olay Serum", "Olay Night Cream"]
    lexicon = mine_brands(titles)
    again = BrandLexicon.from_dict(json.loads(json.dumps(lexicon.to_dict())))
    assert again.brands == lexicon.brands == ["Nike", "Olay", "Red Tape"]
    assert again.counts == lexicon.counts
    for title in titles + ["nike x", "Redtape Men Shoe", "Unknown Men Shoe"]:
        assert again.brand_of(title) == lexicon.brand_of(title)
    with pytest.raises(InputError):
        BrandLexicon.from_dict({"brands": [{"name": "x"}]})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(
    ["Nike", "nike", "Men", "Women's", "Red", "Tape", "Blue", "Shoe", "for", "Her", "X.", "21"]),
    min_size=1, max_size=6), min_size=1, max_size=30))
def test_brand_is_always_a_leading_part_of_the_title(word_lists):
    titles = [" ".join(words) for words in word_lists]
    lexicon = mine_brands(titles)
    for title in titles:
        brand = lexicon.brand_of(title)
        if brand is not None:
            assert squeeze(title).startswith(squeeze(brand))
            assert brand.split()[-1].lower() not in GENDER_WORDS


# ----------------------------------------------------------------------------- sample layout


def test_sample_catalog_loads_clean(sample_catalog_dir):
    loaded = load_catalog(sample_catalog_dir)
    report = loaded.report
    assert report.rows_read == report.loaded == 300 and not report.problems
    assert all(len(p.image_paths) == 1 for p in loaded.products)
    assert {p.brand for p in loaded.products} <= set(BRANDS)
    assert all(p.brand for p in loaded.products)
    assert len({p.category for p in loaded.products}) >= 10
    product = loaded.products[0]
    assert set(product.attributes) == set(PRODUCT_ATTRIBUTE_KEYS)
    assert product.id == "10001" and isinstance(product.id, str)
    assert "300 products from 300 rows" in report.summary()
    json.dumps(report.to_dict())


def test_limit_reads_at_most_that_many_rows(sample_catalog_dir):
    loaded = load_catalog(sample_catalog_dir, limit=25)
    assert loaded.report.rows_read == 25 and len(loaded.products) == 25


# ----------------------------------------------------------------------------- bad input


def test_empty_catalog_raises_naming_the_file(tmp_path, sample_catalog_dir):
    kaggle = make_kaggle(sample_catalog_dir, tmp_path / "k", n=0)
    with pytest.raises(InputError, match=r"styles\.csv.*no product rows"):
        load_catalog(kaggle)
    (kaggle / "styles.csv").write_bytes(b"")
    with pytest.raises(InputError, match=r"styles\.csv.*empty"):
        load_catalog(kaggle)
    empty_jsonl = tmp_path / "empty.jsonl"
    empty_jsonl.write_text("\n")
    with pytest.raises(InputError, match=r"empty\.jsonl.*no product rows"):
        load_catalog(empty_jsonl)


def test_missing_required_columns_raise(tmp_path, sample_catalog_dir):
    generic = tmp_path / "items.csv"
    generic.write_text("sku,name,brand\n1,Shirt,Nike\n")
    with pytest.raises(InputError, match=r"items\.csv.*'id', 'title'"):
        load_catalog(generic)
    kaggle = make_kaggle(sample_catalog_dir, tmp_path / "k", n=3)
    text = (kaggle / "styles.csv").read_text().replace("productDisplayName", "name")
    (kaggle / "styles.csv").write_text(text)
    with pytest.raises(InputError, match=r"styles\.csv.*'productDisplayName'"):
        load_catalog(kaggle)
    with pytest.raises(InputError, match=r"brand='maker'"):  # an explicit mapping is checked
        load_catalog(generic, mapping=ColumnMapping(id="sku", title="name", brand="maker"))
    with pytest.raises(InputError, match=r"unknown catalog format"):
        load_catalog(tmp_path / "k" / "images" / os.listdir(tmp_path / "k" / "images")[0])
    with pytest.raises(InputError, match=r"not found"):
        load_catalog(tmp_path / "nope.csv")


def test_duplicate_ids_keep_the_first(tmp_path, sample_catalog_dir):
    kaggle = make_kaggle(sample_catalog_dir, tmp_path / "k", n=10, extra=[
        b"10001,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Nike Men Red Duplicate Tee\n",
    ])
    loaded = load_catalog(kaggle)
    report = loaded.report
    assert report.duplicate_ids == 1 and len(loaded.products) == 10
    (problem,) = problems_at(report, 12)
    assert problem.file.endswith("styles.csv") and problem.field == "id"
    assert "duplicate id '10001'" in problem.message and "line 2" in problem.message
    assert "Duplicate" not in loaded.products[0].title
    assert "styles.csv:12 [id]" in report.summary()


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path, sample_catalog_dir):
    kaggle = make_kaggle(sample_catalog_dir, tmp_path / "k", n=10, extra=[
        b"90001,Women,Apparel,Topwear,Tops,Red,Summer,2012,Casual,Caf\xe9 Women Red Top\n",
        b"9\xff002,Women,Apparel,Topwear,Tops,Red,Summer,2012,Casual,Nike Women Red Top\n",
        b"90003,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Puma Men Blue Tee\n",
    ])
    loaded = load_catalog(kaggle)
    report = loaded.report
    assert report.non_utf8 == 2
    assert "not valid UTF-8" in problems_at(report, 12)[0].message
    assert any(p.field == "id" and p.line == 13 for p in report.problems)  # bad id: skipped
    ids = {p.id for p in loaded.products}
    assert "90001" in ids and "90003" in ids and len(ids) == 12
    title = next(p.title for p in loaded.products if p.id == "90001")
    assert title == "Caf\ufffd Women Red Top"


def test_malformed_rows_are_skipped_and_named(tmp_path, sample_catalog_dir):
    kaggle = make_kaggle(sample_catalog_dir, tmp_path / "k", n=10, extra=[
        b"90001,Men,Apparel\n",  # 12: too few fields
        b",Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Nike Men Red Tee\n",  # 13: no id
        b"90003,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,\n",  # 14: no title
        b"90004,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,NA\n",  # 15: "NA" title
        b"90005,Men,Apparel,Topwear,Tshirts,Red,Summer,20x2,Casual,Puma Men Red Tee\n",  # 16
        b"90006,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Puma Men 3.5\"\", Red Tee\n",
        b'90007,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,"Puma ""Run"" Men Tee\n',
        b"90008,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Swallowed Men Tee\n",
    ])
    loaded = load_catalog(kaggle)
    report = loaded.report
    assert "expected 10 fields, got 3" in problems_at(report, 12)[0].message
    assert problems_at(report, 13)[0].field == "id"
    assert problems_at(report, 14)[0].field == "productDisplayName"
    assert problems_at(report, 15)[0].field == "productDisplayName"
    assert problems_at(report, 16)[0].field == "year"  # bad value: dropped, row kept
    repaired = problems_at(report, 17)[0]
    assert report.repaired == 1 and "joined" in repaired.message
    by_id = {p.id: p for p in loaded.products}
    assert by_id["90006"].title == 'Puma Men 3.5"", Red Tee'
    assert "year" not in by_id["90005"].attributes
    (swallowed,) = problems_at(report, 18)  # unbalanced quote swallows the next line: reported
    assert swallowed.field == "productDisplayName" and "lines 18-19" in swallowed.message
    assert report.malformed == 5
    assert len(loaded.products) == 12  # 10 good + the repaired row + the one with a bad year
    for problem in report.problems:
        assert problem.file == str(kaggle / "styles.csv")


def test_truncated_jpeg_is_dropped_by_verify(tmp_path, sample_catalog_dir):
    kaggle = make_kaggle(sample_catalog_dir, tmp_path / "k", n=10)
    broken = kaggle / "images" / "10003.jpg"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    (kaggle / "images" / "10004.jpg").write_bytes(b"not a jpeg at all")
    loaded = load_catalog(kaggle)
    assert all(p.image_paths for p in loaded.products)  # existence only at load time
    dropped = verify_images(loaded.products, loaded.report, workers=2)
    report = loaded.report
    assert dropped == 2 and report.corrupt_images == 2
    files = {p.file for p in report.problems}
    assert files == {os.path.realpath(broken), os.path.realpath(kaggle / "images" / "10004.jpg")}
    by_id = {p.id: p for p in loaded.products}
    assert by_id["10003"].image_paths == [] and by_id["10004"].image_paths == []
    assert sum(bool(p.image_paths) for p in loaded.products) == 8
    assert "10003" in " ".join(p.message for p in report.problems)


def test_image_paths_escaping_the_catalog_are_refused(tmp_path, sample_catalog_dir):
    root = tmp_path / "cat"
    (root / "img").mkdir(parents=True)
    image = sample_catalog_dir / "images" / "10001.jpg"
    shutil.copy(image, root / "img" / "a.jpg")
    shutil.copy(image, root / "img" / "b.jpg")
    shutil.copy(image, tmp_path / "outside.jpg")
    os.symlink(tmp_path / "outside.jpg", root / "img" / "link.jpg")
    os.symlink(root / "img" / "b.jpg", root / "img" / "inner_link.jpg")
    inside_abs = root / "img" / "b.jpg"
    (root / "items.csv").write_text(
        "id,title,image,brand,category,color\n"
        "1,Nike Men Shoe,img/a.jpg,Nike,Shoes,Red\n"  # 2
        "2,Nike Men Shoe,../outside.jpg,Nike,Shoes,Red\n"  # 3: escapes
        f"3,Nike Men Shoe,{tmp_path / 'outside.jpg'},Nike,Shoes,Red\n"  # 4: absolute outside
        "4,Nike Men Shoe,img/link.jpg,NIKE,Shoes,Red\n"  # 5: symlink to outside
        "5,Nike Men Shoe,../../../../etc/passwd,Nike,Shoes,Red\n"  # 6
        f"6,Nike Men Shoe,{inside_abs}|img/inner_link.jpg,nike,Shoes,Red\n"  # 7: fine
        "7,Nike Men Shoe,img/missing.jpg,Nike,Shoes,Red\n"  # 8: missing
        "8,Nike Men Shoe,img/../img/a.jpg,Nike,Shoes,\n"  # 9: fine after normalising
        "9,Nike Men Shoe,img,Nike,Shoes,\n"  # 10: a directory, not an image
    )
    loaded = load_catalog(root / "items.csv")
    report = loaded.report
    assert report.escaped_paths == 4 and report.missing_images == 2
    assert [p.line for p in report.problems if "outside the catalog" in p.message] == [3, 4, 5, 6]
    assert all(p.field == "image" for p in report.problems)
    assert len(loaded.products) == 9
    by_id = {p.id: p for p in loaded.products}
    for pid in "234579":
        assert by_id[pid].image_paths == []
    real_root = os.path.realpath(root)
    assert by_id["6"].image_paths == [os.path.join(real_root, "img", "b.jpg")] * 2
    assert by_id["8"].image_paths == [os.path.join(real_root, "img", "a.jpg")]
    assert {p.brand for p in loaded.products} == {"Nike"}  # brand column, canonical casing
    assert by_id["1"].attributes == {"colour": "Red"} and by_id["8"].attributes == {}
    assert loaded.brands.brands == ["Nike"]


def test_jsonl_with_mapping(tmp_path, sample_catalog_dir):
    (tmp_path / "pics").mkdir()
    shutil.copy(sample_catalog_dir / "images" / "10001.jpg", tmp_path / "pics" / "1.jpg")
    rows = [
        {"sku": 1, "name": "Nike Men Red Shoe", "pics": ["pics/1.jpg"], "maker": "Nike",
         "type": "Shoes", "color": "Red", "sex": "Men"},
        "not json {",
        [1, 2],
        {"sku": 4, "name": ["a", "list"], "maker": "Nike"},
        {"sku": 5, "name": "Puma Women Blue Top", "pics": "pics/1.jpg", "maker": "Puma",
         "type": "Tops", "color": {"bad": 1}},
        {"name": "No Id Men Tee"},
        {"sku": 7, "name": "Puma Men Tee", "pics": 17, "maker": "PUMA"},
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    mapping = ColumnMapping(id="sku", title="name", image="pics", brand="maker", category="type",
                            attributes={"colour": "color", "gender": "sex"})
    loaded = load_catalog(path, mapping=mapping)
    report = loaded.report
    assert report.rows_read == 7 and [p.id for p in loaded.products] == ["1", "5", "7"]
    assert "not valid JSON" in problems_at(report, 2)[0].message
    assert "expected a JSON object" in problems_at(report, 3)[0].message
    assert problems_at(report, 4)[0].field == "name"
    assert problems_at(report, 5)[0].field == "color"
    assert problems_at(report, 6)[0].field == "sku"
    assert problems_at(report, 7)[0].field == "pics"
    assert all(p.file == str(path) for p in report.problems)
    first = loaded.products[0]
    assert first.attributes == {"colour": "Red", "gender": "Men"} and first.category == "Shoes"
    assert first.image_paths == [os.path.realpath(tmp_path / "pics" / "1.jpg")]
    assert loaded.products[2].brand == "Puma" and loaded.products[2].image_paths == []
    with pytest.raises(InputError, match=r"items\.jsonl.*'id', 'title'"):
        load_catalog(path)  # default mapping: no "id" key anywhere


def test_parquet_with_mapping(tmp_path, sample_catalog_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copy(sample_catalog_dir / "images" / "10001.jpg", tmp_path / "1.jpg")
    table = pa.table({
        "product_id": pa.array([1, 2, 3, 1], pa.int64()),
        "product_title": ["Lee Men Blue Jeans", None, "Lee Cooper Men Shoes", "Again"],
        "images": [["1.jpg"], [], ["../x.jpg"], ["1.jpg"]],
        "articleType": ["Jeans", "Jeans", "Shoes", "Jeans"],
        "baseColour": ["Blue", "Blue", "NA", "Blue"],
    })
    path = tmp_path / "items.parquet"
    pq.write_table(table, path)
    mapping = ColumnMapping(id="product_id", title="product_title", image="images", brand=None,
                            category="articleType", attributes=None)
    loaded = load_catalog(path, mapping=mapping)
    report = loaded.report
    assert [p.id for p in loaded.products] == ["1", "3"]
    assert problems_at(report, 2)[0].field == "product_title"
    assert problems_at(report, 3)[0].field == "images" and report.escaped_paths == 1
    assert problems_at(report, 4)[0].field == "product_id" and report.duplicate_ids == 1
    first, second = loaded.products
    assert first.image_paths and first.attributes == {"colour": "Blue", "article_type": "Jeans"}
    assert second.attributes == {"article_type": "Shoes"} and second.category == "Shoes"
    assert first.brand is None or first.brand == "Lee"  # mined: one title per brand is too few
    assert "items.parquet" in report.summary()
