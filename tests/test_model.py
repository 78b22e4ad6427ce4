"""Towers, Modal Adaptation, Keyword Enhancement, architectures and the Retriever's save/load."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch

from vlsearch.catalog import Product
from vlsearch.config import Config, preset
from vlsearch.errors import WorkdirError
from vlsearch.model import (
    ARCHITECTURES,
    BASELINES,
    KeywordTable,
    Retriever,
    apply_baseline,
    mine_keywords,
    zero_shot_minilm,
)

GRID, DIM = (2, 3), 16


def _products(n: int = 6) -> list[Product]:
    titles = ["red cotton dress", "blue denim jeans", "black leather watch", "white running shoes",
              "green silk saree", "grey wool cap"]
    return [Product(id=str(i), title=titles[i % len(titles)], image_paths=[], brand=None,
                    category="c", attributes={}) for i in range(n)]


def _patches(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    patches = np.random.default_rng(seed).standard_normal((n, GRID[0] * GRID[1], DIM)).astype(np.float32)
    has_image = np.ones(n, dtype=bool)
    has_image[1] = has_image[4] = False
    patches[~has_image] = 0
    return patches, has_image


def _build(config: Config, **kwargs) -> Retriever:
    torch.manual_seed(0)
    return Retriever.build(config, patch_dim=DIM, grid=GRID, **kwargs)


def test_modal_adaptation_weights_sum_to_one_and_no_image_is_title_only():
    retriever = _build(preset("tiny"))
    assert retriever.modalities == ("title", "image", "fused")
    patches, has_image = _patches()
    vectors, weights = retriever.encode_products(_products(), patches, has_image, return_weights=True)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(weights[~has_image], [[1.0, 0.0, 0.0]] * 2)
    assert (weights[has_image][:, 1:] > 0).all()  # an image product uses every modality
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the no-image product's vector is its title vector alone: independent of the (zero) patches
    noisy = patches.copy()
    noisy[~has_image] = 5.0
    again = retriever.encode_products(_products(), noisy, has_image)
    np.testing.assert_allclose(again[~has_image], vectors[~has_image], atol=1e-6)


@pytest.mark.parametrize("variant", [*ARCHITECTURES, "title-only", "no-ma"])
def test_each_architecture_builds_and_encodes(variant):
    config = preset("tiny")
    if variant in ARCHITECTURES:
        config.model.architecture = variant
    else:
        config = apply_baseline(config, variant)
    retriever = _build(config)
    patches, has_image = _patches()
    queries = retriever.encode_queries(["red dress", "blue jeans for men", ""])
    vectors, weights = retriever.encode_products(_products(), patches, has_image, return_weights=True)
    assert queries.shape == (3, config.model.embed_dim) and queries.dtype == np.float32
    assert vectors.shape == (6, config.model.embed_dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert weights.shape == (6, len(retriever.modalities))
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
    assert retriever.model.training  # encode_* restores the mode it found


def test_uni_and_dual_share_one_text_tower_make_has_a_separate_query_tower():
    for arch, separate in (("make", True), ("uni-encoder", False), ("dual-encoder", False)):
        config = preset("tiny")
        config.model.architecture = arch
        model = _build(config).model
        assert (model.query is not None) is separate


def test_make_query_head_starts_equal_to_the_title_head_unless_switched_off():
    config = preset("tiny")
    model = _build(config).model
    for name, tensor in model.proj["text"].state_dict().items():
        assert torch.equal(tensor, model.proj["query"].state_dict()[name])
    config.model.tied_projection_init = False
    model = _build(config).model
    assert not torch.equal(model.proj["text"].weight, model.proj["query"].weight)


def test_baselines_apply_and_zero_shot_setting():
    base = preset("tiny")
    for name in BASELINES:
        config = apply_baseline(base, name)
        assert config.model.architecture in ARCHITECTURES
    assert base.model.architecture == "make" and base.train.memory_bank  # not mutated
    full, make = apply_baseline(base, "full"), apply_baseline(base, "make")
    assert full.train.mpm_kind == "contrastive" and full.train.memory_bank and full.train.cross_device
    assert make.train.mpm_kind == "regression" and not make.train.memory_bank and not make.train.cross_device
    assert not apply_baseline(base, "title-only").model.use_images
    assert not apply_baseline(base, "no-ma").model.modal_adaptation
    assert not apply_baseline(base, "no-ke").model.keyword_enhancement
    zero = zero_shot_minilm(base)
    assert (zero.model.init, zero.model.use_images, zero.model.pooling, zero.train.steps) == ("minilm", False, "mean", 0)
    assert not zero.model.keyword_enhancement and not zero.model.project


def test_save_load_round_trip_is_exact_and_never_unpickles(tmp_path, monkeypatch):
    keywords = KeywordTable({"dress": [("cotton", 1.0)]})
    retriever = _build(preset("tiny"), categories=["a", "b"], keywords=keywords)
    patches, has_image = _patches()
    queries = ["dress", "blue jeans for men and boys"]
    before_q = retriever.encode_queries(queries)
    before_p, before_w = retriever.encode_products(_products(), patches, has_image, return_weights=True)
    retriever.save(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert {"model.safetensors", "config.json", "keywords.json", "tokenizer.json"} <= set(files)
    assert not [f for f in files if f.endswith((".pt", ".pth", ".pkl", ".bin"))]
    assert not [p for p in tmp_path.iterdir() if p.name != "model"]  # temp dir renamed away

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a model")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = Retriever.load(tmp_path / "model")
    monkeypatch.undo()
    assert loaded.categories == ["a", "b"] and loaded.keywords.terms == keywords.terms
    np.testing.assert_array_equal(loaded.encode_queries(queries), before_q)
    after_p, after_w = loaded.encode_products(_products(), patches, has_image, return_weights=True)
    np.testing.assert_array_equal(after_p, before_p)
    np.testing.assert_array_equal(after_w, before_w)
    # saving into an existing directory (a training directory) keeps other files
    (tmp_path / "model" / "metrics.jsonl").write_text("{}\n")
    loaded.save(tmp_path / "model")
    assert (tmp_path / "model" / "metrics.jsonl").exists()
    np.testing.assert_array_equal(Retriever.load(tmp_path / "model").encode_queries(queries), before_q)


def test_load_refuses_incomplete_or_foreign_directories(tmp_path):
    with pytest.raises(WorkdirError, match="not found"):
        Retriever.load(tmp_path / "nothing")
    retriever = _build(preset("tiny"))
    retriever.save(tmp_path / "m")
    (tmp_path / "m" / "keywords.json").unlink()
    with pytest.raises(WorkdirError, match="keywords.json"):
        Retriever.load(tmp_path / "m")
    retriever.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["format_version"] = 999
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WorkdirError, match="format version 999"):
        Retriever.load(tmp_path / "m")
    retriever.save(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WorkdirError, match="model.safetensors"):
        Retriever.load(tmp_path / "m")


CLICKS = [
    ("red dress", "Red Cotton Dress", 3),
    ("red dress", "Red Silk Dress", 1),
    ("red shirt", "Red Silk Shirt", 3),
    ("dress", "Blue Cotton Dress", 1),
]


def test_keyword_mining_matches_hand_computed_pmi():
    # N = 8 click events. n(q): red 7, dress 5, shirt 3. n(t): red 7, cotton 4, dress 5, silk 4,
    # shirt 3, blue 1. n(q,t): red-{cotton 3, dress 4, silk 4, shirt 3},
    # dress-{red 4, cotton 4, silk 1, blue 1}, shirt-{red 3, silk 3}. PMI = log(n(q,t) N / n(q) n(t)).
    table = mine_keywords(CLICKS, min_term_count=2, min_pair_count=1, per_term=8)
    expected = {
        # silk/shirt tie at log(8/7): silk has more events (4 > 3)
        "red": [("silk", math.log(8 / 7)), ("shirt", math.log(8 / 7)), ("dress", math.log(32 / 35)),
                ("cotton", math.log(6 / 7))],
        # cotton/blue tie at log(8/5): cotton has more events
        "dress": [("cotton", math.log(8 / 5)), ("blue", math.log(8 / 5)), ("red", math.log(32 / 35)),
                  ("silk", math.log(2 / 5))],
        "shirt": [("silk", math.log(2)), ("red", math.log(8 / 7))],
    }
    assert set(table.terms) == set(expected)
    for term, rows in expected.items():
        assert [kw for kw, _ in table.terms[term]] == [kw for kw, _ in rows]
        np.testing.assert_allclose([p for _, p in table.terms[term]], [p for _, p in rows], rtol=1e-9)
    # thresholds: pairs seen once and terms seen fewer than 4 times drop out; per_term cuts
    strict = mine_keywords(CLICKS, min_term_count=4, min_pair_count=2, per_term=2)
    assert {t: [kw for kw, _ in rows] for t, rows in strict.terms.items()} == {
        "red": ["silk", "shirt"], "dress": ["cotton", "red"]}


def test_keyword_enhancement_applies_to_short_queries_only(tmp_path):
    table = mine_keywords(CLICKS, min_term_count=2, min_pair_count=1, per_term=8)
    assert table.keywords("red", per_query=2, max_query_terms=2) == ["silk", "shirt"]
    # merged by PMI across terms; terms of the query itself are never added
    assert table.keywords("dress red", per_query=3, max_query_terms=2) == ["cotton", "blue", "silk"]
    assert table.keywords("red silk dress", per_query=3, max_query_terms=2) == []
    assert table.keywords("unknown", per_query=3, max_query_terms=2) == []
    table.save(tmp_path / "keywords.json")
    assert KeywordTable.load(tmp_path / "keywords.json").terms == table.terms

    config = preset("tiny")
    config.model.keywords_per_query, config.model.keyword_max_query_terms = 2, 2
    retriever = _build(config, keywords=table)
    encoded = retriever.tokenize_queries(["red", "red silk dress"])
    assert encoded.token_type_ids[0].max() == 1  # keywords as the second segment
    assert encoded.token_type_ids[1].max() == 0
    second = encoded.input_ids[0][encoded.token_type_ids[0] == 1]
    assert retriever.tokenizer.decode(second) == "shirt silk"  # segment terms sorted like queries
    config.model.keyword_enhancement = False
    off = Retriever(config, retriever.model, retriever.tokenizer, table, [], retriever.image)
    assert off.tokenize_queries(["red"]).token_type_ids.max() == 0


@pytest.mark.parametrize("colour_levels", [0, 3])
def test_encode_products_runs_the_backbone_when_no_patches_are_given(tmp_path, colour_levels):
    from PIL import Image

    from vlsearch.images import extract_product_features

    config = preset("tiny")
    config.images.backbone = "random-cnn"
    config.images.colour_levels = colour_levels
    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (60, 80), colour).save(paths[-1])
    products = _products(3)
    products[0].image_paths, products[2].image_paths = [str(paths[0])], [str(paths[1])]
    cache = extract_product_features(products, tmp_path / "features", config.images, progress=False)
    torch.manual_seed(0)
    retriever = Retriever.build(config)
    assert retriever.image["grid"] == list(cache.grid) and retriever.image["dim"] == cache.dim
    live = retriever.encode_products(products)
    cached = retriever.encode_products(products, cache.patches().astype(np.float32), cache.has_image())
    np.testing.assert_allclose(live, cached, atol=1e-6)
    if colour_levels:  # the histograms are part of the patches, live and cached alike
        assert retriever.image["colour_levels"] == colour_levels
        retriever.save(tmp_path / "model")
        loaded = Retriever.load(tmp_path / "model")
        config.images.colour_levels = 0  # a later images setting does not change what the model reads
        np.testing.assert_allclose(loaded.encode_products(products), live, atol=1e-6)
        wrong = Retriever.build(config, patch_dim=cache.dim, grid=cache.grid)
        with pytest.raises(WorkdirError, match="trained on .*-d ones"):
            wrong.encode_products(products)
