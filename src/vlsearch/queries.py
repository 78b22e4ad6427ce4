"""Queries and their relevance: click logs, the mocked-query generator, product and query
splits, sampling probabilities Q(p) and the BEIR export of evaluation sets.

Attribute keys a query can express: ``category`` (the product's ``category``, i.e. the
articleType), ``colour``, ``gender``, ``brand``, ``usage``. A mocked query stores them in
*canonical form*: the catalog's own spelling taken from its source product ("Tshirts",
"Navy Blue", "Casual", "Peter England"), and for gender one of Men, Women, Boys, Girls,
Kids, Unisex. ``relevant`` compares values case- and space-insensitively (casefold, runs
of whitespace collapsed), so "men" and "Men" are the same value.

Gender rule: a query for Men (or Women) is satisfied by Men (Women) *and* Unisex products;
Kids is satisfied by Boys and Girls; Boys, Girls and Unisex only by themselves. Common
spellings (male, ladies, men's, ...) are accepted as query values and mapped to these.
Any other key is compared with the product's ``attributes[key]``. A product without a
value for an expressed key is not relevant.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlsearch.config import DataConfig
from vlsearch.errors import InputError, Problem
from vlsearch.io import atomic_write, atomic_write_text
from vlsearch.text import query_id, query_ids, segment
from vlsearch.vocabulary import ProductLike, accepted_values, canonical, product_value
from vlsearch.vocabulary import canonical_gender as _canonical_gender

ATTRIBUTE_KEYS = ("category", "colour", "gender", "brand", "usage")

# --- the relevance rule (canonical values and gender spellings: vlsearch.vocabulary) --------


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
        text = _canonical_gender(value) if key == "gender" else canonical(value)
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


# --- phrasing tables ------------------------------------------------------------------------

# articleType (canonical) -> the ways shoppers write it; the most frequent ~80 types of the
# fashion catalog. Phrases never overlap between types. Unlisted types use their own name.
CATEGORY_PHRASES: dict[str, tuple[str, ...]] = {
    "tshirts": ("tshirts", "tshirt", "t-shirts", "t-shirt", "t shirt", "tees", "tee"),
    "shirts": ("shirts", "shirt"),
    "casual shoes": ("casual shoes", "casual shoe", "casual sneakers"),
    "watches": ("watches", "watch", "wrist watch", "wristwatch"),
    "sports shoes": ("sports shoes", "sport shoes", "sneakers", "running shoes", "trainers"),
    "kurtas": ("kurtas", "kurta"),
    "tops": ("tops", "top"),
    "handbags": ("handbags", "handbag", "hand bag", "purse", "purses"),
    "heels": ("heels", "high heels", "heeled sandals"),
    "sunglasses": ("sunglasses", "sunglass", "shades", "sun glasses", "goggles"),
    "wallets": ("wallets", "wallet"),
    "flip flops": ("flip flops", "flip-flops", "flipflops", "slippers", "chappals"),
    "sandals": ("sandals", "sandal"),
    "briefs": ("briefs", "brief"),
    "belts": ("belts", "belt"),
    "backpacks": ("backpacks", "backpack", "school bag", "college bag"),
    "socks": ("socks", "sock"),
    "formal shoes": ("formal shoes", "formal shoe", "office shoes"),
    "perfume and body mist": ("perfume", "perfumes", "body mist", "eau de toilette"),
    "jeans": ("jeans", "denims", "denim jeans"),
    "shorts": ("shorts", "half pants", "bermudas"),
    "trousers": ("trousers", "trouser", "pants", "chinos"),
    "flats": ("flats", "flat sandals", "ballerinas", "flat shoes"),
    "bra": ("bra", "bras", "brassiere"),
    "dresses": ("dresses", "dress", "frock"),
    "sarees": ("sarees", "saree", "sari", "saris"),
    "earrings": ("earrings", "earring", "ear rings"),
    "deodorant": ("deodorant", "deodorants", "deo"),
    "nail polish": ("nail polish", "nail paint", "nail enamel"),
    "lipstick": ("lipstick", "lipsticks", "lip stick"),
    "track pants": ("track pants", "trackpants", "joggers", "track pant"),
    "clutches": ("clutches", "clutch", "clutch bag"),
    "sweatshirts": ("sweatshirts", "sweatshirt", "hoodie", "hoodies"),
    "caps": ("caps", "cap", "baseball cap"),
    "sweaters": ("sweaters", "sweater", "pullover", "jumper"),
    "ties": ("ties", "tie", "neckties", "necktie"),
    "jackets": ("jackets", "jacket"),
    "innerwear vests": ("vests", "vest", "innerwear vest", "banian"),
    "kurtis": ("kurtis", "kurti"),
    "tunics": ("tunics", "tunic"),
    "nightdress": ("nightdress", "nighty", "nightie", "night dress"),
    "leggings": ("leggings", "legging"),
    "pendant": ("pendant", "pendants", "locket"),
    "capris": ("capris", "capri", "three fourths"),
    "necklace and chains": ("necklace", "necklaces", "chain", "chains"),
    "lip gloss": ("lip gloss", "lipgloss"),
    "night suits": ("night suits", "night suit", "pajamas", "pyjamas"),
    "trunk": ("trunks", "trunk"),
    "skirts": ("skirts", "skirt"),
    "scarves": ("scarves", "scarf"),
    "ring": ("ring", "rings"),
    "dupatta": ("dupatta", "dupattas", "chunni"),
    "accessory gift set": ("accessory gift set", "gift set", "gift hamper"),
    "cufflinks": ("cufflinks", "cuff links", "cufflink"),
    "kajal and eyeliner": ("kajal", "eyeliner", "eye liner", "kohl"),
    "kurta sets": ("kurta sets", "kurta set", "kurta pyjama set"),
    "stoles": ("stoles", "stole"),
    "duffel bag": ("duffel bag", "duffle bag", "gym bag", "duffel bags"),
    "bangle": ("bangles", "bangle"),
    "laptop bag": ("laptop bag", "laptop bags", "office bag"),
    "foundation and primer": ("foundation", "primer", "face foundation"),
    "sports sandals": ("sports sandals", "floaters", "sport sandals"),
    "bracelet": ("bracelet", "bracelets"),
    "lounge pants": ("lounge pants", "lounge pant", "pyjama bottoms"),
    "face moisturisers": ("face moisturiser", "moisturizer", "face cream", "moisturiser"),
    "jewellery set": ("jewellery set", "jewelry set", "jewellery sets"),
    "fragrance gift set": ("fragrance gift set", "perfume gift set"),
    "highlighter and blush": ("blush", "highlighter", "blusher"),
    "boxers": ("boxers", "boxer shorts"),
    "compact": ("compact", "compact powder"),
    "lip liner": ("lip liner", "lipliner"),
    "mobile pouch": ("mobile pouch", "phone pouch"),
    "messenger bag": ("messenger bag", "messenger bags", "sling bag"),
    "eyeshadow": ("eyeshadow", "eye shadow"),
    "suspenders": ("suspenders",),
    "camisoles": ("camisoles", "camisole", "cami"),
    "mufflers": ("mufflers", "muffler"),
    "patiala": ("patiala", "patiala pants", "patiala salwar"),
    "lounge shorts": ("lounge shorts", "sleep shorts"),
    "jeggings": ("jeggings", "jegging"),
    "stockings": ("stockings", "stocking"),
    "salwar": ("salwar", "salwars"),
    "churidar": ("churidar", "churidars"),
    "tracksuits": ("tracksuits", "tracksuit", "track suit"),
    "face wash and cleanser": ("face wash", "cleanser", "facewash"),
    "sunscreen": ("sunscreen", "sunblock", "sun screen"),
    "bath robe": ("bath robe", "bathrobe"),
    "rain jacket": ("rain jacket", "raincoat", "rain coat"),
    "swimwear": ("swimwear", "swimsuit", "swimming costume"),
    "waist pouch": ("waist pouch", "waist bag", "fanny pack"),
    "rucksacks": ("rucksacks", "rucksack"),
    "blazers": ("blazers", "blazer"),
}

# baseColour (canonical) -> true synonyms only; unlisted colours use their own name.
COLOUR_PHRASES: dict[str, tuple[str, ...]] = {
    "navy blue": ("navy blue", "navy"),
    "grey": ("grey", "gray"),
    "off white": ("off white", "off-white"),
    "multi": ("multicolour", "multicolor", "multi colour", "multicoloured"),
    "grey melange": ("grey melange", "gray melange", "melange grey"),
    "charcoal": ("charcoal", "charcoal grey"),
    "turquoise blue": ("turquoise blue", "turquoise"),
    "coffee brown": ("coffee brown", "coffee"),
    "lime green": ("lime green", "lime"),
    "fluorescent green": ("fluorescent green", "neon green"),
    "olive": ("olive", "olive green"),
    "gold": ("gold", "golden"),
    "sea green": ("sea green", "seagreen"),
}

# canonical gender -> (phrases before the category, phrases after it)
GENDER_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "men": (("men", "men's", "mens", "male", "gents", "man"), ("for men",)),
    "women": (("women", "women's", "womens", "ladies", "female", "woman"), ("for women", "for ladies")),
    "boys": (("boys", "boy's", "boys'", "boy"), ("for boys",)),
    "girls": (("girls", "girl's", "girls'", "girl"), ("for girls",)),
    "kids": (("kids", "kid's", "kids'", "children's", "childrens"), ("for kids", "for children")),
    "unisex": (("unisex",), ()),
}

# canonical usage -> (phrases before the category, phrases after it)
USAGE_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "casual": (("casual",), ()),
    "sports": (("sports", "sport", "sporty", "gym"), ("for sports", "for gym", "for running")),
    "formal": (("formal", "office"), ("for office", "for work")),
    "ethnic": (("ethnic", "traditional"), ("for festive wear",)),
    "party": (("party", "partywear", "party wear"), ("for party",)),
    "smart casual": (("smart casual",), ()),
    "travel": (("travel",), ("for travel",)),
    "home": (("home",), ("for home",)),
}

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


# attribute -> canonical value -> every phrasing the generator writes (query understanding
# in vlsearch.index reads this to map query phrases back to catalog values)
SYNONYMS: dict[str, dict[str, tuple[str, ...]]] = {
    "category": CATEGORY_PHRASES,
    "colour": COLOUR_PHRASES,
    "gender": {g: before + after for g, (before, after) in GENDER_PHRASES.items()},
    "usage": {u: before + after for u, (before, after) in USAGE_PHRASES.items()},
}


def category_phrases(category: str) -> tuple[str, ...]:
    key = canonical(category) or ""
    return CATEGORY_PHRASES.get(key, (key,))


def colour_phrases(colour: str) -> tuple[str, ...]:
    key = canonical(colour) or ""
    return COLOUR_PHRASES.get(key, (key,))


def names_colour(title: str, colour: str) -> bool:
    """True when ``title`` names ``colour`` (or a synonym of it) as consecutive terms."""
    return _names_any(segment(title), _colour_words(colour))


def _colour_words(colour: str) -> list[list[str]]:
    """The segmented spellings of a colour: its name and its synonyms."""
    return [words for phrase in (colour, *colour_phrases(colour)) if (words := segment(phrase))]


def _names_any(terms: list[str], phrases: Iterable[list[str]]) -> bool:
    """True when one of ``phrases`` occurs in ``terms`` as consecutive terms."""
    return any(terms[i : i + len(words)] == words
               for words in phrases for i in range(len(terms) - len(words) + 1))


# --- mocked-query generator -------------------------------------------------------------------


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


def _seeded_int(seed: int, *parts: str) -> int:
    """A 64-bit integer from the seed and the parts: stable across processes and machines."""
    data = "\x1f".join((str(seed), *parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _unit(seed: int, *parts: str) -> float:
    """A uniform number in [0, 1) from the seed and the parts."""
    return _seeded_int(seed, *parts) / 2.0**64


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
    rest = [(k, weights[k]) for k in ATTRIBUTE_KEYS if k in available and k != anchor]
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
        rng = random.Random(_seeded_int(seed, "queries", pid))
        u = _unit(seed, "popularity", pid)
        popularity = (1.0 - u) ** (-1.0 / popularity_alpha)
        seen: set[str] = set()
        attempts = 0
        while len(seen) < n_per and attempts < 4 * n_per:
            attempts += 1
            keys = _choose_keys(rng, values)
            gender = None
            attributes: dict[str, str] = {}
            for key in ATTRIBUTE_KEYS:
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
    every_colour = [words for colour in colours for words in _colour_words(colour)]
    out: list[MockQuery] = []
    for product, values in zip(products, values_of):
        if "colour" not in values or "category" not in values:
            continue
        if _names_any(segment(product.title), every_colour):
            continue
        rng = random.Random(_seeded_int(seed, "colour-probe", str(product.id)))
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


# --- splits -----------------------------------------------------------------------------------


class ProductSplit(NamedTuple):
    """Product ids in catalog order; unpacks as ``train_ids, heldout_ids``."""

    train: list[str]
    heldout: list[str]


def split_products(
    products: Iterable[ProductLike], heldout_fraction: float, seed: int
) -> ProductSplit:
    """Hold out ``round(n * heldout_fraction)`` products for cold-start evaluation.

    Rule: products are ranked by a hash of (seed, product id) and the lowest-ranked ones are
    held out, so the choice does not depend on catalog order, and a product keeps its side
    when the catalog grows (as long as the held-out count does not shrink). Held-out
    products must never enter the training click log. Duplicate ids count once.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    ids = list(dict.fromkeys(str(p.id) for p in products))
    k = round(len(ids) * heldout_fraction)
    ranked = sorted(ids, key=lambda i: (_seeded_int(seed, "product-split", i), i))
    heldout = set(ranked[:k])
    return ProductSplit([i for i in ids if i not in heldout], [i for i in ids if i in heldout])


class QuerySplit(NamedTuple):
    """Unpacks as ``train, valid, test`` (lists of MockQuery)."""

    train: list[MockQuery]
    valid: list[MockQuery]
    test: list[MockQuery]


def split_queries(
    queries: Sequence[MockQuery],
    valid_fraction: float,
    test_fraction: float,
    seed: int,
    heldout_product_ids: Collection[str] = (),
) -> QuerySplit:
    """Split mocked queries by *intent* (the canonical attribute set, ``intent_key``).

    Rules, in order:

    1. Queries whose source product is in ``heldout_product_ids`` are dropped: the held-out
       evaluation set is ``generate_queries(heldout_products, ...)`` and its products never
       enter training.
    2. The distinct intents are ranked by a hash of (seed, intent); the first
       ``round(n * valid_fraction)`` go to valid, the next ``round(n * test_fraction)`` to
       test (at least one each when the fraction is positive and there are at least three
       intents), the rest to train. A query goes where its intent goes, so no valid/test
       intent is ever trained on (its source products are training products, seen under
       other intents).
    3. Texts must not leak either: a train query whose query id (sorted terms) equals that
       of a valid or test query is dropped, and so is a test query sharing a query id with
       a valid one. This only happens through typos or overlapping phrasings; it keeps the
       qid table of training queries from pre-answering evaluation queries.
    """
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError("valid_fraction + test_fraction must be below 1")
    heldout = {str(i) for i in heldout_product_ids}
    kept = [q for q in queries if q.product_id not in heldout]
    intents = sorted({q.intent for q in kept})
    n = len(intents)

    def count(fraction: float) -> int:
        k = round(n * fraction)
        return max(k, 1) if fraction > 0 and n >= 3 else k

    n_valid, n_test = count(valid_fraction), count(test_fraction)
    ranked = sorted(intents, key=lambda it: (_seeded_int(seed, "intent-split", repr(it)), it))
    side = {it: "valid" for it in ranked[:n_valid]}
    side.update({it: "test" for it in ranked[n_valid : n_valid + n_test]})
    parts: dict[str, list[MockQuery]] = {"train": [], "valid": [], "test": []}
    for q in kept:
        parts[side.get(q.intent, "train")].append(q)
    valid_ids = set(query_ids(q.text for q in parts["valid"]).tolist())
    test = [q for q in parts["test"] if query_id(q.text) not in valid_ids]
    eval_ids = valid_ids | set(query_ids(q.text for q in test).tolist())
    train = [q for q in parts["train"] if query_id(q.text) not in eval_ids]
    return QuerySplit(train, parts["valid"], test)


# --- click logs --------------------------------------------------------------------------------


class ClickRow(NamedTuple):
    query: str
    product_id: str
    count: int


@dataclass
class ClickLog:
    """(query, product_id, count) rows, column-wise; ``problems`` lists the rows skipped
    while reading (file, line, field, message) and ``rows_read`` counts every data row seen."""

    query: list[str] = field(default_factory=list)
    product_id: list[str] = field(default_factory=list)
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    problems: list[Problem] = field(default_factory=list)
    rows_read: int = 0
    source: str | None = None

    def __post_init__(self) -> None:
        self.count = np.asarray(self.count, dtype=np.int64)
        if not (len(self.query) == len(self.product_id) == len(self.count)):
            raise ValueError("ClickLog columns must have the same length")

    def __len__(self) -> int:
        return len(self.query)

    def rows(self) -> Iterator[ClickRow]:
        for q, p, c in zip(self.query, self.product_id, self.count.tolist()):
            yield ClickRow(q, p, c)

    def qids(self) -> np.ndarray:
        """``vlsearch.text.query_id`` of every row (uint32)."""
        return query_ids(self.query)

    def take(self, rows: Sequence[int]) -> ClickLog:
        """The rows at the given positions, in that order."""
        return ClickLog(
            query=[self.query[i] for i in rows],
            product_id=[self.product_id[i] for i in rows],
            count=self.count[np.asarray(rows, dtype=np.int64)],
            source=self.source,
        )

    @property
    def total_clicks(self) -> int:
        return int(self.count.sum())

    @classmethod
    def from_queries(cls, queries: Iterable[MockQuery]) -> ClickLog:
        """One row per distinct (text, product), counts summed."""
        merged: dict[tuple[str, str], int] = {}
        for q in queries:
            key = (q.text, q.product_id)
            merged[key] = merged.get(key, 0) + int(q.count)
        return cls(
            [k[0] for k in merged], [k[1] for k in merged],
            np.fromiter(merged.values(), dtype=np.int64, count=len(merged)),
        )

    def without_products(self, product_ids: Collection[str]) -> ClickLog:
        """The rows whose product is not in ``product_ids`` (e.g. the held-out products)."""
        drop = set(product_ids)
        keep = [i for i, p in enumerate(self.product_id) if p not in drop]
        return ClickLog(
            [self.query[i] for i in keep], [self.product_id[i] for i in keep],
            self.count[keep] if keep else np.zeros(0, dtype=np.int64),
            list(self.problems), self.rows_read, self.source,
        )

    def to_table(self):
        """pyarrow table with columns query, product_id, count (int64), qid (uint32)."""
        import pyarrow as pa

        return pa.table({
            "query": pa.array(self.query, type=pa.string()),
            "product_id": pa.array(self.product_id, type=pa.string()),
            "count": pa.array(self.count, type=pa.int64()),
            "qid": pa.array(self.qids(), type=pa.uint32()),
        })

    def write_parquet(self, path: str | Path) -> None:
        """Write atomically as Parquet (query, product_id, count, qid)."""
        import pyarrow.parquet as pq

        table = self.to_table()
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def read_parquet(cls, path: str | Path) -> ClickLog:
        return read_click_log(path)

    def summary(self) -> str:
        lines = [(f"{self.source or 'click log'}: {self.rows_read} rows read, {len(self)} loaded, "
                 f"{len(self.problems)} skipped, {self.total_clicks} clicks")]
        lines += [f"  {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)


_REQUIRED = ("query", "product_id")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")


def read_click_log(path: str | Path) -> ClickLog:
    """Read a click log from CSV/TSV, JSONL (``.jsonl``/``.ndjson``/``.json``) or Parquet.

    Columns ``query``, ``product_id`` and optionally ``count`` (absent: 1 per row); header
    names are matched case-insensitively. A bad row (empty query or product id, a query
    without any term, a count that is not a positive integer, wrong field count, invalid
    JSON or UTF-8) is skipped and recorded as a ``Problem`` naming file, line and field.
    A missing file or column, an unknown extension and a file with no rows raise
    ``InputError`` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: click log not found")
    suffix = path.suffix.lower()
    log = ClickLog(source=str(path))
    if suffix in (".csv", ".tsv", ".txt"):
        _read_csv(path, log, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson", ".json"):
        _read_jsonl(path, log)
    elif suffix in (".parquet", ".pq"):
        _read_parquet(path, log)
    else:
        raise InputError(
            f"{path}: unknown click-log format {suffix!r}; expected .csv, .tsv, .jsonl or .parquet"
        )
    log.count = np.asarray(log.count, dtype=np.int64)
    return log


class _Rows:
    """Accumulates validated rows into a ClickLog."""

    def __init__(self, log: ClickLog):
        self.log = log
        self.counts: list[int] = []

    def add(self, line: int, query: Any, product_id: Any, count: Any) -> None:
        log = self.log
        log.rows_read += 1
        file = log.source or ""
        for name, value in (("query", query), ("product_id", product_id), ("count", count)):
            if isinstance(value, str) and _SURROGATE_RE.search(value):
                log.problems.append(Problem(file, line, name, "not valid UTF-8"))
                return
        if not isinstance(query, str) or not query.strip():
            log.problems.append(Problem(file, line, "query", f"expected a non-empty text, got {query!r}"))
            return
        if not segment(query):
            log.problems.append(Problem(file, line, "query", f"no searchable term in {query!r}"))
            return
        pid = _product_id(product_id)
        if pid is None:
            log.problems.append(
                Problem(file, line, "product_id", f"expected a non-empty id, got {product_id!r}")
            )
            return
        n = _count(count)
        if n is None:
            log.problems.append(
                Problem(file, line, "count", f"expected a positive integer, got {count!r}")
            )
            return
        log.query.append(query.strip())
        log.product_id.append(pid)
        self.counts.append(n)

    def finish(self) -> None:
        self.log.count = np.asarray(self.counts, dtype=np.int64)


def _product_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


_MISSING_COUNT = object()


def _count(value: Any) -> int | None:
    if value is _MISSING_COUNT:
        return 1
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, (int, np.integer)) and value >= 1:
        return int(value)
    return None


def _missing_columns(path: Path, found: Iterable[str], what: str = "column") -> None:
    found = list(found)
    missing = [c for c in _REQUIRED if c not in found]
    if missing:
        raise InputError(
            f"{path}: missing {what}(s) {', '.join(missing)}; expected query, product_id "
            f"and optionally count, found {', '.join(found) or 'none'}"
        )


def _read_csv(path: Path, log: ClickLog, delimiter: str) -> None:
    rows = _Rows(log)
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header: list[str] | None = None
        previous_end = 0
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                log.rows_read += 1
                log.problems.append(Problem(str(path), reader.line_num, None, f"bad CSV: {exc}"))
                previous_end = reader.line_num
                continue
            line, previous_end = previous_end + 1, reader.line_num
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header = [cell.strip().casefold() for cell in record]
                _missing_columns(path, header)
                index = {name: header.index(name) for name in (*_REQUIRED, "count") if name in header}
                continue
            if len(record) != len(header):
                log.rows_read += 1
                log.problems.append(Problem(
                    str(path), line, None, f"expected {len(header)} fields, got {len(record)}"
                ))
                continue
            count = record[index["count"]] if "count" in index else _MISSING_COUNT
            rows.add(line, record[index["query"]], record[index["product_id"]], count)
    if header is None:
        raise InputError(f"{path}: empty file; expected a header with query, product_id[, count]")
    if log.rows_read == 0:
        raise InputError(f"{path}: no rows after the header")
    rows.finish()


def _read_jsonl(path: Path, log: ClickLog) -> None:
    rows = _Rows(log)
    seen_keys: set[str] = set()
    nonblank = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            nonblank += 1
            try:
                obj = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
            except UnicodeDecodeError:
                log.rows_read += 1
                log.problems.append(Problem(str(path), line_no, None, "not valid UTF-8"))
                continue
            except json.JSONDecodeError as exc:
                log.rows_read += 1
                log.problems.append(Problem(str(path), line_no, None, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                log.rows_read += 1
                log.problems.append(Problem(
                    str(path), line_no, None, f"expected a JSON object, got {type(obj).__name__}"
                ))
                continue
            obj = {str(k).casefold(): v for k, v in obj.items()}
            seen_keys.update(obj)
            missing = [k for k in _REQUIRED if k not in obj]
            if missing:
                log.rows_read += 1
                log.problems.append(Problem(str(path), line_no, missing[0], "missing key"))
                continue
            rows.add(line_no, obj["query"], obj["product_id"], obj.get("count", _MISSING_COUNT))
    if nonblank == 0:
        raise InputError(f"{path}: empty file; expected JSON lines with query, product_id[, count]")
    if not set(_REQUIRED) <= seen_keys and seen_keys:
        _missing_columns(path, sorted(seen_keys), what="key")
    rows.finish()


def _read_parquet(path: Path, log: ClickLog) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    names = {name.casefold(): name for name in schema.names}
    _missing_columns(path, names)
    wanted = [names[c] for c in (*_REQUIRED, "count") if c in names]
    try:
        table = pq.read_table(path, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    if table.num_rows == 0:
        raise InputError(f"{path}: no rows")
    queries = table.column(names["query"]).to_pylist()
    pids = table.column(names["product_id"]).to_pylist()
    counts = table.column(names["count"]).to_pylist() if "count" in names else None
    rows = _Rows(log)
    for i, (q, p) in enumerate(zip(queries, pids)):
        rows.add(i + 1, q, p, counts[i] if counts is not None else _MISSING_COUNT)
    rows.finish()


# --- sampling probabilities ----------------------------------------------------------------------


def sampling_probabilities(clicks: ClickLog | Iterable[MockQuery]) -> dict[str, float]:
    """Q(p): each product's share of the click mass of the training stream (sums to 1).

    Products without clicks are absent. This is the logQ correction's sampling probability:
    a training pair is drawn in proportion to its count.
    """
    if not isinstance(clicks, ClickLog):
        clicks = ClickLog.from_queries(clicks)
    mass: dict[str, int] = {}
    for pid, count in zip(clicks.product_id, clicks.count.tolist()):
        mass[pid] = mass.get(pid, 0) + count
    total = sum(mass.values())
    if total <= 0:
        return {}
    return {pid: m / total for pid, m in mass.items()}


# --- BEIR export -----------------------------------------------------------------------------------


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
    out_dir = Path(out_dir)
    chosen = list(queries)
    if max_queries is not None and len(chosen) > max_queries:
        rng = random.Random(_seeded_int(seed, "beir-sample"))
        keep = sorted(rng.sample(range(len(chosen)), max_queries))
        chosen = [chosen[i] for i in keep]
    index = RelevanceIndex(products)
    by_id = {p.id: p for p in index.products}
    query_lines: list[str] = []
    qrel_lines: list[str] = ["query-id\tcorpus-id\tscore\n"]
    for n, q in enumerate(chosen):
        qid = f"{id_prefix}{n}"
        source = by_id.get(q.product_id)
        colour = q.attributes.get("colour")
        only_in_image = bool(colour) and source is not None and not names_colour(source.title, colour)
        metadata = {
            "attributes": dict(q.attributes),
            "category": q.attributes.get("category"),
            "source_product": q.product_id,
            "colour_only_in_image": only_in_image,
        }
        query_lines.append(
            json.dumps({"_id": qid, "text": q.text, "metadata": metadata}, ensure_ascii=False) + "\n"
        )
        if source is not None:
            qrel_lines.append(f"{qid}\t{q.product_id}\t2\n")
        for pid in index.matching(q.attributes):
            if pid != q.product_id:
                qrel_lines.append(f"{qid}\t{pid}\t1\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "queries.jsonl", "".join(query_lines))
    atomic_write_text(out_dir / "qrels.tsv", "".join(qrel_lines))
    return len(chosen)


CORPUS_FILE = "corpus.jsonl"  # BEIR corpus file name, beside queries.jsonl and qrels.tsv


def corpus_text(products: Sequence[ProductLike]) -> str:
    """The BEIR ``corpus.jsonl`` of ``products``: one line a product with ``_id``, ``title``,
    ``text`` (brand, category and attributes as ``key: value`` pairs, for tools that embed
    title + text) and ``metadata`` (brand, category, attributes)."""
    lines = []
    for p in products:
        attributes = dict(getattr(p, "attributes", None) or {})
        facts = {"brand": p.brand, "category": p.category, **attributes}
        text = "; ".join(f"{key}: {value}" for key, value in facts.items() if value)
        record = {"_id": str(p.id), "title": p.title, "text": text,
                  "metadata": {"brand": p.brand, "category": p.category, "attributes": attributes}}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    return "".join(lines)


def export_corpus(products: Sequence[ProductLike], out_dirs: Sequence[str | Path]) -> int:
    """Write the BEIR ``corpus.jsonl`` into each of ``out_dirs`` (every eval split, so each split
    folder is a complete BEIR dataset); return the number of products."""
    text = corpus_text(products)
    for out_dir in out_dirs:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_dir) / CORPUS_FILE, text)
    return len(products)


# --- real click logs: split by query, BEIR export -----------------------------------------------


class ClickSplit(NamedTuple):
    """Unpacks as ``train, valid, test`` (ClickLogs)."""

    train: ClickLog
    valid: ClickLog
    test: ClickLog


def split_click_log(log: ClickLog, valid_fraction: float, test_fraction: float, seed: int) -> ClickSplit:
    """Split a real click log by query id (sorted terms), so no eval query is ever trained on.

    The distinct query ids are ranked by a seeded hash; the first ``valid_fraction`` of them
    go to valid, the next ``test_fraction`` to test, the rest to train. All rows of a query
    go to the same side.
    """
    qids = log.qids().tolist()
    distinct = sorted(set(qids))
    ranked = sorted(distinct, key=lambda q: (_seeded_int(seed, "click-split", str(q)), q))
    n_valid = round(len(ranked) * valid_fraction)
    n_test = round(len(ranked) * test_fraction)
    side = {q: "valid" for q in ranked[:n_valid]}
    side.update({q: "test" for q in ranked[n_valid : n_valid + n_test]})
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for row, q in enumerate(qids):
        parts[side.get(q, "train")].append(row)
    return ClickSplit(*(log.take(parts[name]) for name in ("train", "valid", "test")))


def export_click_beir(
    log: ClickLog,
    products: Sequence[ProductLike],
    out_dir: str | Path,
    max_queries: int | None = None,
    seed: int = 0,
    id_prefix: str = "q",
) -> int:
    """BEIR files for queries of a real click log; return the number of queries written.

    Each distinct query (by query id) becomes one query whose text is its most-clicked
    spelling. Every clicked product of a known id is judged with grade 2 (a click), so
    Recall@K is the papers' share of (query, clicked product) pairs found in the top K.
    ``metadata.category`` is the intent category from behaviour: the category holding the
    most clicks of the query (as the papers derive intents from statistics of behaviour);
    ``attributes`` is empty, since a real query's attributes are not known.
    """
    by_id = {p.id: p for p in products}
    clicks: dict[int, dict[str, int]] = {}
    spellings: dict[int, dict[str, int]] = {}
    for q, row in zip(log.qids().tolist(), log.rows()):
        if row.product_id not in by_id:
            continue
        per_product = clicks.setdefault(q, {})
        per_product[row.product_id] = per_product.get(row.product_id, 0) + row.count
        per_text = spellings.setdefault(q, {})
        per_text[row.query] = per_text.get(row.query, 0) + row.count
    chosen = sorted(clicks)
    if max_queries is not None and len(chosen) > max_queries:
        rng = random.Random(_seeded_int(seed, "beir-sample"))
        chosen = sorted(rng.sample(chosen, max_queries))
    query_lines: list[str] = []
    qrel_lines: list[str] = ["query-id\tcorpus-id\tscore\n"]
    for n, q in enumerate(chosen):
        qid = f"{id_prefix}{n}"
        text = max(spellings[q].items(), key=lambda kv: (kv[1], kv[0]))[0]
        category_mass: dict[str, int] = {}
        for pid, count in clicks[q].items():
            category = by_id[pid].category
            if category:
                category_mass[category] = category_mass.get(category, 0) + count
        top = max(clicks[q].items(), key=lambda kv: (kv[1], kv[0]))[0]
        metadata = {
            "attributes": {},
            "category": max(category_mass, key=category_mass.get) if category_mass else None,
            "source_product": top,
            "colour_only_in_image": False,
        }
        query_lines.append(
            json.dumps({"_id": qid, "text": text, "metadata": metadata}, ensure_ascii=False) + "\n"
        )
        qrel_lines.extend(f"{qid}\t{pid}\t2\n" for pid in sorted(clicks[q]))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "queries.jsonl", "".join(query_lines))
    atomic_write_text(out_dir / "qrels.tsv", "".join(qrel_lines))
    return len(chosen)
