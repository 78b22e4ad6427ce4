"""Constraint masks precomputed at load: one packed bitmap per (field, value) of the filter
fields, so a request's Boolean filter (OR within a field, AND across fields) is a few numpy
bit operations instead of an inverted-index query.

The value of each product for each field is ``lexical.product_value`` (the same canonical
form the tantivy filter fields are indexed in), so ``ConstraintMasks.mask(filters)`` equals
``LexicalIndex.filter_mask(filters)`` row for row. Bitmaps are ``np.packbits`` (little bit
order, 1 bit per product): 5.6 kB per value at 44k products.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace

import numpy as np

from vlsearch.index.lexical import FILTER_FIELDS, check_filter, product_value


class ConstraintMasks:
    """Bitmaps per (field, canonical value) over ``n`` product rows."""

    def __init__(self, n: int, bitmaps: dict[str, dict[str, np.ndarray]]):
        self.n = n
        self.bitmaps = bitmaps
        self._empty = np.zeros((n + 7) // 8, dtype=np.uint8)

    @classmethod
    def from_products(cls, products: Sequence) -> ConstraintMasks:
        """From catalog products (anything ``product_value`` reads: brand, category, attributes)."""
        n = len(products)
        bitmaps: dict[str, dict[str, np.ndarray]] = {}
        for field in FILTER_FIELDS:
            rows_of: dict[str, list[int]] = {}
            for row, product in enumerate(products):
                value = product_value(product, field)
                if value:
                    rows_of.setdefault(value, []).append(row)
            per_value = {}
            for value, rows in rows_of.items():
                dense = np.zeros(n, dtype=bool)
                dense[rows] = True
                per_value[value] = np.packbits(dense, bitorder="little")
            bitmaps[field] = per_value
        return cls(n, bitmaps)

    @classmethod
    def from_columns(cls, brands: Iterable, categories: Iterable, attributes: Iterable[str]) -> ConstraintMasks:
        """From the product-table columns of an index version (attributes as JSON text)."""
        products = [SimpleNamespace(brand=b, category=c, attributes=json.loads(a or "{}"))
                    for b, c, a in zip(brands, categories, attributes)]
        return cls.from_products(products)

    def values(self, field: str) -> list[str]:
        return sorted(self.bitmaps.get(field, {}))

    def packed(self, filters: Mapping[str, Sequence[str]]) -> np.ndarray:
        """The packed bitmap of the rows satisfying ``filters`` (validated by ``check_filter``)."""
        return self.packed_canonical(check_filter(filters).items())

    def packed_canonical(self, items: Iterable[tuple[str, Sequence[str]]]) -> np.ndarray:
        """As ``packed`` for (field, values) pairs already in canonical form (e.g. the
        engine's constraints): no validation, the hot path."""
        out = None
        for field, values in items:
            per_value = self.bitmaps.get(field, {})
            field_bits = None
            for value in values:
                bits = per_value.get(value)
                if bits is not None:
                    field_bits = bits.copy() if field_bits is None else np.bitwise_or(field_bits, bits, out=field_bits)
            if field_bits is None:
                return self._empty.copy()
            out = field_bits if out is None else np.bitwise_and(out, field_bits, out=out)
        return np.full_like(self._empty, 0xFF) if out is None else out

    def mask(self, filters: Mapping[str, Sequence[str]]) -> np.ndarray:
        """Boolean mask over rows of the products that satisfy every constraint."""
        return np.unpackbits(self.packed(filters), count=self.n, bitorder="little").view(bool)

    def mask_canonical(self, items: Iterable[tuple[str, Sequence[str]]]) -> np.ndarray:
        return np.unpackbits(self.packed_canonical(items), count=self.n, bitorder="little").view(bool)

    def nbytes(self) -> int:
        return sum(b.nbytes for per_value in self.bitmaps.values() for b in per_value.values())
