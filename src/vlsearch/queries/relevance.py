"""The relevance rule of a query: which products satisfy the attributes it expresses.

Attribute keys a query can express: ``category`` (the product's ``category``, i.e. the
articleType), ``colour``, ``gender``, ``brand``, ``usage``
(``vlsearch.vocabulary.QUERY_ATTRIBUTE_KEYS``). A mocked query stores them in *canonical
form*: the catalog's own spelling taken from its source product ("Tshirts", "Navy Blue",
"Casual", "Peter England"), and for gender one of Men, Women, Boys, Girls, Kids, Unisex.
``relevant`` compares values case- and space-insensitively (casefold, runs of whitespace
collapsed), so "men" and "Men" are the same value.

Gender rule: a query for Men (or Women) is satisfied by Men (Women) *and* Unisex products;
Kids is satisfied by Boys and Girls; Boys, Girls and Unisex only by themselves. Common
spellings (male, ladies, men's, ...) are accepted as query values and mapped to these.
Any other key is compared with the product's ``attributes[key]``. A product without a
value for an expressed key is not relevant.

Canonical values and gender spellings live in ``vlsearch.vocabulary``; this module never
depends on the mocked-query generator, so serving and the index may use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlsearch.vocabulary import (
    ProductLike,
    accepted_values,
    canonical,
    canonical_gender,
    product_value,
)


def relevant(product: ProductLike, attributes: Mapping[str, str]) -> bool:
    """True when ``product`` satisfies every attribute the query expresses (rules above).

    Empty or missing-like values ("", "NA") in ``attributes`` express nothing and are ignored.
    """
    for key, value in attributes.items():
        if canonical(value) is None:
            continue
        have = product_value(product, key)
        if have is None or have not in accepted_values(key, value):
            return False
    return True


def intent_key(attributes: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The canonical attribute set of a query: sorted (key, value) pairs, values canonical."""
    items = []
    for key, value in attributes.items():
        text = canonical_gender(value) if key == "gender" else canonical(value)
        if text is not None:
            items.append((key, text))
    return tuple(sorted(items))


class RelevanceIndex:
    """Products indexed by canonical attribute value; ``matching`` intersects posting sets,
    giving exactly the products ``relevant`` accepts without a loop over the catalog."""

    def __init__(self, products: Sequence[ProductLike]):
        unique: dict[str, ProductLike] = {}
        for product in products:  # a repeated id keeps its first product
            unique.setdefault(product.id, product)
        self.products = list(unique.values())
        self.ids = [p.id for p in self.products]
        self._postings: dict[str, dict[str, set[int]]] = {}
        self._cache: dict[tuple, list[int]] = {}

    def _posting(self, key: str) -> dict[str, set[int]]:
        posting = self._postings.get(key)
        if posting is None:
            posting = {}
            for row, product in enumerate(self.products):
                value = product_value(product, key)
                if value is not None:
                    posting.setdefault(value, set()).add(row)
            self._postings[key] = posting
        return posting

    def matching_rows(self, attributes: Mapping[str, str]) -> list[int]:
        """Sorted row numbers (positions in ``products``) of every relevant product."""
        key = tuple(sorted((k, v) for k, v in attributes.items() if canonical(v) is not None))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        sets: list[set[int]] = []
        for name, value in key:
            posting = self._posting(name)
            accepted = [posting.get(v, set()) for v in accepted_values(name, value)]
            sets.append(accepted[0] if len(accepted) == 1 else set().union(*accepted))
        if not sets:
            rows = list(range(len(self.products)))
        else:
            sets.sort(key=len)
            result = set(sets[0])
            for other in sets[1:]:
                result &= other
                if not result:
                    break
            rows = sorted(result)
        self._cache[key] = rows
        return rows

    def matching(self, attributes: Mapping[str, str]) -> list[str]:
        """Ids of every relevant product, in catalog order."""
        return [self.ids[r] for r in self.matching_rows(attributes)]

