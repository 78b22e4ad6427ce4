"""Constraint terms mined from evidence: the catalog's own titles and the click log.

For every title term and short phrase (runs of up to ``mine_max_phrase_terms`` terms of
:func:`vlsearch.index.understanding.terms_of`, i.e. :func:`vlsearch.text.segment`, so jieba
for CJK; each term folded to its shortest English inflection, so "sneakers" and "sneaker"
pool their evidence) two distributions over each mined field's values are counted:

* **catalog**: the values of the products whose titles contain the phrase (one per product);
* **log**: the values of the products clicked for logged queries containing the phrase,
  weighted by click count.

Per source and field the *value set* is the smallest set of most frequent values whose share
reaches ``mine_min_confidence``; the source is *confident* when that set has at most
``mine_max_values`` values and *supported* when its weight reaches ``mine_min_support``.

Each phrase constrains at most one field: among the fields where some source is confident,
a hard decision (below) before a soft one, then the one with the largest lift (share of the value set over that set's share of the whole
catalog, or of all clicks when the catalog has no support); a lift under ``mine_min_lift``
means the phrase says nothing the catalog's base rate does not ("cotton" → usage Casual,
which most products are anyway) and yields no constraint. The decision on that field:

* both sources supported and confident, and the union U of their value sets has at most
  ``mine_max_values`` values: one value → **hard**; several ("sneakers": Casual Shoes from
  the titles, Sports Shoes from the clicks, or both in each) → **union** (a hard constraint
  on U) or **soft** (a preference), as ``mine_ambiguous`` says. A disagreement between the
  sources is thus resolved by their union, as long as the union stays small.
* both supported but one not confident, or the union too large: **soft** on the values of
  the confident source(s) (a conflict is never a filter).
* one source supported and confident, the other silent (below support): **soft**, unless
  the one source is near-certain (share >= ``mine_single_source_confidence``: "wristwatch"
  in the log, never in a title) or the other source is empty altogether (no click log, or
  an empty catalog; a catalog without a log still gets its confident terms): then as above.
* fields outside ``mine_hard_fields`` (default: gender) are only ever **soft**: gender
  words are catalog vocabulary already, and a mined gender is implied, not named ("polo" →
  Men, "ethnic" → Women: true of most products, wrong for the shopper who typed it).

Multi-term phrases are kept only when they say more than their terms do and swallow no
exact catalog value of another field: a phrase whose decision its single terms already give
("nike men", "for men") or with a term that is another field's catalog value ("black tee":
colour) is dropped; "t shirt" (Tshirts, while "shirt" alone is Shirts) and "running shoes"
(Sports Shoes, while "running" alone is the usage Sports) stay.

Category evidence from titles counts a phrase only where it is the title's head, not a
modifier of a later word naming the product's category ("Sneakers Black Socks", "Trainer
Sports Shoes": product names are head-final), when ``known`` (the exact catalog phrases)
is given.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from vlsearch.config import IndexConfig
from vlsearch.index.understanding import fold, terms_of
from vlsearch.vocabulary import product_value

MINED_FIELDS = ("brand", "category", "colour", "gender", "usage")  # fields phrases are mined for
KINDS = ("hard", "union", "soft")


@dataclass(frozen=True)
class MinedTerm:
    """One mined phrase: the field it constrains, the values and how (``kind``)."""

    phrase: tuple[str, ...]
    field: str
    values: tuple[str, ...]
    kind: str  # hard (one value) | union (hard, several values) | soft (a preference)
    reason: str  # agree | union | conflict | single-source | one-source-only
    catalog_support: int  # products whose titles contain the phrase (with a value for field)
    catalog_confidence: float  # share of those products on ``values``
    log_support: int  # clicks of logged queries containing the phrase (with a value)
    log_confidence: float  # share of those clicks on ``values``
    lift: float  # share of ``values`` over their base rate

    @property
    def hard(self) -> bool:
        return self.kind in ("hard", "union")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["phrase"] = " ".join(self.phrase)
        out["values"] = list(self.values)
        return out


def phrases_of(terms: Sequence[str], max_terms: int) -> set[tuple[str, ...]]:
    """Every run of 1..max_terms consecutive terms, folded (``understanding.fold``)."""
    terms = fold(terms)
    return {tuple(terms[i:i + n]) for n in range(1, max_terms + 1) for i in range(len(terms) - n + 1)}


Weights = dict[str, int]  # value -> weight


@dataclass
class _Source:
    """Per phrase and field, the weight of each value; per field, the base rate of each value."""

    counts: dict[tuple[str, ...], dict[str, Weights]]
    base: dict[str, Weights]

    @property
    def empty(self) -> bool:
        return not any(self.base.values())


def _count(items: Iterable[tuple[Iterable[tuple[str, ...]], Iterable[tuple[str, str, int]]]],
           keep: set[tuple[str, ...]]) -> _Source:
    """Sum (field, value, weight) triples per phrase (those in ``keep``) and overall."""
    counts: dict[tuple[str, ...], dict[str, Weights]] = {}
    base: dict[str, Weights] = {f: {} for f in MINED_FIELDS}
    for phrases, values in items:
        for fname, value, w in values:
            slot = base[fname]
            slot[value] = slot.get(value, 0) + w
        for phrase in phrases:
            if phrase not in keep:
                continue
            per_field = counts.setdefault(phrase, {})
            for fname, value, w in values:
                slot = per_field.setdefault(fname, {})
                slot[value] = slot.get(value, 0) + w
    return _Source(counts=counts, base=base)


def _values(product) -> tuple[tuple[str, str], ...]:
    """(field, canonical value) of each mined field the product has."""
    return tuple((f, v) for f in MINED_FIELDS if (v := product_value(product, f)))


@dataclass(frozen=True)
class _Verdict:
    support: int
    values: tuple[str, ...]  # the value set (empty: no set small enough)
    confidence: float  # share of the value set


def _verdict(counter: Weights | None, config: IndexConfig) -> _Verdict:
    if not counter:
        return _Verdict(0, (), 0.0)
    support = sum(counter.values())
    chosen, covered = [], 0
    for value, weight in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
        if covered / support >= config.mine_min_confidence:
            break
        chosen.append(value)
        covered += weight
    if len(chosen) > config.mine_max_values:
        return _Verdict(support, (), 0.0)
    return _Verdict(support, tuple(sorted(chosen)), covered / support)


def _share(counter: Weights | None, values: Iterable[str]) -> float:
    if not counter:
        return 0.0
    total = sum(counter.values())
    return sum(counter.get(v, 0) for v in values) / total if total else 0.0


def _decide(phrase, fname, cat: _Source, log: _Source, config: IndexConfig) -> MinedTerm | None:
    c_counts = cat.counts.get(phrase, {}).get(fname)
    l_counts = log.counts.get(phrase, {}).get(fname)
    vc, vl = _verdict(c_counts, config), _verdict(l_counts, config)
    c_ok, l_ok = vc.support >= config.mine_min_support, vl.support >= config.mine_min_support
    c_conf, l_conf = c_ok and bool(vc.values), l_ok and bool(vl.values)
    if not (c_conf or l_conf):
        return None
    union = tuple(sorted(set(vc.values if c_conf else ()) | set(vl.values if l_conf else ())))
    if c_conf and l_conf:
        if len(union) <= config.mine_max_values:
            kind = "hard" if len(union) == 1 else ("union" if config.mine_ambiguous == "union" else "soft")
            reason = "agree" if vc.values == vl.values else "union"
        else:
            kind, reason = "soft", "conflict"
    elif (c_conf and not l_ok and log.empty) or (l_conf and not c_ok and cat.empty):
        kind = "hard" if len(union) == 1 else ("union" if config.mine_ambiguous == "union" else "soft")
        reason = "one-source-only"
    elif c_ok and l_ok:
        kind, reason = "soft", "conflict"  # supported in both, confident in one only
    elif max(vc.confidence if c_conf else 0.0, vl.confidence if l_conf else 0.0) \
            >= config.mine_single_source_confidence:
        kind = "hard" if len(union) == 1 else ("union" if config.mine_ambiguous == "union" else "soft")
        reason = "single-source"  # the other source is silent and this one near-certain
    else:
        kind, reason = "soft", "single-source"
    if kind != "soft" and fname not in config.mine_hard_fields:
        kind = "soft"
    # lift against the base rate of the source that decides (the catalog when it has support)
    ref = cat if c_ok else log
    counts = c_counts if c_ok else l_counts
    base = _share(ref.base[fname], union)
    lift = _share(counts, union) / base if base else 0.0
    if lift < config.mine_min_lift:
        return None
    return MinedTerm(phrase=phrase, field=fname, values=union, kind=kind, reason=reason,
                     catalog_support=vc.support, catalog_confidence=round(_share(c_counts, union), 4),
                     log_support=vl.support, log_confidence=round(_share(l_counts, union), 4),
                     lift=round(lift, 3))


def mine_terms(
    products: Sequence,
    clicks: Iterable[tuple[str, str, int]] | None = None,
    config: IndexConfig | None = None,
    known: Mapping[tuple[str, ...], Mapping[str, set[str]]] | None = None,
) -> list[MinedTerm]:
    """Mine constraint phrases from ``products`` (their titles) and ``clicks`` ((query,
    product id, count) rows; None or empty: catalog only). Phrases in ``known`` (the exact
    catalog values) are skipped: those stay as the catalog writes them. Sorted by phrase."""
    config = config or IndexConfig()
    known = _fold_known(known or {})
    values = [_values(p) for p in products]
    cat = _catalog_evidence(products, values, known, config)
    log = _log_evidence(products, values, clicks or (), config)
    return _decide_phrases(cat, log, known, config)


def _fold_known(known: Mapping[tuple[str, ...], Mapping[str, set[str]]]) -> dict[tuple[str, ...], dict[str, set[str]]]:
    folded: dict[tuple[str, ...], dict[str, set[str]]] = defaultdict(dict)
    for phrase, fields_ in known.items():
        for fname, values in fields_.items():
            folded[fold(phrase)].setdefault(fname, set()).update(values)
    return folded


def _catalog_evidence(products: Sequence, values: list, known, config: IndexConfig):
    """Value counts per title phrase over the products whose titles hold it (category: only
    the phrases heading the title, see :func:`_heads`)."""
    n = config.mine_max_phrase_terms
    title_terms = [fold(terms_of(p.title or "")) for p in products]
    title_phrases = [phrases_of(t, n) for t in title_terms]
    frequent = Counter(ph for phrases in title_phrases for ph in phrases)

    def items():
        for terms, phrases, vals in zip(title_terms, title_phrases, values):
            category = next((v for f, v in vals if f == "category"), None)
            yield phrases, [(f, v, 1) for f, v in vals if f != "category"]
            if category is not None:
                yield _heads(terms, phrases, category, known, n), [("category", category, 1)]

    return _count(items(), {ph for ph, c in frequent.items() if c >= config.mine_min_support})


def _log_evidence(products: Sequence, values: list, clicks: Iterable[tuple[str, str, int]], config: IndexConfig):
    """Value counts per query phrase over the clicked products of the queries holding it,
    weighted by click count."""
    n = config.mine_max_phrase_terms
    row_of = {str(p.id): i for i, p in enumerate(products)}
    per_query: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
    clicks_of: Counter = Counter()
    for query, product_id, count in clicks:
        row = row_of.get(str(product_id))
        if row is None or not query:
            continue
        w = int(count or 1)
        slot = per_query[query]
        clicks_of[query] += w
        for fv in values[row]:
            slot[fv] = slot.get(fv, 0) + w
    query_phrases = {q: phrases_of(terms_of(q), n) for q in per_query}
    weight: Counter = Counter()
    for q, phrases in query_phrases.items():
        for ph in phrases:
            weight[ph] += clicks_of[q]
    return _count(((query_phrases[q], [(f, v, w) for (f, v), w in fv.items()]) for q, fv in per_query.items()),
                  {ph for ph, w in weight.items() if w >= config.mine_min_support})


def _decide_phrases(cat, log, known, config: IndexConfig) -> list[MinedTerm]:
    """The best field decision per phrase (hard beats soft, then the larger lift); a longer
    phrase is kept only when hard and not implied by its parts."""
    decided: dict[tuple[str, ...], MinedTerm] = {}
    for phrase in sorted(set(cat.counts) | set(log.counts), key=lambda p: (len(p), p)):
        if phrase in known:
            continue
        best = None
        for fname in MINED_FIELDS:
            term = _decide(phrase, fname, cat, log, config)
            if term is not None and (best is None or (term.hard, term.lift) > (best.hard, best.lift)):
                best = term
        if best is None:
            continue
        if len(phrase) > 1 and (not best.hard or _implied(phrase, best, decided, known)):
            continue
        decided[phrase] = best
    return [decided[p] for p in sorted(decided)]


def _heads(terms, phrases, category: str, known, n: int) -> set[tuple[str, ...]]:
    """The phrases of a title not followed by a known phrase naming ``category``."""
    last = -1  # start of the last phrase naming the product's category
    for i in range(len(terms)):
        for length in range(1, n + 1):
            if category in known.get(tuple(terms[i:i + length]), {}).get("category", ()):
                last = i
    if last < 0:
        return phrases
    modifiers = {tuple(terms[i:j]) for i in range(last) for j in range(i + 1, min(i + n, last) + 1)}
    tail = {tuple(terms[i:i + length]) for i in range(last, len(terms)) for length in range(1, n + 1)
            if i + length <= len(terms)}
    return {ph for ph in phrases if ph not in modifiers or ph in tail}


def _implied(phrase, term: MinedTerm, decided, known) -> bool:
    """True when a multi-term phrase should not be kept: one of its single terms is an exact
    catalog value of another field ("black tee" would swallow the colour), or its single
    terms already constrain its field to (within) its values ("nike men", "for men")."""
    values: set[str] = set()
    for word in phrase:
        one = (word,)
        if any(f != term.field for f in known.get(one, {})):
            return True  # an exact catalog value of another field: never swallowed
        fields_ = {f: set(v) for f, v in known.get(one, {}).items()}
        if one in decided and decided[one].hard:
            fields_.setdefault(decided[one].field, set()).update(decided[one].values)
        values |= fields_.get(term.field, set())
    return bool(values) and values <= set(term.values)
