"""The one ``Product`` ↔ pyarrow table round-trip: ``products.parquet`` of a work directory
(written by ``prepare``) and of an index version (written by the index builder and live
updates) have the same columns, row i = product i.

Columns: ``id, title, brand, category, image_path`` (the first image, or null),
``attributes`` (a JSON object), ``image_paths`` (every image, a list) only when some
product has more than one (so single-image tables keep their bytes), then the optional
``deleted`` (live-update tombstones),
``split`` ("train" | "heldout") and ``sampling_prob`` (Q(p), the product's share of the
training clicks) when given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from vlsearch.catalog import Product


def products_to_table(
    products: Sequence[Product],
    *,
    deleted: Sequence[bool] | None = None,
    splits: Sequence[str | None] | None = None,
    sampling: Mapping[str, float] | None = None,
) -> pa.Table:
    """``products`` as a table; ``sampling`` maps product id to Q(p) (absent ids get 0.0)."""
    columns: dict[str, list[Any]] = {
        "id": [str(p.id) for p in products],
        "title": [p.title for p in products],
        "brand": [p.brand for p in products],
        "category": [p.category for p in products],
        "image_path": [p.image_paths[0] if p.image_paths else None for p in products],
        "attributes": [json.dumps(p.attributes or {}, ensure_ascii=False) for p in products],
    }
    if any(len(p.image_paths) > 1 for p in products):
        columns["image_paths"] = [list(p.image_paths) for p in products]
    if deleted is not None:
        columns["deleted"] = [bool(d) for d in deleted]
    if splits is not None:
        columns["split"] = list(splits)
    if sampling is not None:
        columns["sampling_prob"] = [float(sampling.get(p.id, 0.0)) for p in products]
    return pa.table(columns)


def product_from_columns(columns: Mapping[str, Sequence[Any]], row: int) -> Product:
    """Product ``row`` of a table read with ``to_pydict()`` (extra columns are ignored)."""
    image = columns["image_path"][row]
    images = columns["image_paths"][row] if "image_paths" in columns else None
    return Product(
        id=columns["id"][row],
        title=columns["title"][row],
        image_paths=list(images) if images else ([image] if image else []),
        brand=columns["brand"][row],
        category=columns["category"][row],
        attributes=json.loads(columns["attributes"][row] or "{}"),
    )


def products_from_table(table: pa.Table) -> list[Product]:
    """All products of ``table``, in row order."""
    columns = table.to_pydict()
    return [product_from_columns(columns, row) for row in range(table.num_rows)]
