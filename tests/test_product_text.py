"""The product-text template: title + attribute text reaches the product tower in training and
in encoding; a bad template is refused with the part named."""

from __future__ import annotations

import numpy as np
import pytest

from vlsearch.catalog import Product
from vlsearch.config import ConfigError, preset
from vlsearch.model import Retriever
from vlsearch.model.product_text import ATTRIBUTE_TEXT, product_texts, template_fields
from vlsearch.training import ClickStream


def _product(**attributes):
    return Product(id="1", title="Turtle Check Men Shirt", image_paths=[], brand="Turtle",
                   category="Shirts", attributes=attributes)


def test_template_fills_parts_in_order_and_leaves_out_missing_fields():
    p = _product(colour="Grey", gender="Men", usage="Casual", sub_category="Topwear",
                 master_category="Apparel")
    text, = product_texts([p], ATTRIBUTE_TEXT, ", ", sort_title=False)
    # no season: that part is left out, the others keep the template's order
    assert text == "Turtle Check Men Shirt, colour Grey, gender Men, usage Casual, Topwear, Apparel"
    sorted_text, = product_texts([p], ATTRIBUTE_TEXT, ", ", sort_title=True)
    assert sorted_text == "check men shirt turtle, colour Grey, gender Men, usage Casual, Topwear, Apparel"
    assert product_texts([p], (), ", ", sort_title=False) == ["Turtle Check Men Shirt"]
    assert product_texts([p], ("by {brand}", "{category}"), " | ", False) == \
        ["Turtle Check Men Shirt | by Turtle | Shirts"]


@pytest.mark.parametrize("part", ["colour {color}", "no field", "{colour"])
def test_bad_template_part_is_refused_with_the_part_named(part):
    with pytest.raises(ConfigError, match="model.product_text"):
        template_fields([part])


def _config(template):
    config = preset("tiny")
    config.images.backbone = "random-cnn"
    config.model.use_images = False
    config.model.keyword_enhancement = False
    config.model.product_text = tuple(template)
    config.model.max_title_len = 64
    config.train.batch_size = 16
    return config


@pytest.fixture(scope="module")
def workdir(sample_catalog_dir, tmp_path_factory):
    from vlsearch.workdir import Workdir, prepare

    out = tmp_path_factory.mktemp("product-text-workdir")
    config = _config(())
    config.images.backbone = "random-cnn"
    prepare(sample_catalog_dir, out, config, progress=False)
    return Workdir.open(out)


def test_attribute_text_reaches_the_product_tower_in_the_training_batch(workdir):
    config = _config(ATTRIBUTE_TEXT)
    retriever = Retriever.build(config, workdir)
    batch = ClickStream(workdir, retriever, config, rank=0).batch(0)
    products = workdir.products()
    checked = 0
    for row, ids, mask in zip(batch.product_ids.tolist(), batch.t_ids.numpy(), batch.t_mask.numpy()):
        product = products[row]
        decoded = retriever.tokenizer.decode(ids[mask.astype(bool)])
        colour = product.attributes.get("colour")
        if colour:
            assert f"colour {colour.lower()}" in decoded, (decoded, product)
            checked += 1
        if product.attributes.get("gender"):
            assert f"gender {product.attributes['gender'].lower()}" in decoded
    assert checked >= len(batch.product_ids) // 2
    # the same tokens the encoder reads at inference time (index export, evaluation)
    rows = batch.product_ids.tolist()
    ids, mask, _ = retriever.tokenize_products([products[r] for r in rows])
    width = batch.t_ids.shape[1]
    assert np.array_equal(ids[:, :width], batch.t_ids.numpy())
    assert np.array_equal(mask[:, :width], batch.t_mask.numpy())


def test_title_only_by_default_and_attributes_change_the_product_vector(workdir):
    plain = Retriever.build(_config(()), workdir)
    products = workdir.products()[:8]
    ids, _, _ = plain.tokenize_products(products)
    titles, _, _ = plain.tokenize_titles([p.title for p in products])
    assert np.array_equal(ids, titles)  # default: exactly the title
    import torch

    torch.manual_seed(0)
    with_attrs = Retriever.build(_config(ATTRIBUTE_TEXT), workdir)
    with_attrs.model.load_state_dict(plain.model.state_dict())
    a = plain.encode_products(products)
    b = with_attrs.encode_products(products)
    assert not np.allclose(a, b, atol=1e-4)
