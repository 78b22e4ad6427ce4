"""The generated sample catalog: layout, determinism, speed, colour visible in the images."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vlsearch.catalog import GENDER_WORDS, load_catalog
from vlsearch.sample import BRANDS, COLOURS, STYLES_COLUMNS, write_sample_catalog


def read_rows(directory: Path) -> list[dict[str, str]]:
    with open(directory / "styles.csv", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_layout_and_columns(sample_catalog_dir):
    with open(sample_catalog_dir / "styles.csv", encoding="utf-8") as handle:
        assert handle.readline().strip().split(",") == list(STYLES_COLUMNS)
    rows = read_rows(sample_catalog_dir)
    assert len(rows) == 300 and len({r["id"] for r in rows}) == 300
    for row in rows:
        assert all(row[c] for c in STYLES_COLUMNS)  # no empty cells, no bad rows
        image = Image.open(sample_catalog_dir / "images" / f"{row['id']}.jpg")
        assert image.size == (60, 80) and image.mode == "RGB"
    assert {r["masterCategory"] for r in rows} == {"Apparel", "Footwear", "Accessories"}
    assert len({r["articleType"] for r in rows}) >= 10
    assert len({r["baseColour"] for r in rows}) >= 12
    assert {r["gender"] for r in rows} >= {"Men", "Women", "Unisex"}
    assert len({r["usage"] for r in rows}) >= 4


def test_titles_brands_colour_and_gender_words(sample_catalog_dir):
    rows = read_rows(sample_catalog_dir)
    assert {b for b in BRANDS if len(b.split()) > 1} >= {
        "Peter England", "United Colors of Benetton", "U.S. Polo Assn."}
    assert {next(b for b in BRANDS if r["productDisplayName"].startswith(b + " "))
            for r in rows} == set(BRANDS)
    no_colour = [r for r in rows if r["baseColour"] not in r["productDisplayName"]]
    assert 0.05 <= len(no_colour) / len(rows) <= 0.16
    no_gender = [r for r in rows if not GENDER_WORDS & set(r["productDisplayName"].lower().split())]
    assert 3 <= len(no_gender) <= 30


def test_colour_is_visible_in_the_image(sample_catalog_dir):
    for row in read_rows(sample_catalog_dir)[:60]:
        if row["baseColour"] == "White":  # near the light background; checked by the shape test
            continue
        fill = np.array(COLOURS[row["baseColour"]])
        pixels = np.asarray(Image.open(sample_catalog_dir / "images" / f"{row['id']}.jpg"), int)
        near = int((np.abs(pixels - fill).max(axis=2) <= 40).sum())
        assert near >= 100, (row["id"], row["baseColour"], near)


def test_deterministic_for_a_seed_and_fast(tmp_path):
    start = time.perf_counter()
    write_sample_catalog(tmp_path / "a", n_products=300, seed=3)
    assert time.perf_counter() - start < 2.0
    write_sample_catalog(tmp_path / "b", n_products=300, seed=3)
    write_sample_catalog(tmp_path / "c", n_products=300, seed=4)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a["styles.csv"] != c["styles.csv"]


def test_loads_with_mined_brands(sample_catalog_dir):
    loaded = load_catalog(sample_catalog_dir)
    assert not loaded.report.problems
    rows = {r["id"]: r for r in read_rows(sample_catalog_dir)}
    for product in loaded.products:
        assert product.brand and rows[product.id]["productDisplayName"].startswith(product.brand)
    assert sorted(loaded.brands.brands) == sorted(BRANDS)
