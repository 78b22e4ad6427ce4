"""The catalog's value vocabulary, its single home: the attribute keys a product carries and
a query expresses, the canonical form attribute values are compared and filtered in, the
spellings of the gender values (as attribute values, query words and title words), and which
product genders satisfy a query gender.

This is catalog knowledge, shared by the relevance rule (``vlsearch.queries``), the
inverted index and query understanding (``vlsearch.index``); it never depends on the
mocked-query generator.

* ``canonical``: NFKC, casefold, runs of whitespace collapsed; missing-like values ("",
  "NA", "null", ...) are None.
* Genders: Men, Women, Boys, Girls, Kids, Unisex, with their common spellings (male,
  ladies, men's, ...). A query for Men (or Women) is satisfied by Men (Women) *and* Unisex
  products; Kids by Boys and Girls; Boys, Girls and Unisex only by themselves.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Protocol

#: Normalised attribute keys a product may carry (``Product.attributes``; the catalog loader
#: maps its columns onto them).
PRODUCT_ATTRIBUTE_KEYS = (
    "gender", "colour", "usage", "season", "master_category", "sub_category", "article_type",
    "year",
)
#: Attribute keys a query can express: two product fields (category, brand) and three
#: attributes (the mocked-query generator writes them in this order).
QUERY_ATTRIBUTE_KEYS = ("category", "colour", "gender", "brand", "usage")

MISSING_VALUES = frozenset({"", "na", "n/a", "none", "null", "nan", "-", "unknown"})

# spelling (canonical form) -> canonical gender
GENDER_ALIASES: dict[str, str] = {
    "men": "men", "man": "men", "mens": "men", "men's": "men", "male": "men", "males": "men",
    "gents": "men", "mens'": "men", "boys'": "boys",
    "women": "women", "woman": "women", "womens": "women", "women's": "women", "ladies": "women",
    "lady": "women", "female": "women", "females": "women", "womens'": "women", "ladies'": "women",
    "boys": "boys", "boy": "boys", "boy's": "boys",
    "girls": "girls", "girl": "girls", "girl's": "girls", "girls'": "girls",
    "kids": "kids", "kid": "kids", "kid's": "kids", "kids'": "kids", "children": "kids",
    "children's": "kids", "child": "kids", "childrens": "kids",
    "unisex": "unisex",
}
#: Words of a title that say who a product is for without being a gender value.
TITLE_ONLY_GENDER_WORDS = frozenset({"infant", "infants"})
#: Words that name who a product is for (every spelling above): never part of a brand.
GENDER_WORDS = frozenset(GENDER_ALIASES) | TITLE_ONLY_GENDER_WORDS
# query gender -> product genders that satisfy it
GENDER_MATCHES: dict[str, tuple[str, ...]] = {
    "men": ("men", "unisex"),
    "women": ("women", "unisex"),
    "kids": ("boys", "girls", "kids"),
    "boys": ("boys",),
    "girls": ("girls",),
    "unisex": ("unisex",),
}


class ProductLike(Protocol):
    """The fields of ``vlsearch.catalog.Product`` this module reads."""

    id: str
    title: str
    brand: str | None
    category: str | None
    attributes: dict[str, str]


def canonical(value: Any) -> str | None:
    """Comparison form of an attribute value: NFKC, casefold, single spaces; None when missing."""
    if value is None:
        return None
    text = " ".join(unicodedata.normalize("NFKC", str(value)).casefold().split())
    return None if text in MISSING_VALUES else text


def canonical_gender(value: Any) -> str | None:
    """The canonical gender of a spelling ("Ladies" → "women"); other values stay as they are."""
    text = canonical(value)
    return None if text is None else GENDER_ALIASES.get(text, text)


def product_value(product: ProductLike, key: str) -> str | None:
    """The canonical value of ``key`` for ``product`` (category and brand from their fields)."""
    attrs = product.attributes or {}
    if key == "category":
        return canonical(product.category or attrs.get("article_type"))
    if key == "brand":
        return canonical(product.brand)
    if key == "gender":
        return canonical_gender(attrs.get("gender"))
    if key == "colour":
        return canonical(attrs.get("colour", attrs.get("color")))
    return canonical(attrs.get(key))


def accepted_values(key: str, value: Any) -> tuple[str, ...]:
    """Canonical product values that satisfy the query value ``value`` of ``key``."""
    if key == "gender":
        gender = canonical_gender(value)
        if gender is None:
            return ()
        return GENDER_MATCHES.get(gender, (gender,))
    text = canonical(value)
    return () if text is None else (text,)
