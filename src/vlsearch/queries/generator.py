"""The mocked-query generator: shopper queries written from each product's attributes, the
colour probe (colours only images show), single-attribute queries, and their BEIR export.

Test data only: serving and the index never import this module (they use
``vlsearch.vocabulary`` and ``vlsearch.queries.relevance``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsearch.config import DataConfig
from vlsearch.queries.beir import BeirQuery, beir_metadata, seeded_sample, write_beir
from vlsearch.queries.phrases import (
    GENDER_PHRASES,
    USAGE_PHRASES,
    category_phrases,
    colour_phrases,
    colour_words,
    names_any,
    names_colour,
)
from vlsearch.queries.relevance import RelevanceIndex, intent_key
from vlsearch.queries.splits import seeded_int
from vlsearch.text import segment
from vlsearch.vocabulary import QUERY_ATTRIBUTE_KEYS, ProductLike, canonical, product_value


@dataclass
class MockQuery:
    """A generated query: its text, the canonical attributes it expresses, the product it was
    written from (the "click") and the click count of that (query, product) pair."""

    text: str
    attributes: dict[str, str]
    product_id: str
    count: int = 1

    @property
    def intent(self) -> tuple[tuple[str, str], ...]:
        return intent_key(self.attributes)



def _unit(seed: int, *parts: str) -> float:
    """A uniform number in [0, 1) from the seed and the parts."""
    return seeded_int(seed, *parts) / 2.0**64


# query gender written for a product of this gender: (value, weight)
_SOURCE_GENDERS: dict[str, tuple[tuple[str, float], ...]] = {
    "men": (("Men", 1.0),),
    "women": (("Women", 1.0),),
    "boys": (("Boys", 0.7), ("Kids", 0.3)),
    "girls": (("Girls", 0.7), ("Kids", 0.3)),
    "kids": (("Kids", 1.0),),
    "unisex": (("Unisex", 0.4), ("Men", 0.3), ("Women", 0.3)),
}

# Categories where a colour or a usage makes no sense in a query.
_NO_COLOUR = {
    "perfume and body mist", "deodorant", "fragrance gift set", "face moisturisers", "sunscreen",
    "face wash and cleanser", "mask and peel", "body lotion", "toner", "eye cream",
    "face serum and gel", "face scrub and exfoliator", "makeup remover", "mens grooming kit",
    "body wash and scrub", "free gifts", "hair colour", "lip care", "nail essentials",
    "beauty accessory", "vouchers",
}
_USAGE_MASTER_CATEGORIES = {"apparel", "footwear"}  # usage reads naturally on clothes and shoes
_USAGE_ACCESSORIES = {"accessories"}  # ... and on accessories unless it is "casual"


# Number of expressed attributes: weighted toward 2-3.
_SIZE_WEIGHTS = {1: 0.15, 2: 0.40, 3: 0.30, 4: 0.12, 5: 0.03}
# How readily each non-anchor attribute joins a query (shoppers rarely type "casual").
_KEY_WEIGHTS = {"category": 1.0, "colour": 0.8, "gender": 0.8, "brand": 0.4, "usage": 0.35}
_CASUAL_USAGE_WEIGHT = 0.12


def _pick(rng: random.Random, phrases: Sequence[str]) -> str:
    """A phrase, the table's earlier (commoner) spellings more likely: weights 3, 2, 1, 1, ..."""
    if len(phrases) == 1:
        return phrases[0]
    x = rng.random() * (len(phrases) + 3)
    if x < 3:
        return phrases[0]
    if x < 5:
        return phrases[1]
    return phrases[min(int(x - 3), len(phrases) - 1)]


def _weighted(rng: random.Random, options: Sequence[tuple[Any, float]]) -> Any:
    total = sum(w for _, w in options)
    x = rng.random() * total
    for value, weight in options:
        x -= weight
        if x < 0:
            return value
    return options[-1][0]


def _query_values(product: ProductLike) -> dict[str, tuple[str, str]]:
    """Expressible attributes of a product: key -> (canonical query value, comparison form)."""
    attrs = product.attributes or {}
    out: dict[str, tuple[str, str]] = {}
    category = product_value(product, "category")
    if category is not None:
        out["category"] = (" ".join(str(product.category or attrs.get("article_type")).split()),
                           category)
    brand = product_value(product, "brand")
    if brand is not None and brand != category:
        out["brand"] = (" ".join(str(product.brand).split()), brand)
    colour = product_value(product, "colour")
    if colour is not None and category not in _NO_COLOUR:
        raw = attrs.get("colour", attrs.get("color"))
        out["colour"] = (" ".join(str(raw).split()), colour)
    gender = product_value(product, "gender")
    if gender is not None and gender in _SOURCE_GENDERS:
        out["gender"] = ("", gender)  # the query gender is drawn per query
    usage = product_value(product, "usage")
    master = canonical(attrs.get("master_category"))
    if (
        usage is not None
        and usage in USAGE_PHRASES
        and (
            master is None
            or master in _USAGE_MASTER_CATEGORIES
            or (master in _USAGE_ACCESSORIES and usage != "casual")
        )
        and not set(usage.split()) & set((category or "").split())  # "casual casual shoes"
    ):
        out["usage"] = (" ".join(str(attrs.get("usage")).split()), usage)
    return out


def _choose_keys(rng: random.Random, available: Mapping[str, tuple[str, str]]) -> list[str]:
    anchors = [k for k in ("category", "brand") if k in available]
    if not anchors:
        return []
    if len(anchors) == 2:
        anchor = "category" if rng.random() < 0.8 else "brand"
    else:
        anchor = anchors[0]
    sizes = [(n, w) for n, w in _SIZE_WEIGHTS.items() if n <= len(available)]
    size = _weighted(rng, sizes)
    keys = [anchor]
    weights = dict(_KEY_WEIGHTS)
    if available.get("usage", ("", ""))[1] == "casual":
        weights["usage"] = _CASUAL_USAGE_WEIGHT
    rest = [(k, weights[k]) for k in QUERY_ATTRIBUTE_KEYS if k in available and k != anchor]
    while len(keys) < size and rest:
        pick = _weighted(rng, rest)
        keys.append(pick)
        rest = [(k, w) for k, w in rest if k != pick]
    if "usage" in keys and "category" not in keys:  # "nike sports" reads oddly; usage needs a category
        keys.remove("usage")
    return keys


def _typo(rng: random.Random, text: str) -> str:
    """One typo (adjacent swap, dropped letter or doubled letter) in a word of >= 3 letters."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 3]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    letters = [j for j, c in enumerate(word) if c.isalpha()]
    kind = rng.randrange(3)
    if kind == 0:
        swaps = [j for j in letters if j + 1 < len(word) and word[j + 1].isalpha()
                 and word[j] != word[j + 1]]
        if swaps:
            j = rng.choice(swaps)
            word = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
        else:
            kind = 1
    if kind == 1:
        j = rng.choice(letters)
        word = word[:j] + word[j + 1 :]
    elif kind == 2:
        j = rng.choice(letters)
        word = word[: j + 1] + word[j] + word[j + 1 :]
    words[i] = word
    return " ".join(words)


def _phrase(
    rng: random.Random, keys: list[str], values: dict[str, tuple[str, str]], gender: str | None
) -> str:
    """Write the chosen attributes as a shopper would: varied phrasing and word order."""
    parts: dict[str, str] = {}
    suffix: str | None = None
    for key in keys:
        if key == "category":
            parts[key] = _pick(rng, category_phrases(values[key][1]))
        elif key == "colour":
            parts[key] = _pick(rng, colour_phrases(values[key][1]))
        elif key == "brand":
            brand = values[key][0]
            parts[key] = brand if rng.random() < 0.15 else brand.lower()
        elif key == "gender":
            before, after = GENDER_PHRASES[gender]
            if after and suffix is None and rng.random() < 0.3:
                suffix = _pick(rng, after)
            else:
                parts[key] = _pick(rng, before)
        elif key == "usage":
            before, after = USAGE_PHRASES[values[key][1]]
            if after and suffix is None and rng.random() < 0.2:
                suffix = _pick(rng, after)
            else:
                parts[key] = _pick(rng, before)
    order = ["brand", "gender", "usage", "colour", "category"]
    draw = rng.random()
    if draw < 0.12:
        rng.shuffle(order)
    elif "category" in parts and draw < 0.24:  # "tshirts black", "kurta ethnic"
        order.remove("category")
        order.insert(rng.randrange(len(order)), "category")
    words = [parts[k] for k in order if k in parts]
    if suffix is not None:
        words.append(suffix)
    return " ".join(words)


def generate_queries(
    products: Iterable[ProductLike],
    config: DataConfig,
    seed: int,
    *,
    popularity_alpha: float = 2.0,
    max_count: int = 10_000,
) -> list[MockQuery]:
    """Mock ``config.queries_per_product`` shopper queries from each product's attributes.

    Each query expresses a subset of {category, colour, gender, brand, usage} that always
    holds the category or the brand (mostly 2-3 attributes), phrased with synonyms,
    plurals/singulars, possessives and varied word order; with probability
    ``config.typo_rate`` one word of 3+ letters gets a typo. Attributes are canonical and
    the source product is always ``relevant`` to them. Click counts follow a heavy-tailed
    (Pareto, ``popularity_alpha``) product popularity times a log-normal per-query factor.

    Deterministic: each product draws from its own RNG seeded by (seed, product id), so a
    product's queries do not depend on the order or the rest of the catalog. Products with
    neither category nor brand give no query. Distinct texts per product (best effort).
    """
    n_per = int(config.queries_per_product)
    typo_rate = float(config.typo_rate)
    out: list[MockQuery] = []
    for product in products:
        values = _query_values(product)
        if "category" not in values and "brand" not in values:
            continue
        pid = str(product.id)
        rng = random.Random(seeded_int(seed, "queries", pid))
        u = _unit(seed, "popularity", pid)
        popularity = (1.0 - u) ** (-1.0 / popularity_alpha)
        seen: set[str] = set()
        attempts = 0
        while len(seen) < n_per and attempts < 4 * n_per:
            attempts += 1
            keys = _choose_keys(rng, values)
            gender = None
            attributes: dict[str, str] = {}
            for key in QUERY_ATTRIBUTE_KEYS:
                if key not in keys:
                    continue
                if key == "gender":
                    label = _weighted(rng, _SOURCE_GENDERS[values["gender"][1]])
                    gender = label.lower()
                    attributes[key] = label
                else:
                    attributes[key] = values[key][0]
            text = _phrase(rng, keys, values, gender)
            if typo_rate > 0 and rng.random() < typo_rate:
                text = _typo(rng, text)
            if text in seen:
                continue
            seen.add(text)
            count = round(popularity * rng.lognormvariate(0.0, 0.5))
            out.append(MockQuery(text, attributes, pid, max(1, min(count, max_count))))
    return out


def colour_probe_queries(products: Iterable[ProductLike], seed: int) -> list[MockQuery]:
    """One query per product whose colour only its image shows: the product's colour and
    category, with its gender when it has one ("men's grey tshirt").

    The title of each source product names no colour of the catalog (neither its own, nor a
    synonym, nor another one that would contradict the label), so a model can only rank the
    product for the colour it sees in the picture. The brand is left out so that the query
    matches many products of the category, which the colour alone tells apart. No typos.
    Phrasing and word order are drawn like :func:`generate_queries` from an RNG seeded by
    (seed, product id).
    """
    products = list(products)
    values_of = [_query_values(product) for product in products]
    colours = sorted({v["colour"][0] for v in values_of if "colour" in v})
    every_colour = [words for colour in colours for words in colour_words(colour)]
    out: list[MockQuery] = []
    for product, values in zip(products, values_of):
        if "colour" not in values or "category" not in values:
            continue
        if names_any(segment(product.title), every_colour):
            continue
        rng = random.Random(seeded_int(seed, "colour-probe", str(product.id)))
        keys = [k for k in ("category", "colour", "gender") if k in values]
        attributes = {k: values[k][0] for k in keys if k != "gender"}
        gender = None
        if "gender" in keys:
            attributes["gender"] = _weighted(rng, _SOURCE_GENDERS[values["gender"][1]])
            gender = attributes["gender"].lower()
        out.append(MockQuery(_phrase(rng, keys, values, gender), attributes, str(product.id)))
    return out


#: Attributes a single-attribute query asks for (every one the fashion catalog has, year aside).
SINGLE_ATTRIBUTE_KEYS = ("category", "colour", "gender", "usage", "season", "master_category",
                         "sub_category")


def _value_phrase(key: str, value: str) -> str:
    """How a shopper writes one canonical value alone: the commonest phrasing of the tables."""
    if key == "category":
        return category_phrases(value)[0]
    if key == "colour":
        return colour_phrases(value)[0]
    if key == "gender" and value in GENDER_PHRASES:
        return GENDER_PHRASES[value][0][0]
    if key == "usage" and value in USAGE_PHRASES:
        return USAGE_PHRASES[value][0][0]
    return value


def single_attribute_queries(products: Iterable[ProductLike],
                             keys: Sequence[str] = SINGLE_ATTRIBUTE_KEYS) -> list[MockQuery]:
    """One query per value of each attribute in ``keys`` that the catalog has ("summer",
    "footwear", "topwear", "grey"): the value as a shopper writes it, with every product
    holding that value relevant (``export_beir`` writes them; the first such product stands in
    as the "click"). Products of a brand-only catalog give category/brand-free queries only
    for the attributes they have. Deterministic: values in sorted order."""
    products = list(products)
    out: list[MockQuery] = []
    for key in keys:
        first: dict[str, str] = {}
        for product in products:
            value = product_value(product, key)
            if value is not None:
                first.setdefault(value, str(product.id))
        for value in sorted(first):
            out.append(MockQuery(_value_phrase(key, value), {key: value}, first[value]))
    return out


def export_beir(
    queries: Sequence[MockQuery],
    products: Sequence[ProductLike],
    out_dir: str | Path,
    max_queries: int | None = None,
    seed: int = 0,
    id_prefix: str = "q",
) -> int:
    """Write ``queries.jsonl`` and ``qrels.tsv`` (BEIR layout) under ``out_dir``; return the
    number of queries written.

    At most ``max_queries`` queries are kept (a seeded sample, original order kept). Query
    ids are ``{id_prefix}{n}``. ``metadata``: ``attributes`` (canonical), ``category`` (the
    intent category in catalog spelling, or null), ``source_product``, and
    ``colour_only_in_image`` (the query names a colour that the source title does not).
    Qrels: score 2 for the source product (the "click"), 1 for every other product of
    ``products`` that satisfies all attributes (``relevant``), found by intersecting
    attribute posting sets (``RelevanceIndex``). Both files are written atomically.
    """
    index = RelevanceIndex(products)
    by_id = {p.id: p for p in index.products}
    out: list[BeirQuery] = []
    for q in seeded_sample(queries, max_queries, seed):
        source = by_id.get(q.product_id)
        colour = q.attributes.get("colour")
        only_in_image = bool(colour) and source is not None and not names_colour(source.title, colour)
        metadata = beir_metadata(dict(q.attributes), q.attributes.get("category"), q.product_id,
                                 only_in_image)
        judged = [(q.product_id, 2)] if source is not None else []
        judged += [(pid, 1) for pid in index.matching(q.attributes) if pid != q.product_id]
        out.append(BeirQuery(q.text, metadata, judged))
    return write_beir(out_dir, out, id_prefix)
