"""Precomputed constraint masks equal tantivy's filter masks: for every (field, value) of the
filter fields and for random combinations (OR within a field, AND across), on a slice of the
real catalog."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlsearch.index.lexical import FILTER_FIELDS, LexicalIndex, build_lexical, product_value
from vlsearch.index.masks import ConstraintMasks


@pytest.fixture(scope="module")
def real(tmp_path_factory, fashion_dir):
    from vlsearch.catalog import load_catalog

    products = load_catalog(fashion_dir, limit=3000).products
    path = tmp_path_factory.mktemp("masks") / "lexical"
    build_lexical(products, path)
    return products, LexicalIndex.open(path), ConstraintMasks.from_products(products)


def test_every_field_value_equals_tantivy(real):
    products, lexical, masks = real
    checked = 0
    for field in FILTER_FIELDS:
        values = masks.values(field)
        assert values == sorted({v for p in products if (v := product_value(p, field))})
        for value in values:
            expected = lexical.filter_mask({field: [value]})
            got = masks.mask({field: [value]})
            assert got.dtype == bool and (got == expected).all(), (field, value)
            checked += 1
    assert checked > 100
    assert not masks.mask({"brand": ["no such brand"]}).any()
    assert masks.mask({}).all() and len(masks.mask({})) == len(products)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_combinations_equal_tantivy(real, data):
    _, lexical, masks = real
    fields = data.draw(st.lists(st.sampled_from(FILTER_FIELDS), min_size=1, max_size=3, unique=True))
    filters = {}
    for field in fields:
        choices = masks.values(field) + ["no such value"]
        filters[field] = data.draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3), label=field)
    assert (masks.mask(filters) == lexical.filter_mask(filters)).all(), filters


def test_from_columns_matches_products(real):
    import json

    products, _, masks = real
    again = ConstraintMasks.from_columns([p.brand for p in products], [p.category for p in products],
                                         [json.dumps(p.attributes) for p in products])
    for field in FILTER_FIELDS:
        assert masks.values(field) == again.values(field)
        for value in masks.values(field):
            assert (masks.bitmaps[field][value] == again.bitmaps[field][value]).all()
