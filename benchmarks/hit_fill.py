"""Issue 10: what a logged query (qid-table hit) costs when its constraints allow fewer
products than the page asks for, so the short-list fill runs: before (the fill encodes the
query again) and after (it searches from the embedding stored with the qid table), beside a
hit without fill and a miss; the cases interleaved in one run, one thread, ``k=100``.
Results: ``benchmarks/results/issue-10/hit_fill.json``.

    python benchmarks/hit_fill.py --index work/live-sub-index --workdir work/live-sub
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--workdir", required=True, help="its eval/test queries are the misses")
    p.add_argument("--queries", type=int, default=150, help="queries per case")
    p.add_argument("--out", default=str(common.RESULTS_DIR / "issue-10" / "hit_fill.json"))
    args = p.parse_args(argv)

    import torch

    from vlsearch.queries.beir import read_beir_queries
    from vlsearch.serving.engine import Engine

    torch.set_num_threads(1)
    after = Engine.open(args.index)
    before = Engine.open(args.index)
    before._state.query_vectors = None  # the request-time encode of the fill, as before
    qid = after._state.qid
    logged = list(dict.fromkeys(qid.queries))
    random.Random(0).shuffle(logged)
    pool = logged[:10 * args.queries]
    filled = [q for q in pool if after.search(q, k=100).fill_relaxed][:args.queries]
    plain = [q for q in pool if after.search(q, k=100).qid_hit and not after.search(q, k=100).fill_relaxed]
    plain = plain[:args.queries]
    tests = read_beir_queries(Path(args.workdir) / "eval" / "test" / "queries.jsonl")
    misses = [q.text for q in tests if qid.position(after._state.query_id(q.text)) is None][:args.queries]
    times: dict[str, list[float]] = {"hit_fill_before": [], "hit_fill_after": [], "hit_no_fill": [], "miss": []}
    same = sum([h.product_id for h in before.search(q, k=100).hits] == [h.product_id for h in after.search(q, k=100).hits]
               for q in filled)
    for rep in range(2):
        for i in range(max(len(filled), len(plain), len(misses))):
            cases = [(name, engine, qs[i]) for name, engine, qs in (
                ("hit_fill_before", before, filled), ("hit_fill_after", after, filled),
                ("hit_no_fill", after, plain), ("miss", after, misses)) if i < len(qs)]
            random.Random(i + 1000 * rep).shuffle(cases)
            for name, engine, q in cases:
                t = time.perf_counter()
                engine.search(q, k=100)
                times[name].append(time.perf_counter() - t)
    results = {"benchmark": "hit_fill", "command": " ".join(["python", *sys.argv]),
               "machine": common.machine_info(), "products": after.n_products, "qid_entries": len(qid),
               "encoder": type(after._state.encoder).__name__,
               "latency": {name: common.summarize_ms(v) for name, v in times.items()},
               "filled_same_top100_before_after": f"{same}/{len(filled)}",
               "load_average": common.load_average()}
    common.write_json(Path(args.out), results)
    common.log(str({name: results["latency"][name]["p50_ms"] for name in times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
