"""Spelling correction on typo'd real queries: the share fixed, left alone or mis-corrected.

    .venv/bin/python benchmarks/spelling.py --catalog ../shared/data/fashion-products \
        --queries W/eval/test/queries.jsonl --clicks W/clicks/train.parquet \
        --out benchmarks/results/spelling.json

The vocabulary is built as ``vlsearch index`` builds it (every title of the catalog, the
query-understanding lexicon and, with ``--clicks``, the terms of the training click log).
The "clean" queries are the prepared test split, which holds the generator's own 3 % typos. Each query gets one typo in one word of at least
``--min-chars`` letters, drawn with a seeded RNG from four kinds a shopper makes: adjacent
transposition ("nkie"), a dropped letter ("shos"), a doubled or inserted letter and a
substitution by a keyboard neighbour ("shies"). A query is *fixed* when the corrected text
has exactly the clean query's terms, *missed* when the typo stays, *wrong* when it is
changed into something else. The clean queries are corrected too: the share changed
there is the false-correction rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
TYPO_KINDS = ("transpose", "drop", "insert", "substitute")


def _neighbours() -> dict[str, str]:
    out: dict[str, str] = {}
    for r, row in enumerate(KEYBOARD_ROWS):
        for c, ch in enumerate(row):
            near = [row[i] for i in (c - 1, c + 1) if 0 <= i < len(row)]
            for other in (r - 1, r + 1):
                if 0 <= other < len(KEYBOARD_ROWS):
                    near += [KEYBOARD_ROWS[other][i] for i in (c - 1, c, c + 1) if 0 <= i < len(KEYBOARD_ROWS[other])]
            out[ch] = "".join(near)
    return out


NEIGHBOURS = _neighbours()


def misspell(word: str, kind: str, rng: random.Random) -> str:
    """One typo of ``kind`` in ``word`` (never the first letter, as shoppers rarely get it wrong)."""
    i = rng.randrange(1, len(word) - 1) if len(word) > 2 else 1
    if kind == "transpose":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:] if word[i] != word[i + 1] else word[:i] + word[i + 1:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    if kind == "insert":
        return word[:i] + rng.choice(NEIGHBOURS.get(word[i], word[i]) + word[i]) + word[i:]
    return word[:i] + rng.choice(NEIGHBOURS.get(word[i], "e")) + word[i + 1:]


def main(argv: list[str] | None = None) -> int:
    from vlsearch.catalog import load_catalog
    from vlsearch.evaluation import read_beir_queries
    from vlsearch.index.spelling import SpellCorrector, build_vocabulary
    from vlsearch.index.understanding import build_lexicon
    from vlsearch.text import segment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", required=True, help="catalog the vocabulary is built from")
    parser.add_argument("--queries", required=True, help="BEIR queries.jsonl of clean queries")
    parser.add_argument("--out", default="benchmarks/results/spelling.json")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--min-chars", type=int, default=4, help="only words this long get a typo")
    parser.add_argument("--clicks", help="training click log (W/clicks/train.parquet): its query terms "
                        "join the vocabulary as `vlsearch index` does with index.spell_min_query_count > 0")
    parser.add_argument("--min-query-count", type=int, default=3,
                        help="with --clicks: distinct queries a term needs to join the vocabulary")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()
    started = time.perf_counter()
    products = load_catalog(args.catalog).products
    logged: list[str] = []
    if args.clicks:
        import pyarrow.parquet as pq

        logged = pq.read_table(args.clicks, columns=["query"]).column("query").to_pylist()
    speller = SpellCorrector(build_vocabulary([p.title for p in products], build_lexicon(products).phrases,
                                              logged, args.min_query_count if logged else 0))
    build_s = time.perf_counter() - started
    rng = random.Random(args.seed)
    counts = {kind: {"fixed": 0, "missed": 0, "wrong": 0} for kind in TYPO_KINDS}
    examples: list[dict] = []
    clean_changed = 0
    queries = [q.text for q in read_beir_queries(args.queries)]
    timed = 0.0
    for text in queries:
        terms = segment(text)
        clean = speller.correct(text)
        clean_changed += clean.changed
        candidates = [i for i, t in enumerate(terms) if len(t) >= args.min_chars and t.isalpha()]
        if not candidates:
            continue
        i, kind = rng.choice(candidates), rng.choice(TYPO_KINDS)
        typo_terms = list(terms)
        typo_terms[i] = misspell(terms[i], kind, rng)
        typo = " ".join(typo_terms)
        t = time.perf_counter()
        fixed = speller.correct(typo)
        timed += time.perf_counter() - t
        outcome = ("fixed" if segment(fixed.text) == terms else "missed" if fixed.text == typo else "wrong")
        counts[kind][outcome] += 1
        if len(examples) < 40 and outcome != "fixed":
            examples.append({"clean": text, "typo": typo, "corrected": fixed.text, "outcome": outcome})
    total = {k: sum(c[k] for c in counts.values()) for k in ("fixed", "missed", "wrong")}
    n = sum(total.values())
    result = {
        "catalog_products": len(products), "vocabulary_terms": len(speller.vocabulary),
        "catalog_load_and_vocabulary_s": round(build_s, 2), "queries": len(queries), "typod_queries": n,
        "share_fixed": total["fixed"] / n, "share_missed": total["missed"] / n, "share_wrong": total["wrong"] / n,
        "by_kind": {k: {o: v / max(1, sum(c.values())) for o, v in c.items()} for k, c in counts.items()},
        "clean_queries_changed": clean_changed / max(1, len(queries)),
        "correct_us_per_query": 1e6 * timed / max(1, n),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "examples_not_fixed": examples, "command": " ".join(sys.argv),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "examples_not_fixed"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
