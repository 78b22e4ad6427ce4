"""Issue 10: what a logged query (qid-table hit) costs when its constraints allow fewer
products than the page asks for, so the short-list fill runs: the fill encoding the query
again (``encode``: no stored query vectors), searching live from the stored embedding
(``live``: ``ServeConfig.qid_fill = False``) and served from the fill lists stored with the
qid table (``stored``: the default), beside a hit without fill and a miss; the cases
interleaved in one run, one thread, ``k=100``. Per case: latency and the median of the
engine's own stage timings; how often the stored fill equals the live one (top 100 ids and
relaxed flags). The figures from before the fill lists were stored (the run of commit
d9ff721) are kept under ``before``.
Results: ``benchmarks/results/issue-10/hit_fill.json``.

    OMP_NUM_THREADS=1 python benchmarks/hit_fill.py --index work/live-sub-index --workdir work/live-sub
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import common

STAGES = ("constraints_ms", "embedding_ms", "lexical_ms", "fill_ms")


def _before(out: Path) -> dict | None:
    """The figures from before the fill lists were stored: the file being replaced, or its
    own ``before`` when that file is already a run of this version of the benchmark."""
    if not out.is_file():
        return None
    old = json.loads(out.read_text())
    return old.get("before") or old


def _engines(index: str):
    from vlsearch.config import ServeConfig
    from vlsearch.serving.engine import Engine

    stored = Engine.open(index)
    live = Engine.open(index, ServeConfig(qid_fill=False))
    encode = Engine.open(index, ServeConfig(qid_fill=False))
    encode._state.query_vectors = None  # the request-time encode of the fill, as before c76d75f
    return stored, live, encode


def _same(a, b) -> bool:
    return [(h.product_id, h.relaxed) for h in a.hits] == [(h.product_id, h.relaxed) for h in b.hits]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True)
    p.add_argument("--workdir", required=True, help="its eval/test queries are the misses")
    p.add_argument("--queries", type=int, default=150, help="queries per case")
    p.add_argument("--out", default=str(common.RESULTS_DIR / "issue-10" / "hit_fill.json"))
    args = p.parse_args(argv)

    import torch

    from vlsearch.queries.beir import read_beir_queries

    torch.set_num_threads(1)
    before = _before(Path(args.out))
    stored, live, encode = _engines(args.index)
    state = stored._state
    logged = list(dict.fromkeys(state.qid.queries))
    random.Random(0).shuffle(logged)
    pool = logged[:10 * args.queries]
    answered = {q: stored.search(q, k=100) for q in pool}
    filled = [q for q, r in answered.items() if r.qid_hit and not r.relaxed and r.fill_relaxed][:args.queries]
    plain = [q for q, r in answered.items() if r.qid_hit and not r.fill_relaxed][:args.queries]
    tests = read_beir_queries(Path(args.workdir) / "eval" / "test" / "queries.jsonl")
    misses = [q.text for q in tests if state.qid.position(state.query_id(q.text)) is None][:args.queries]
    same = sum(_same(stored.search(q, k=100), live.search(q, k=100)) for q in filled)
    cases = {"hit_fill_encode": (encode, filled), "hit_fill_live": (live, filled),
             "hit_fill_stored": (stored, filled), "hit_no_fill": (stored, plain), "miss": (stored, misses)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    stages: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STAGES} for name in cases}
    load_start = common.load_average()
    for rep in range(2):
        for i in range(max(len(qs) for _, qs in cases.values())):
            order = [(name, engine, qs[i]) for name, (engine, qs) in cases.items() if i < len(qs)]
            random.Random(i + 1000 * rep).shuffle(order)
            for name, engine, q in order:
                t = time.perf_counter()
                res = engine.search(q, k=100)
                times[name].append(time.perf_counter() - t)
                for s in STAGES:
                    stages[name][s].append(res.timings.get(s, 0.0))
    results = {"benchmark": "hit_fill", "command": " ".join(["python", *sys.argv]),
               "machine": common.machine_info(), "products": stored.n_products, "qid_entries": len(state.qid),
               "fill_lists": len(state.fill) if state.fill is not None else 0,
               "encoder": type(state.encoder).__name__,
               "latency": {name: common.summarize_ms(v) for name, v in times.items()},
               "stage_p50_ms": {name: {s: round(statistics.median(v), 3) for s, v in by.items()}
                                for name, by in stages.items()},
               "p50_ratio_stored_vs_live": round(statistics.median(times["hit_fill_live"])
                                                 / statistics.median(times["hit_fill_stored"]), 2),
               "filled_same_top100_stored_live": f"{same}/{len(filled)}",
               "load_average": {"start": load_start, "end": common.load_average()},
               "before": before}
    common.write_json(Path(args.out), results)
    common.log(str({name: results["latency"][name]["p50_ms"] for name in times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
