"""Live catalog update under load: a delta of changed and deleted real products applied by
`vlsearch update` (its own process) while a search loop runs, against the export rate of the
same products.

A fresh copy of the real index is made under ``--work``. The delta: ``--changed`` products
(random, seeded) get a changed title (and half of them another season), written with their
images (hard links) as a JSONL catalog; ``--deleted`` other products go into a delete list.
A thread searches continuously (unlogged test queries, logged queries, and the titles of the
products being changed and deleted) while the update runs in a subprocess. Afterwards every
change must be visible: a changed product's new title through ``/products`` and found by its
new title, a deleted product gone from ``/products`` and from the results of its own title
on every channel. Throughput: the update's products per second, beside the export rate of
the same products (the encoder as `vlsearch index` runs it: cached image features; and from
the image files; and the update's own encoding path, which takes unchanged images' features
from the work directory's cache). ``--backend milvus`` rebuilds the copy on a milvus-lite
server first. Results: ``benchmarks/results/live_update.json`` (``--results-name``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
import numpy as np


def fresh_copy(index_dir: Path, out: Path) -> Path:
    """``out`` as an index directory whose current version is a copy of ``index_dir``'s."""
    from vlsearch.index.builder import CURRENT, VERSIONS, current_version, publish

    version = current_version(index_dir)
    shutil.rmtree(out, ignore_errors=True)
    (out / VERSIONS).mkdir(parents=True)
    shutil.copytree(version, out / VERSIONS / version.name, copy_function=os.link
                    if os.stat(version).st_dev == os.stat(out).st_dev else shutil.copy2)
    publish(out, out / VERSIONS / version.name)
    assert (out / CURRENT).is_symlink()
    return out


def build_from_export(vectors_path: Path, workdir: Path, model: Path, out: Path, qid_queries: int, seed: int,
                      config=None, queries: list[str] | None = None) -> Path:
    """An index of the work directory's products from already exported vectors (no encoding),
    its qid table over ``qid_queries`` distinct logged queries (0: all); returns ``out``.
    ``config``: the IndexConfig (default: the defaults, FAISS)."""
    from vlsearch.config import IndexConfig
    from vlsearch.index.builder import build_index_from_parts
    from vlsearch.model import Retriever
    from vlsearch.text import query_id
    from vlsearch.workdir import Workdir

    if (out / "current").is_symlink():
        return out
    wd = Workdir.open(workdir)
    products = wd.products()
    vectors = np.load(vectors_path, mmap_mode="r")
    if len(vectors) != len(products):
        raise SystemExit(f"{vectors_path}: {len(vectors)} vectors for {len(products)} products")
    queries = queries or list(dict.fromkeys(wd.clicks().column("query").to_pylist()))
    if qid_queries and len(queries) > qid_queries:
        queries = random.Random(seed).sample(queries, qid_queries)
    retriever = Retriever.load(model)
    build_index_from_parts(out, products, lambda a, b: np.asarray(vectors[a:b]), retriever.encode_queries,
                           queries, [query_id(q) for q in queries], config=config or IndexConfig(),
                           model_dir=model, seed=seed, progress=False, retriever=retriever,
                           workdir=str(workdir.resolve()))
    return out


def milvus_copy(index_dir: Path, workdir: Path, work: Path, seed: int, results: dict) -> Path:
    """``work/index-milvus``: ``index_dir``'s current version rebuilt on the Milvus backend
    (a milvus-lite gRPC server on a local port, kept running in this process) from its
    exported vectors, with the same qid-table queries."""
    import dataclasses
    import socket

    from milvus_lite.adapter.grpc.server import start_server_in_thread

    from vlsearch.config import IndexConfig
    from vlsearch.index.builder import current_version
    from vlsearch.index.qid_table import QidTable
    from vlsearch.io import read_json

    version = current_version(index_dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shutil.rmtree(work / "milvus-data", ignore_errors=True)
    results["_server"] = start_server_in_thread(str(work / "milvus-data"), port=port)[:2]  # kept referenced
    manifest = read_json(version / "manifest.json")
    config = dataclasses.replace(IndexConfig(**{k: v for k, v in manifest["config"].items()
                                                if k in IndexConfig.__dataclass_fields__}),
                                 backend="milvus", milvus_uri=f"http://127.0.0.1:{port}", milvus_prefix="live")
    queries = list(QidTable.load(version / "qid").queries)
    out = work / "index-milvus"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    build_from_export(version / "vectors.npy", workdir, version / "model", out, 0, seed, config,
                      queries=queries)
    results["milvus_index_built_s"] = round(time.perf_counter() - t, 1)
    results["milvus"] = {"uri": "milvus-lite gRPC server on a local port", "kind": config.kind}
    return out


def write_delta(engine, out: Path, n_changed: int, n_deleted: int, seed: int):
    """The delta catalog (JSONL + hard-linked images) and delete list; returns what changed."""
    rng = random.Random(seed)
    state = engine._state
    live = [i for i in range(len(state.ids)) if state.live[i]]
    picked = rng.sample(live, n_changed + n_deleted)
    changed_rows, deleted_rows = picked[:n_changed], picked[n_changed:]
    images = out / "images"
    shutil.rmtree(out, ignore_errors=True)
    images.mkdir(parents=True)
    lines, changes = [], {}
    for k, row in enumerate(changed_rows):
        p = engine.product(state.ids[row])
        attrs = dict(p["attributes"])
        if k % 2:
            attrs["season"] = "Winter" if attrs.get("season") != "Winter" else "Summer"
        record = {"id": p["id"], "title": p["title"] + " Limited Edition", "brand": p["brand"],
                  "category": p["category"], **attrs}
        src = state.image_paths[row]
        if src and Path(src).is_file():
            dst = images / f"{p['id']}{Path(src).suffix}"
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            record["image"] = f"images/{dst.name}"
        lines.append(json.dumps(record, ensure_ascii=False))
        changes[p["id"]] = record["title"]
    (out / "delta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    deleted = [state.ids[r] for r in deleted_rows]
    (out / "delete.txt").write_text("\n".join(deleted) + "\n", encoding="utf-8")
    return changes, deleted, changed_rows


def search_loop(engine, queries: list[str], stop: threading.Event, stats: dict) -> None:
    i = 0
    while not stop.is_set():
        t = time.perf_counter()
        try:
            engine.search(queries[i % len(queries)], k=100)
            stats["latency"].append(time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001 - the benchmark counts every failure
            stats["errors"].append(f"{type(exc).__name__}: {exc}")
        stats["versions"].add(engine.version)
        i += 1


def export_rates(workdir: Path, index_version: Path, rows: list[int], batch: int) -> dict[str, Any]:
    """Products/s of the export path on the changed products (cached features, and images)."""
    from vlsearch.model import Retriever
    from vlsearch.workdir import Workdir

    wd = Workdir.open(workdir)
    products = wd.products()
    retriever = Retriever.load(index_version / "model")
    features = wd.features()
    order = sorted(rows)
    items = [products[r] for r in order]
    t = time.perf_counter()
    for lo in range(0, len(order), batch):
        sel = np.asarray(order[lo:lo + batch])
        retriever.encode_products(items[lo:lo + batch], patches=features.patches(sel),
                                  has_image=features.has_image(sel))
    cached = time.perf_counter() - t
    t = time.perf_counter()
    for lo in range(0, len(order), batch):
        retriever.encode_products(items[lo:lo + batch])
    images = time.perf_counter() - t
    from vlsearch.index.image_reuse import CachedImages, encode_products

    reuse = CachedImages.open(workdir)
    t = time.perf_counter()
    for lo in range(0, len(order), batch):
        encode_products(retriever, items[lo:lo + batch], reuse)
    update_path = time.perf_counter() - t
    return {"products": len(order), "cached_features_s": round(cached, 2),
            "cached_features_per_s": round(len(order) / cached, 1),
            "update_encoder_s": round(update_path, 2), "update_encoder_per_s": round(len(order) / update_path, 1),
            "update_encoder_note": "the update's encoding path (index.image_reuse: cache lookup by product "
                                   "and image file) on the same products, measured here beside the export",
            "from_images_s": round(images, 2), "from_images_per_s": round(len(order) / images, 1)}


def export_rates_process(workdir: Path, version: Path, rows: list[int], env: dict) -> dict[str, Any]:
    """``export_rates`` in its own process, as the update ran (so both share the machine with
    the search loop alike)."""
    code = ("import json, sys, torch; torch.set_num_threads(1); sys.path.insert(0, sys.argv[1]); "
            "import live_update as lu; from pathlib import Path; from vlsearch.config import IndexConfig; "
            "print(json.dumps(lu.export_rates(Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]), "
            "IndexConfig().export_batch_size)))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(workdir), str(version),
                           json.dumps([int(r) for r in rows])], check=True, env=env, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def before_figures(path: Path) -> dict[str, Any]:
    """The update and export figures of an earlier results file (kept beside the new ones)."""
    old = json.loads(path.read_text())
    update = old.get("update", {})
    return {"file": path.name, "git_commit": old.get("machine", {}).get("git_commit"), "started": old.get("started"),
            "products_per_s": update.get("products_per_s"), "library_s": update.get("library_s"),
            "in_process_seconds": update.get("in_process_seconds"),
            "overhead_beyond_encoding_s": update.get("overhead_beyond_encoding_s"),
            "export_cached_features_per_s": old.get("export_same_products", {}).get("cached_features_per_s"),
            "update_vs_export": old.get("update_vs_export"), "load_average": old.get("load_average"),
            "update_stdout": old.get("update_stdout")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=common.default_shared(), help="shared folder (recorded only)")
    p.add_argument("--index", default=str(common.ROOT / "work" / "index-full"))
    p.add_argument("--workdir", default=str(common.ROOT / "work" / "full"))
    p.add_argument("--work", default=str(common.WORK_DIR / "live-update"))
    p.add_argument("--out", help="results folder (default benchmarks/results)")
    p.add_argument("--changed", type=int, default=1000)
    p.add_argument("--deleted", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="sample catalog, tiny model, a small delta")
    p.add_argument("--update-config", help="TOML passed to `vlsearch update --config` ([index] update_*)")
    p.add_argument("--from-vectors", help="build --index first from these exported vectors (no encoding)")
    p.add_argument("--model", help="with --from-vectors: the model the vectors were exported with")
    p.add_argument("--qid-queries", type=int, default=0, help="with --from-vectors: logged queries in the qid table")
    p.add_argument("--backend", choices=["faiss", "milvus"], default="faiss",
                   help="milvus: the copy is rebuilt on a milvus-lite server (started here: the update "
                        "runs in its own process) from --index's vectors (no encoding)")
    p.add_argument("--results-name", default="live_update.json", help="file name under the results folder")
    p.add_argument("--before", help="an earlier results file of the same run: its figures are kept as `before`")
    args = p.parse_args(argv)

    import torch

    from vlsearch.config import IndexConfig
    from vlsearch.evaluation import read_beir_queries
    from vlsearch.index.builder import current_version
    from vlsearch.index.qid_table import QidTable
    from vlsearch.io import read_json
    from vlsearch.serving.engine import Engine

    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        import speed

        inputs = speed.smoke_inputs(work / "inputs")
        args.index, args.workdir = str(inputs.index), str(inputs.workdir)
        args.changed, args.deleted = min(args.changed, 30), min(args.deleted, 5)
    out_dir = Path(args.out or common.RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {"benchmark": "live_update", "command": " ".join(["python", *sys.argv]),
                               "smoke": args.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                               "machine": common.machine_info(), "changed": args.changed,
                               "deleted": args.deleted, "backend": args.backend}
    if args.from_vectors:
        t = time.perf_counter()
        build_from_export(Path(args.from_vectors), Path(args.workdir), Path(args.model), Path(args.index),
                          args.qid_queries, args.seed)
        results["index_built_from_vectors"] = {"vectors": args.from_vectors, "model": args.model,
                                               "qid_queries": args.qid_queries,
                                               "seconds": round(time.perf_counter() - t, 1)}
    if args.backend == "milvus":
        live = milvus_copy(Path(args.index), Path(args.workdir), work, args.seed, results)
    else:
        live = fresh_copy(Path(args.index), work / "index")
    engine = Engine.open(live)
    base = engine.version
    changes, deleted, changed_rows = write_delta(engine, work / "delta", args.changed, args.deleted, args.seed)
    tests = [q.text for q in read_beir_queries(Path(args.workdir) / "eval" / "test" / "queries.jsonl")][:500]
    logged = list(QidTable.load(current_version(Path(args.index)) / "qid").queries[:500])  # Milvus: same queries
    old_titles = [engine.product(pid)["title"] for pid in list(changes)[:200] + deleted]
    queries = tests + logged + old_titles
    rng = random.Random(args.seed)
    rng.shuffle(queries)

    stats: dict[str, Any] = {"latency": [], "errors": [], "versions": set()}
    stop = threading.Event()
    loop = threading.Thread(target=search_loop, args=(engine, queries, stop, stats), daemon=True)
    loop.start()
    time.sleep(2.0)  # the loop runs before the update starts
    before = len(stats["latency"])
    cmd = [sys.executable, "-m", "vlsearch.cli", "update", "--index", str(live),
           "--catalog", str(work / "delta" / "delta.jsonl"), "--delete", str(work / "delta" / "delete.txt"),
           "--model", str(current_version(live) / "model"), "--quiet"]
    if args.update_config:
        cmd += ["--config", args.update_config]
        results["update_config"] = Path(args.update_config).read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    update_s = time.perf_counter() - t
    during = len(stats["latency"]) - before
    version = current_version(live)
    if done.returncode == 0:  # the export beside the same search loop the update ran beside
        rates_loaded = export_rates_process(Path(args.workdir), version, changed_rows, env)
    time.sleep(1.0)
    stop.set()
    loop.join()
    if done.returncode != 0:
        results["error"] = done.stderr[-3000:]
        results.pop("_server", None)
        common.write_json(out_dir / args.results_name, results)
        print(done.stderr, file=sys.stderr)
        return 1
    engine.reload_if_changed()
    entry = read_json(version / "manifest.json")["updates"][-1]

    # every change visible
    wrong_title = [pid for pid, title in changes.items() if engine.product(pid)["title"] != title]
    not_found = [pid for pid, title in changes.items()
                 if pid not in [h.product_id for h in engine.search(title, k=10, channels=["lexical"]).hits]]
    still_there = []
    for pid, title in zip(deleted, old_titles[-len(deleted):]):
        try:
            engine.product(pid)
            still_there.append(pid)
        except KeyError:
            pass
        for channels in (["embedding"], ["lexical"], None):
            if pid in [h.product_id for h in engine.search(title, k=100, channels=channels).hits]:
                still_there.append(pid)
    n_products = args.changed
    rates = export_rates(Path(args.workdir), version, changed_rows, IndexConfig().export_batch_size)
    seconds = dict(entry.get("seconds", {}))
    for line in done.stdout.splitlines():  # the report's last timing line has the total too
        if line.startswith("seconds"):
            seconds.update({k: float(v) for k, v in (part.split() for part in line[7:].split(","))})
    encode_s, total_s = seconds.get("encode"), seconds.get("total", update_s)
    seconds["qid_table"] = round(sum(v for k, v in seconds.items() if k.startswith("qid_")), 2)  # all qid stages
    results.update({
        "base_version": base, "version": version.name, "update_stdout": done.stdout.splitlines(),
        "update": {"process_wall_s": round(update_s, 2), "library_s": round(total_s, 2),
                   "products_per_s": round(n_products / total_s, 1),
                   "note": "library_s: update_index from the lock to the publish (the report's total); "
                           "process_wall_s adds the `vlsearch update` process start (imports, model load)",
                   "in_process_seconds": seconds, "qid_refreshed": entry.get("qid_refreshed"),
                   "qid_patched": entry.get("qid_patched"), "qid_dropped": entry.get("qid_dropped"),
                   "qid_lexical_refreshed": entry.get("qid_lexical_refreshed"),
                   "images_reused": entry.get("images_reused"),
                   "encode_products_per_s": round(n_products / encode_s, 1) if encode_s else None,
                   "overhead_beyond_encoding_s": round(total_s - (encode_s or 0), 2)},
        "export_same_products": rates,
        "export_same_products_beside_search_loop": {
            **rates_loaded, "note": "measured right after the update, the search loop still running (as during "
                                    "the update); export_same_products: after the loop stopped"},
        "update_vs_export": {
            "update_per_s_over_export_from_images_per_s": round(n_products / total_s / rates["from_images_per_s"], 3),
            "update_per_s_over_export_cached_per_s": round(n_products / total_s / rates["cached_features_per_s"], 3),
            "beside_search_loop_update_per_s_over_export_cached_per_s":
                round(n_products / total_s / rates_loaded["cached_features_per_s"], 3),
            "beside_search_loop_update_per_s_over_export_from_images_per_s":
                round(n_products / total_s / rates_loaded["from_images_per_s"], 3)},
        "search_loop": {"searches": len(stats["latency"]), "during_update": during,
                        "errors": len(stats["errors"]), "first_errors": stats["errors"][:5],
                        "versions_served": sorted(stats["versions"]),
                        "latency": common.summarize_ms(stats["latency"])},
        "visible": {"changed_with_wrong_title": len(wrong_title), "changed_not_found_by_new_title": len(not_found),
                    "deleted_still_returned": len(set(still_there)), "examples": (wrong_title + not_found + still_there)[:10]},
        "load_average": common.load_average(), "elapsed_s": round(time.time() - started, 1),
    })
    if args.before:
        results["before"] = before_figures(Path(args.before))
    results.pop("_server", None)
    common.write_json(out_dir / args.results_name, results)
    common.log(json.dumps({k: results[k] for k in ("update", "update_vs_export", "visible")}, indent=1))
    ok = not stats["errors"] and not wrong_title and not still_there
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
