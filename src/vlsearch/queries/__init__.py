"""Queries and their relevance, one concern a module:

* ``relevance``: the relevance rule (``relevant``, ``intent_key``, ``RelevanceIndex``);
* ``phrases``: the phrasing tables (``SYNONYMS`` and the per-attribute phrasings);
* ``generator``: the mocked-query generator and its BEIR export (test data; serving never imports it);
* ``splits``: the seeded-hash splits of products, mocked queries and click logs;
* ``clicklog``: click logs and the sampling probabilities Q(p);
* ``beir``: the BEIR writer of evaluation sets and the corpus file.

The names below are re-exported for callers of the former single ``vlsearch.queries``
module. They are resolved on first use (PEP 562 ``__getattr__``), so importing one
submodule, e.g. ``vlsearch.queries.relevance`` from the index, does not load the generator.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "relevance": ("RelevanceIndex", "intent_key", "relevant"),
    "phrases": ("CATEGORY_PHRASES", "COLOUR_PHRASES", "GENDER_PHRASES", "SYNONYMS",
                "USAGE_PHRASES", "category_phrases", "colour_phrases", "names_colour"),
    "generator": ("SINGLE_ATTRIBUTE_KEYS", "MockQuery", "colour_probe_queries",
                  "generate_queries", "single_attribute_queries", "export_beir"),
    "splits": ("ClickSplit", "ProductSplit", "QuerySplit", "split_click_log", "split_products",
               "split_queries"),
    "clicklog": ("ClickLog", "ClickRow", "read_click_log", "sampling_probabilities"),
    "beir": ("CORPUS_FILE", "corpus_text", "export_click_beir", "export_corpus"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "CATEGORY_PHRASES",
    "COLOUR_PHRASES",
    "CORPUS_FILE",
    "GENDER_PHRASES",
    "SINGLE_ATTRIBUTE_KEYS",
    "SYNONYMS",
    "USAGE_PHRASES",
    "ClickLog",
    "ClickRow",
    "ClickSplit",
    "MockQuery",
    "ProductSplit",
    "QuerySplit",
    "RelevanceIndex",
    "category_phrases",
    "colour_phrases",
    "colour_probe_queries",
    "corpus_text",
    "export_beir",
    "export_click_beir",
    "export_corpus",
    "generate_queries",
    "intent_key",
    "names_colour",
    "read_click_log",
    "relevant",
    "sampling_probabilities",
    "single_attribute_queries",
    "split_click_log",
    "split_products",
    "split_queries",
]

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and editors
    from vlsearch.queries.beir import (
        CORPUS_FILE,
        corpus_text,
        export_click_beir,
        export_corpus,
    )
    from vlsearch.queries.clicklog import ClickLog, ClickRow, read_click_log, sampling_probabilities
    from vlsearch.queries.generator import (
        SINGLE_ATTRIBUTE_KEYS,
        MockQuery,
        colour_probe_queries,
        export_beir,
        generate_queries,
        single_attribute_queries,
    )
    from vlsearch.queries.phrases import (
        CATEGORY_PHRASES,
        COLOUR_PHRASES,
        GENDER_PHRASES,
        SYNONYMS,
        USAGE_PHRASES,
        category_phrases,
        colour_phrases,
        names_colour,
    )
    from vlsearch.queries.relevance import RelevanceIndex, intent_key, relevant
    from vlsearch.queries.splits import (
        ClickSplit,
        ProductSplit,
        QuerySplit,
        split_click_log,
        split_products,
        split_queries,
    )


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
