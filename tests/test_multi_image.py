"""Multi-image products: the per-image feature cache, the image tower over up to
``model.max_images`` images (image-position embedding, mask over absent images), and a
generated multi-image catalog end to end (prepare -> train -> index -> search)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlsearch.catalog import Product, load_catalog
from vlsearch.config import preset, update
from vlsearch.images import FeatureCache, extract_features
from vlsearch.model import Retriever
from vlsearch.sample import MULTI_IMAGE_FILE, write_sample_catalog

GRID, DIM = (2, 3), 16
P = GRID[0] * GRID[1]


def _build(max_images: int, architecture: str = "make") -> Retriever:
    config = preset("tiny")
    config.model.max_images = max_images
    config.model.architecture = architecture
    torch.manual_seed(0)
    return Retriever.build(config, patch_dim=DIM, grid=GRID)


def _products(n: int) -> list[Product]:
    titles = ["red cotton dress", "blue denim jeans", "black leather watch", "white running shoes"]
    return [Product(id=str(i), title=titles[i % len(titles)], image_paths=[], brand=None,
                    category="c", attributes={}) for i in range(n)]


def _images(n: int, images: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, images * P, DIM)).astype(np.float32)


# --- the image tower ----------------------------------------------------------------------


def test_image_position_embedding_exists_only_with_several_images():
    single = _build(1).model.state_dict()
    several = _build(3).model.state_dict()
    assert not any("image_position" in key for key in single)
    assert several["image.image_position"].shape == (3, 64)
    assert set(several) - set(single) == {"image.image_position"}  # everything else loads alike


@pytest.mark.parametrize("architecture", ["make", "dual-encoder", "mixed-encoder"])
def test_absent_images_change_nothing_and_the_mask_reaches_the_tower(architecture):
    retriever = _build(3, architecture)
    products = _products(4)
    patches = _images(4, 3)
    mask = np.array([[True, True, False], [True, False, False], [True, True, True], [False] * 3])
    vectors = retriever.encode_products(products, patches, mask)
    # whatever the absent slots hold, the vectors stay (the mask keeps them out)
    noisy = patches.copy().reshape(4, 3, P, DIM)
    noisy[~mask] = 7.0
    again = retriever.encode_products(products, noisy.reshape(4, 3 * P, DIM), mask)
    np.testing.assert_array_equal(again, vectors)
    # unmasking a slot changes the product: the mask is what keeps it out
    opened = retriever.encode_products(products, noisy.reshape(4, 3 * P, DIM), np.ones((4, 3), bool))
    assert not np.allclose(opened[[0, 1, 3]], vectors[[0, 1, 3]], atol=1e-4)
    np.testing.assert_array_equal(opened[2], vectors[2])


def test_the_image_position_embedding_reaches_the_tower():
    retriever = _build(3)
    products = _products(2)
    patches = _images(2, 3)
    mask = np.ones((2, 3), dtype=bool)
    swapped = patches.reshape(2, 3, P, DIM)[:, [1, 0, 2]].reshape(2, 3 * P, DIM)
    base = retriever.encode_products(products, patches, mask)
    assert not np.allclose(retriever.encode_products(products, swapped, mask), base, atol=1e-4)
    with torch.no_grad():  # without image positions the tower reads a set: order does not matter
        retriever.model.image.image_position.zero_()
    np.testing.assert_allclose(retriever.encode_products(products, swapped, mask),
                               retriever.encode_products(products, patches, mask), atol=1e-5)


def test_modal_adaptation_weighs_the_title_against_the_image_set():
    retriever = _build(3)
    mask = np.array([[True, True, True], [False, False, False]])
    _, weights = retriever.encode_products(_products(2), _images(2, 3), mask, return_weights=True)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
    assert (weights[0] > 0).all()
    np.testing.assert_array_equal(weights[1], [1.0, 0.0, 0.0])  # no image at all: title only


def test_uni_encoder_refuses_several_images():
    with pytest.raises(ValueError, match="max_images"):
        _build(2, "uni-encoder")


# --- the feature cache ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return write_sample_catalog(tmp_path_factory.mktemp("multi-catalog"), n_products=40, seed=3,
                                images_per_product=3)


def test_sample_catalog_first_images_and_styles_are_those_of_one_image(catalog, tmp_path):
    single = write_sample_catalog(tmp_path / "single", n_products=40, seed=3)
    assert (single / "styles.csv").read_bytes() == (catalog / "styles.csv").read_bytes()
    for path in (single / "images").iterdir():
        assert path.read_bytes() == (catalog / "images" / path.name).read_bytes()
    loaded = load_catalog(catalog / MULTI_IMAGE_FILE).products
    assert len(loaded) == 40 and all(len(p.image_paths) == 3 for p in loaded)
    assert loaded[0].image_paths[0].endswith(f"{loaded[0].id}.jpg")


def _cnn():
    from vlsearch.config import ImageConfig

    return ImageConfig(backbone="random-cnn", chunk_size=16, batch_size=8)


def test_cache_rows_per_image_first_images_as_today(catalog, tmp_path):
    products = load_catalog(catalog / MULTI_IMAGE_FILE).products
    ids = [p.id for p in products]
    products[1].image_paths = products[1].image_paths[:1]  # one product with a single image
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    products[2].image_paths[1] = str(bad)  # a corrupt second image
    single = extract_features(ids, [p.image_paths[:1] for p in products], tmp_path / "one",
                              _cnn(), progress=False)
    several = extract_features(ids, [p.image_paths for p in products], tmp_path / "all",
                               _cnn(), progress=False)
    assert single.meta.image_rows is None and "image_rows" not in json.loads(
        (tmp_path / "one" / "index.json").read_text())
    assert several.rows == 40 + 2 * 39 - 0 and several.n == 40
    # the first-image rows are today's rows, byte for byte
    np.testing.assert_array_equal(several.patches(), single.patches())
    assert several.image_rows(0) == [0, 40, 41] and several.image_rows(1) == [1]
    assert several.image_rows(2) == [2, 42, 43]
    # the corrupt extra image is reported like a first image and masked
    assert [p.file for p in several.problems] == [str(bad)]
    patches, mask = several.product_images([0, 1, 2], 3)
    assert patches.shape == (3, 3 * several.num_patches, several.dim)
    np.testing.assert_array_equal(mask, [[True, True, True], [True, False, False], [True, False, True]])
    np.testing.assert_array_equal(patches[1, several.num_patches:], 0)
    one, has = several.product_images([0, 1, 2], 1)
    np.testing.assert_array_equal(one, single.patches([0, 1, 2]))
    np.testing.assert_array_equal(has, single.has_image([0, 1, 2]))
    # reopened and resumed: the same cache, no work
    again = extract_features(ids, [p.image_paths for p in products], tmp_path / "all", _cnn(), progress=False)
    assert again.last_run.images == 0 and again.meta.image_rows == several.meta.image_rows
    assert FeatureCache.open(tmp_path / "all").complete


def test_max_images_1_gives_todays_vectors_on_a_multi_image_catalog(catalog, tmp_path):
    """max_images = 1 reads only the first image: a multi-image cache and a first-image-only
    cache give the same vectors, bit for bit, with a model whose weights are today's."""
    products = load_catalog(catalog / MULTI_IMAGE_FILE).products
    ids = [p.id for p in products]
    single = extract_features(ids, [p.image_paths[:1] for p in products], tmp_path / "one", _cnn(), progress=False)
    several = extract_features(ids, [p.image_paths for p in products], tmp_path / "all", _cnn(), progress=False)
    config = preset("tiny")
    config.images.backbone = "random-cnn"
    torch.manual_seed(0)
    retriever = Retriever.build(config, patch_dim=single.dim, grid=single.grid)
    rows = np.arange(len(products))
    expected = retriever.encode_products(products, single.patches(rows), single.has_image(rows))
    patches, has_image = several.product_images(rows, config.model.max_images)
    np.testing.assert_array_equal(retriever.encode_products(products, patches, has_image), expected)
    # the backbone path (no cached patches) reads the first image alone too
    direct = retriever.encode_products(products)
    np.testing.assert_allclose(direct, expected, atol=1e-5)


# --- end to end ---------------------------------------------------------------------------------


def test_multi_image_catalog_end_to_end(catalog, tmp_path):
    from vlsearch.index.builder import build_index
    from vlsearch.product_table import products_from_table
    from vlsearch.serving.engine import Engine
    from vlsearch.training import train
    from vlsearch.workdir import Workdir, prepare

    config = update(preset("tiny"), {
        "images": {"backbone": "random-cnn"}, "model": {"max_images": 3},
        "train": {"steps": 4, "batch_size": 8, "memory_bank_batches": 2, "eval_every": 0,
                  "eval_at_start": False, "checkpoint_every": 0, "num_threads": 1},
    })
    prepare(catalog / MULTI_IMAGE_FILE, tmp_path / "work", config, progress=False, log=lambda _: None)
    workdir = Workdir.open(tmp_path / "work")
    assert all(len(p.image_paths) == 3 for p in workdir.products())  # products.parquet keeps all
    assert workdir.features().rows == 3 * 40
    train(tmp_path / "work", config, tmp_path / "model", progress=False)
    model = Retriever.load(tmp_path / "model")
    assert model.config.model.max_images == 3 and model.model.image.image_position.shape[0] == 3
    config.index.kind = "flat"
    build_index(tmp_path / "work", tmp_path / "model", tmp_path / "index", config.index, progress=False)
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "index" / "current" / "products.parquet")
    indexed = products_from_table(table)
    assert all(len(p.image_paths) == 3 for p in indexed)
    assert table.column("image_path").to_pylist() == [p.image_paths[0] for p in indexed]
    engine = Engine.open(tmp_path / "index")
    hits = engine.search("red shirt", k=5).hits
    assert hits and all(hit.category == "Shirts" for hit in hits)
    assert engine.image_path(hits[0].product_id).name == f"{hits[0].product_id}.jpg"  # the first image
    # the vectors the index holds are the model's over all three images of each product
    features = workdir.features()
    rows = np.arange(features.n)
    patches, mask = features.product_images(rows, 3)
    assert mask.all()
    expected = model.encode_products(workdir.products(), patches, mask)
    vectors = np.load(tmp_path / "index" / "current" / "vectors.npy")
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    first_only = model.encode_products(workdir.products(), patches, mask & [True, False, False])
    assert not np.allclose(first_only, expected, atol=1e-4)
    assert set(engine.modal_weights([hits[0].product_id])[0]) == {"title", "image", "fused"}
    # a live update compares every image: another second image makes the product changed
    from vlsearch.index.update import update_index

    same, other = (Product(**vars(p)) for p in indexed[:2])
    other.image_paths = [other.image_paths[0], other.image_paths[2], other.image_paths[1]]
    report = update_index(tmp_path / "index", [same, other], [], model)
    assert (report.changed, report.unchanged) == (1, 1)
