"""Quality benchmark: the rows of the papers' Table 1 and the ablations, trained under one
budget on one subset of the real catalog and scored with ``vlsearch.evaluation``.

    .venv/bin/python benchmarks/quality.py --shared ../shared       # full run (about 55 min here)
    .venv/bin/python benchmarks/quality.py --smoke --out /tmp/q     # sample catalog, < 1 minute

Every row gets the same data (the first ``--products`` products of the real catalog,
prepared once into ``work/bench/subset-N``), the same budget (``--steps`` optimiser steps of
``--batch-size`` pairs, the preset's learning rate) and the same seed(s); rows that need
CDNS run as 2 processes under torchrun (1 thread each, ``batch-size / 2`` pairs per process,
so every row sees the same number of pairs per step). Each row is scored on the same test
split (overall and its colour_only_in_image subset), on the heldout split (queries about
products never trained on) and on a colour probe (one query per product whose title names
no colour, so only its image shows it: ``vlsearch.queries.colour_probe_queries``), against
the same corpus (every product of the subset) with exact inner-product search. A row whose
model is trained but whose test bed changed is scored again from its saved model. BM25 is
the lexical channel of the index alone (tantivy, no filters).

Results are written row by row: ``work/bench/quality/rows/*.json`` (one file per row and
seed; ``quality-set-<digest>/`` for a run with ``--set``; a rerun reuses rows whose settings did not change) and, after each row,
``benchmarks/results/quality.json`` (rows not finished yet have ``"status": "pending"``),
``quality.md`` and ``quality_curves.png``.

This file is the runner and the command line; the rows and budget are in
``quality_rows.py``, the test bed and scoring in ``quality_eval.py``, the run context
(configs, reuse keys) in ``quality_context.py`` and the report writer in ``quality_report.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import st_baseline
from quality_context import Context, build_context
from quality_report import _runs, write_report
from quality_rows import DEFAULTS, ENGINE_DENSE, ENGINE_LEXICAL, ROW_BY_NAME, ROWS, Row

from vlsearch.distributed import barrier, cleanup, init_distributed, is_main
from vlsearch.model import Retriever
from vlsearch.model.retriever import WEIGHTS_FILE
from vlsearch.training import train

# names the tests and other scripts read from this module
__all__ = ["DEFAULTS", "ENGINE_DENSE", "ENGINE_LEXICAL", "ROWS", "ROW_BY_NAME", "_runs", "build_context",
           "main", "parse_args"]


# --------------------------------------------------------------------------------------
# the run


def run_row(ctx: Context, row: Row, seed: int) -> None:
    """Train (every rank) and evaluate (rank 0) one row; write its result file."""
    path = ctx.row_file(row, seed)
    key, train_key = ctx.spec_key(row, seed), ctx.train_key(row, seed)
    previous = json.loads(path.read_text()) if path.exists() and not ctx.args.fresh else {}
    config, overrides = ctx.row_config(row, seed)
    model_dir = ctx.model_dir(row, seed)
    trained = ctx.trains(row)
    saved = st_baseline.is_saved(model_dir) if row.kind == "st" else (model_dir / WEIGHTS_FILE).exists()
    # the same model, a changed test bed: score the saved model again
    rescore = trained and previous.get("train_key") == train_key and saved
    barrier()  # every rank decided from the same file before rank 0 rewrites it
    if previous.get("spec_key") == key:
        if is_main():
            common.log(f"{row.name} seed {seed}: reusing {path}")
        return
    record: dict[str, Any] = {
        "row": row.name, "seed": seed, "spec_key": key, "train_key": train_key, "status": "done",
        "config_overrides": overrides, "processes": row.processes,
        "rows_at_once": 1 if row.processes > 1 else ctx.args.parallel,
        "threads_per_process": config.train.num_threads,
        "batch_per_process": config.train.batch_size, "load_average_before": common.load_average(),
    }
    started = time.perf_counter()
    if rescore:
        if is_main():
            common.log(f"{row.name} seed {seed}: scoring the saved model {model_dir} again")
        record["train"] = previous["train"]
    elif trained:
        record["train"] = _train_row(ctx, row, seed, config, model_dir)
        if is_main():  # trained: a failed evaluation is retried from the saved model
            common.write_json(path, {**record, "spec_key": "", "status": "trained"})
    else:
        record["train"] = {"steps": 0, "wall_s": 0.0}
    if is_main():
        with common.threads(ctx.eval_threads(row)):
            evaluated = time.perf_counter()
            scores = _score_row(ctx, row, config, model_dir if trained else None)
            record["eval_wall_s"] = round(time.perf_counter() - evaluated, 1)

        record.update(scores)
        record["wall_s"] = round(time.perf_counter() - started, 1)
        record["load_average_after"] = common.load_average()
        common.write_json(path, record)
        if trained and not ctx.args.keep_checkpoints:
            shutil.rmtree(model_dir / "checkpoints", ignore_errors=True)
        k = 100 if 100 in ctx.args.ks else max(ctx.args.ks)
        common.log(f"{row.name} seed {seed}: done in {record['wall_s']} s; test R@{k} "
                   f"{scores['metrics']['test'][f'recall@{k}']:.4f}")
        write_report(ctx)
    barrier()


def _train_row(ctx: Context, row: Row, seed: int, config, model_dir: Path) -> dict[str, Any]:
    """Train one row into ``model_dir`` (every rank); its training record."""
    if is_main():
        common.log(f"{row.name} seed {seed}: start ({row.processes} process(es))")
        if model_dir.exists():
            shutil.rmtree(model_dir)  # a killed earlier attempt
    barrier()
    if row.kind == "st":
        with common.threads(ctx.row_threads(row)):
            return st_baseline.train(
                ctx.workdir, model_dir, row.product_text, config.train.steps,
                config.train.batch_size, seed, log_every=config.train.log_every)
    return _train_record(train(ctx.workdir, config, model_dir, progress=False))


def _score_row(ctx: Context, row: Row, config, model_dir: Path | None) -> dict[str, Any]:
    """The row's scores on the test bed: its saved model (``model_dir``) or, untrained, the
    model its config builds; with the engine matrix unless --smoke leaves the row out."""
    with_engine = not ctx.args.smoke or row.name in DEFAULTS.smoke_engine_rows
    if row.kind == "bm25":
        return ctx.evaluation.bm25(with_engine)
    if row.kind == "st":
        encoder = st_baseline.StEncoder.load(model_dir, row.product_text)
        vectors = encoder.encode_products(ctx.evaluation.products)
        scores = ctx.evaluation.exact(vectors, encoder.encode_queries)
        if with_engine:
            scores["engine"] = ctx.evaluation.engine(vectors, encoder, ENGINE_DENSE)
        return scores
    retriever = Retriever.load(model_dir) if model_dir is not None else Retriever.build(config, ctx.workdir)
    return ctx.evaluation.dense(retriever, with_engine)


def _train_record(result) -> dict[str, Any]:
    return {
        "steps": result.steps, "wall_s": round(result.seconds, 1),
        "steps_per_s": round(result.steps_per_s, 3), "samples_per_s": round(result.samples_per_s, 2),
        "final_loss": result.final_loss, f"val_recall@{result.eval_k}": result.val_recall,
        "metrics_jsonl": str(result.metrics_path), "curve": result.history,
    }


def _worker_command(rows: list[Row], seed: int | None = None) -> list[str]:
    """This command as a worker for ``rows`` (only ``seed`` of them when given)."""
    only_seed = [] if seed is None else ["--only-seed", str(seed)]
    return [str(Path(__file__).resolve()), *sys.argv[1:], "--worker",
            "--only", ",".join(row.name for row in rows), *only_seed]


def launch_workers(rows: list[Row]) -> int:
    """Run ``rows`` (all with the same process count) in one torchrun job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={rows[0].processes}", *_worker_command(rows)]
    common.log("torchrun: " + ", ".join(row.name for row in rows))
    return subprocess.run(cmd, check=False).returncode


def run_parallel(ctx: Context, rows: list[Row]) -> int:
    """Single-process rows, one (row, seed) per process, ``--parallel`` at a time; failures."""
    pending = [(row, seed) for row in rows for seed in ctx.seeds_of(row)]
    running, failures = [], 0
    while pending or running:
        while pending and len(running) < ctx.args.parallel:
            row, seed = pending.pop(0)
            command = [sys.executable, *_worker_command([row], seed)]
            running.append((row, seed, subprocess.Popen(command)))
        time.sleep(1)
        for job in list(running):
            row, seed, proc = job
            if proc.poll() is not None:
                running.remove(job)
                if proc.returncode:
                    common.log(f"{row.name} seed {seed}: worker exited with status {proc.returncode}")
                    failures += 1
    return failures


def worker_main(args: argparse.Namespace) -> None:
    init_distributed(device="cpu")
    try:
        ctx = build_context(args, prepare=False)
        for row in ctx.rows:
            for seed in ctx.seeds_of(row):
                if args.only_seed is None or seed == args.only_seed:
                    run_row(ctx, row, seed)
    finally:
        cleanup()


def main_run(args: argparse.Namespace) -> int:
    started = time.time()
    ctx = build_context(args, prepare=True)
    ctx.current = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "started_epoch": started, "elapsed_s": 0.0, "finished": False}
    ctx.invocations.append(ctx.current)
    write_report(ctx)
    failures = 0
    index = 0
    while index < len(ctx.rows):  # consecutive rows with the same process count form a group
        group = [ctx.rows[index]]
        while index + len(group) < len(ctx.rows) and \
                ctx.rows[index + len(group)].processes == group[0].processes:
            group.append(ctx.rows[index + len(group)])
        index += len(group)
        if group[0].processes > 1:
            rc = launch_workers(group)
            if rc != 0:
                common.log(f"torchrun exited with status {rc}; rows without results stay pending")
                failures += 1
        elif ctx.args.parallel > 1:
            failures += run_parallel(ctx, group)
        else:
            for row in group:
                for seed in ctx.seeds_of(row):
                    run_row(ctx, row, seed)
    write_report(ctx, finished=True)
    return 1 if failures else 0


# --------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=common.default_shared(), help="folder with data/fashion-products")
    p.add_argument("--products", type=int, default=d.products, help="first N catalog products")
    p.add_argument("--steps", type=int, help=f"steps per trained row (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per step, all processes")
    p.add_argument("--seeds", type=int, default=1, help="seeds per trained row (spread reported when > 1)")
    p.add_argument("--seed", type=int, default=13, help="first seed")
    p.add_argument("--seed-rows", help="comma-separated rows that get all --seeds (default: every "
                   "trained row); the others run with the first seed")
    p.add_argument("--threads", type=int, help="CPU threads per row, split across its processes "
                   f"(default {d.threads}; {d.smoke_threads} with --smoke)")
    p.add_argument("--parallel", type=int, help="single-process rows run at once, each in its own "
                   f"process with threads/parallel threads (default {d.parallel}; "
                   f"{d.smoke_parallel} with --smoke: in this process)")
    p.add_argument("--eval-queries", type=int, help=f"queries per eval split (default {d.eval_queries})")
    p.add_argument("--ks", default="10,100,500", help="cut-offs")
    p.add_argument("--engine-queries", type=int, help="queries per split searched through the "
                   f"serving engine (default: all; {d.smoke_engine_queries} with --smoke)")
    p.add_argument("--rows", help="comma-separated row names (default: every row; with --smoke, "
                   "the rows marked smoke)")
    p.add_argument("--preset", help=f"model preset (default {d.preset}; tiny with --smoke)")
    p.add_argument("--backbone", default=d.backbone, help="image backbone of the prepared subset")
    p.add_argument("--colour-levels", type=int, default=d.colour_levels,
                   help="per-patch colour histograms appended to the subset's image features "
                   "(images.colour_levels; the subset gets its own folder)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting of every vlsearch row, after its baseline, e.g. "
                   "train.cpu_bf16=true (repeatable; part of each row's reuse key)")
    p.add_argument("--work", help="cache folder (default work/bench; with --smoke, OUT/work)")
    p.add_argument("--out", help="results folder (default benchmarks/results; with --smoke, "
                   "work/bench/smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="generated sample catalog, tiny preset, random-cnn, a few steps")
    p.add_argument("--fresh", action="store_true", help="recompute rows that have results")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report files from the finished rows; train nothing")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each row's final checkpoint")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.add_argument("--only-seed", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.ks = tuple(int(k) for k in args.ks.split(","))
    if args.rows is None:
        args.rows = ",".join(r.name for r in ROWS if r.smoke or not args.smoke)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ROW_BY_NAME]
    if unknown:
        p.error(f"unknown rows {unknown}; expected some of {list(ROW_BY_NAME)}")
    args.only = set(args.only.split(",")) if args.only else None
    args.seed_rows = set(args.seed_rows.split(",")) if args.seed_rows else None
    args.preset = args.preset or ("tiny" if args.smoke else d.preset)
    args.steps = args.steps if args.steps is not None else (d.smoke_steps if args.smoke else d.steps)
    args.eval_queries = args.eval_queries or (d.smoke_eval_queries if args.smoke else d.eval_queries)
    args.threads = args.threads or (d.smoke_threads if args.smoke else d.threads)
    if args.engine_queries is None and args.smoke:
        args.engine_queries = d.smoke_engine_queries
    args.parallel = args.parallel or (d.smoke_parallel if args.smoke else d.parallel)
    args.log_every = d.smoke_log_every if args.smoke else d.log_every
    args.out = args.out or str(common.WORK_DIR / "smoke" if args.smoke else common.RESULTS_DIR)
    args.work = args.work or str(Path(args.out) / "work" if args.smoke else common.WORK_DIR)
    if args.batch_size % 2:
        p.error("--batch-size must be even (2-process rows split it)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        write_report(build_context(args, prepare=False))
        return 0
    if args.worker:
        worker_main(args)
        return 0
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
