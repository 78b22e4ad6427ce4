"""Test-only stand-ins for the index/serving tests: a synthetic catalog and a hashing encoder."""

from __future__ import annotations

import itertools
import random

from vlsearch.catalog import Product
from vlsearch.model.hashing import HashingEncoder

BRANDS = ["Nike", "Adidas", "Red Tape", "United Colors of Benetton", "Peter England", "Puma"]
CATEGORIES = {  # article type -> (sub category, master category)
    "Casual Shoes": ("Shoes", "Footwear"),
    "Sports Shoes": ("Shoes", "Footwear"),
    "Formal Shoes": ("Shoes", "Footwear"),
    "Tshirts": ("Topwear", "Apparel"),
    "Shirts": ("Topwear", "Apparel"),
    "Jeans": ("Bottomwear", "Apparel"),
    "Watches": ("Watches", "Accessories"),
}
COLOURS = ["Red", "Navy Blue", "Black", "White", "Blue"]
GENDERS = ["Men", "Women", "Unisex"]
USAGES = ["Casual", "Sports", "Formal"]


def synthetic_products(n: int = 400, seed: int = 0) -> list[Product]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        brand, cat = rng.choice(BRANDS), rng.choice(sorted(CATEGORIES))
        colour, gender, usage = rng.choice(COLOURS), rng.choice(GENDERS), rng.choice(USAGES)
        sub, master = CATEGORIES[cat]
        out.append(Product(
            id=str(1000 + i), title=f"{brand} {gender} {colour} {cat}", image_paths=[],
            brand=brand, category=cat,
            attributes={"gender": gender, "colour": colour, "usage": usage, "season": "Summer",
                        "master_category": master, "sub_category": sub, "article_type": cat,
                        "year": "2012"},
        ))
    return out


def synthetic_queries(products: list[Product], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    queries = []
    for p in products:
        a = p.attributes
        queries.append(rng.choice([f"{a['colour']} {p.category}".lower(), f"{p.brand} {p.category}",
                                   f"{a['gender']} {p.category}", p.category.lower()]))
    return queries


def HashEncoder(dim: int = 32) -> HashingEncoder:
    """The model-free hashing encoder at the small size the index/serving tests use."""
    return HashingEncoder(dim)


def build_synthetic_index(out_dir, products, encoder, config, queries=None, progress=False):
    from vlsearch.index.builder import build_index_from_parts
    from vlsearch.text import query_id

    queries = synthetic_queries(products) if queries is None else queries
    return build_index_from_parts(
        out_dir, products, lambda a, b: encoder.encode_products(products[a:b]),
        encoder.encode_queries, queries, [query_id(q) for q in queries], config=config,
        progress=progress,
    )


def powerset(values, max_size=2):
    return [c for r in range(1, max_size + 1) for c in itertools.combinations(values, r)]


_SAMPLE_INDEX: dict[str, object] = {}


def sample_index(tmp_path_factory, sample_catalog_dir):
    """A real tiny (untrained) Retriever over the prepared sample catalog, indexed with a Flat
    index; built once per test session and shared by the serving, API and web-page tests.
    Returns (index_dir, workdir, model_dir)."""
    if "built" not in _SAMPLE_INDEX:
        from vlsearch.config import preset
        from vlsearch.index.builder import build_index
        from vlsearch.model import Retriever
        from vlsearch.workdir import Workdir, prepare

        root = tmp_path_factory.mktemp("sample-index")
        config = preset("tiny")
        config.images.backbone = "random-cnn"  # test-only backbone: no pretrained weights needed
        prepare(sample_catalog_dir, root / "work", config, progress=False, log=lambda _: None)
        workdir = Workdir.open(root / "work")
        Retriever.build(config, workdir).save(root / "model")
        config.index.kind = "flat"
        build_index(root / "work", root / "model", root / "index", config.index, progress=False)
        _SAMPLE_INDEX["built"] = (root / "index", root / "work", root / "model")
    return _SAMPLE_INDEX["built"]


SEARCH_LOAD_QUERIES = ["nike shoes", "red tape casual shoes", "blue jeans for women", "watch", "zz"]


def search_while(engine, action, check, k: int = 20, settle_s: float = 0.1) -> list[Exception]:
    """Run ``action()`` while another thread searches ``engine`` in a loop, each result passed
    to ``check(result)``; returns what the searches raised (the failures under test)."""
    import threading
    import time

    errors: list[Exception] = []
    done = threading.Event()

    def searcher():
        i = 0
        while not done.is_set():
            try:
                check(engine.search(SEARCH_LOAD_QUERIES[i % len(SEARCH_LOAD_QUERIES)], k=k))
            except Exception as exc:  # noqa: BLE001 - any failure is the bug under test
                errors.append(exc)
            i += 1

    thread = threading.Thread(target=searcher)
    thread.start()
    try:
        time.sleep(settle_s)
        action()
        time.sleep(settle_s)
    finally:
        done.set()
        thread.join(60)
    return errors
