"""Seeded-hash splits: products into train / held-out, mocked queries into train / valid /
test by intent, a real click log into train / valid / test by query id.

All three rank their keys with one helper (``seeded_sides``): each distinct key is ranked
by a 64-bit BLAKE2b hash of (seed, salt, key), and the first ranks go to the named sides in
order. The choice never depends on input order and is stable across processes and machines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from vlsearch.text import query_id, query_ids
from vlsearch.vocabulary import ProductLike

if TYPE_CHECKING:  # annotations only: the generator and the click log import this module
    from vlsearch.queries.clicklog import ClickLog
    from vlsearch.queries.generator import MockQuery

K = TypeVar("K", bound=Hashable)
TRAIN = "train"  # the side of every key that is not ranked onto another one


def seeded_int(seed: int, *parts: str) -> int:
    """A 64-bit integer from the seed and the parts: stable across processes and machines."""
    data = "\x1f".join((str(seed), *parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def seeded_sides(keys: Iterable[K], sizes: Mapping[str, int], seed: int, salt: str,
                 text: Callable[[K], str] = str) -> dict[K, str]:
    """Side of the ranked keys: the distinct ``keys`` sorted by (``seeded_int(seed, salt,
    text(key))``, key); the first ``sizes[name]`` of them go to ``name``, in the order of
    ``sizes``. Keys past the last size are absent (the caller's default side)."""
    ranked = sorted(set(keys), key=lambda key: (seeded_int(seed, salt, text(key)), key))
    side: dict[K, str] = {}
    start = 0
    for name, size in sizes.items():
        side.update({key: name for key in ranked[start : start + size]})
        start += size
    return side


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
    heldout = set(seeded_sides(ids, {"heldout": k}, seed, "product-split"))
    return ProductSplit([i for i in ids if i not in heldout], [i for i in ids if i in heldout])


class QuerySplit(NamedTuple):
    """Unpacks as ``train, valid, test`` (lists of MockQuery)."""

    train: list[MockQuery]
    valid: list[MockQuery]
    test: list[MockQuery]


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError("valid_fraction + test_fraction must be below 1")


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
    _check_fractions(valid_fraction, test_fraction)
    heldout = {str(i) for i in heldout_product_ids}
    kept = [q for q in queries if q.product_id not in heldout]
    intents = {q.intent for q in kept}
    n = len(intents)

    def count(fraction: float) -> int:
        k = round(n * fraction)
        return max(k, 1) if fraction > 0 and n >= 3 else k

    sizes = {"valid": count(valid_fraction), "test": count(test_fraction)}
    side = seeded_sides(intents, sizes, seed, "intent-split", repr)
    parts: dict[str, list[MockQuery]] = {TRAIN: [], "valid": [], "test": []}
    for q in kept:
        parts[side.get(q.intent, TRAIN)].append(q)
    valid_ids = set(query_ids(q.text for q in parts["valid"]).tolist())
    test = [q for q in parts["test"] if query_id(q.text) not in valid_ids]
    eval_ids = valid_ids | set(query_ids(q.text for q in test).tolist())
    train = [q for q in parts[TRAIN] if query_id(q.text) not in eval_ids]
    return QuerySplit(train, parts["valid"], test)


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
    n = len(set(qids))
    sizes = {"valid": round(n * valid_fraction), "test": round(n * test_fraction)}
    side = seeded_sides(qids, sizes, seed, "click-split")
    parts: dict[str, list[int]] = {TRAIN: [], "valid": [], "test": []}
    for row, q in enumerate(qids):
        parts[side.get(q, TRAIN)].append(row)
    return ClickSplit(*(log.take(parts[name]) for name in (TRAIN, "valid", "test")))
