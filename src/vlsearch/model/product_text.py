"""The product tower's input text: the title, then attribute text from a configured template.

``model.product_text`` lists template parts in order, each a ``str.format`` pattern over the
product's fields: ``brand``, ``category`` and every attribute key of
:data:`vlsearch.vocabulary.PRODUCT_ATTRIBUTE_KEYS` (``"colour {colour}"``, ``"{sub_category}"``). A part
whose field the product lacks is left out; the parts are joined by
``model.product_text_separator`` after the title. With ``data.sort_terms`` only the title is
term-sorted (as the papers do); the attribute text keeps the template's order, so a label
stays next to its value. An empty template gives the title alone (the default).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from vlsearch.config import ConfigError
from vlsearch.text import normalize_query
from vlsearch.vocabulary import PRODUCT_ATTRIBUTE_KEYS

#: Product fields a template part may name (besides every attribute key).
PRODUCT_FIELDS = ("brand", "category")
#: Title plus the fashion catalog's attributes, as in "colour grey, gender men, usage casual,
#: season summer, topwear, apparel" (the year is left out: no shopper searches for it).
ATTRIBUTE_TEXT = ("colour {colour}", "gender {gender}", "usage {usage}", "season {season}",
                  "{sub_category}", "{master_category}")


def template_fields(template: Sequence[str]) -> list[list[str]]:
    """The field names of each part; an unknown field or a malformed part raises ConfigError."""
    known = set(PRODUCT_FIELDS) | set(PRODUCT_ATTRIBUTE_KEYS)
    out = []
    for part in template:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(part) if name is not None]
        except ValueError as exc:
            raise ConfigError(f"model.product_text: malformed part {part!r} ({exc})") from None
        bad = [n for n in names if n not in known]
        if bad or not names:
            raise ConfigError(
                f"model.product_text: part {part!r} must name at least one field, and only "
                f"fields of {sorted(known)} (got {bad or 'none'})"
            )
        out.append(names)
    return out


def attribute_text(product, template: Sequence[str], separator: str,
                   fields: list[list[str]] | None = None) -> str:
    """The template's parts filled from ``product`` (parts with a missing field left out);
    ``fields`` is ``template_fields(template)`` when the caller has it already."""
    values = {"brand": product.brand, "category": product.category, **product.attributes}
    parts = []
    for part, names in zip(template, fields if fields is not None else template_fields(template)):
        filled = {n: values.get(n) for n in names}
        if all(isinstance(v, str) and v.strip() for v in filled.values()):
            parts.append(part.format(**filled))
    return separator.join(parts)


def product_texts(products: Sequence, template: Sequence[str], separator: str, sort_title: bool) -> list[str]:
    """The product tower's text for each product: title (term-sorted when ``sort_title``),
    then its attribute text."""
    fields = template_fields(template)  # a bad template is refused even for no products
    out = []
    for product in products:
        title = normalize_query(product.title) if sort_title else product.title
        extra = attribute_text(product, template, separator, fields) if template else ""
        out.append(f"{title}{separator}{extra}" if extra else title)
    return out
