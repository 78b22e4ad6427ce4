"""First image vs all images, on a generated multi-image catalog (issue 12).

    python benchmarks/multi_image.py --products 600 --steps 150 --seeds 2

The real catalog has one image per product, so this runs on ``write_sample_catalog(...,
images_per_product=N)`` (its ``products.csv``): every product has N views of its drawing.
One work directory (all images cached), then per row and seed one training run of the same
preset and steps: ``model.max_images = 1`` (the first image, the behaviour before multi-image
support) and ``= N`` (all images); each model ranks the whole catalog exactly (dense channel
alone) for the test split and the colour probe (queries whose colour only the image shows).
Writes ``benchmarks/results/multi_image.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from vlsearch.config import preset
from vlsearch.evaluation import evaluate, read_beir_queries, read_qrels
from vlsearch.evaluation.exact import exact_run
from vlsearch.model import Retriever
from vlsearch.sample import MULTI_IMAGE_FILE, write_sample_catalog
from vlsearch.training import train
from vlsearch.workdir import COLOUR_PROBE_SPLIT, Workdir, prepare

KS = (10, 100)
SPLITS = ("test", COLOUR_PROBE_SPLIT)


def _config(args, max_images: int, seed: int):
    config = preset(args.preset)
    config.images.backbone = args.backbone
    config.images.num_threads = args.threads
    config.model.max_images = max_images
    config.train.steps = args.steps
    config.train.batch_size = args.batch_size
    config.train.seed = seed
    config.train.eval_every = 0
    config.train.eval_at_start = False
    config.train.checkpoint_every = 0
    config.train.num_threads = args.threads
    return config


def _scores(workdir: Workdir, model_dir: Path, max_images: int) -> dict[str, dict[str, float]]:
    """Recall / nDCG of the model's exact ranking of the catalog, per split."""
    retriever = Retriever.load(model_dir)
    products = workdir.products()
    features = workdir.features()
    patches, has_image = features.product_images(np.arange(features.n), max_images)
    corpus = retriever.encode_products(products, patches, has_image)
    by_id = {p.id: p for p in products}
    out = {}
    for split in SPLITS:
        folder = workdir.eval_dir(split)
        queries = read_beir_queries(folder / "queries.jsonl")
        vectors = retriever.encode_queries([q.text for q in queries])
        run = exact_run([q.id for q in queries], vectors, [p.id for p in products], corpus, max(KS))
        metrics = evaluate(run, read_qrels(folder / "qrels.tsv"), queries, by_id, KS)
        values = metrics["subsets"]["all"]["metrics"]
        out[split] = {name: values[name] for name in ("recall@10", "recall@100", "ndcg@10")}
        out[split]["queries"] = len(queries)
    return out


def summary(rows: dict) -> dict[str, dict[str, list[float]]]:
    """Per row, ``"split metric"`` -> [mean, std over the seeds] (rounded to 3 places)."""
    out = {}
    for name, row in rows.items():
        values: dict[str, list[float]] = {}
        for run in row["runs"]:
            for split in SPLITS:
                for metric, value in run[split].items():
                    if metric != "queries":
                        values.setdefault(f"{split} {metric}", []).append(value)
        out[name] = {key: [round(float(np.mean(v)), 3), round(float(np.std(v)), 3)]
                     for key, v in values.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--products", type=int, default=600)
    parser.add_argument("--images", type=int, default=3, help="images per generated product")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("work/bench-multi-image"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/multi_image.json"))
    args = parser.parse_args()

    catalog = write_sample_catalog(args.work / "catalog", n_products=args.products, seed=0,
                                   images_per_product=args.images)
    started = time.perf_counter()
    prepare(catalog / MULTI_IMAGE_FILE, args.work / "w", _config(args, 1, 13), progress=False)
    workdir = Workdir.open(args.work / "w")
    result = {"products": args.products, "images_per_product": args.images, "steps": args.steps,
              "batch_size": args.batch_size, "preset": args.preset, "backbone": args.backbone,
              "prepare_s": round(time.perf_counter() - started, 1),
              "load_average_start": os.getloadavg(), "rows": {}}
    for name, max_images in (("first image", 1), (f"all {args.images} images", args.images)):
        runs = []
        for seed in range(13, 13 + args.seeds):
            began = time.perf_counter()
            model_dir = args.work / f"model-{max_images}-{seed}"
            shutil.rmtree(model_dir, ignore_errors=True)  # this benchmark's own: a fresh run
            train(args.work / "w", _config(args, max_images, seed), model_dir, progress=False)
            runs.append({"seed": seed, "seconds": round(time.perf_counter() - began, 1),
                         **_scores(workdir, model_dir, max_images)})
            print(name, json.dumps(runs[-1]), flush=True)
        result["rows"][name] = {"max_images": max_images, "runs": runs}
    result["load_average_end"] = os.getloadavg()
    result["summary"] = summary(result["rows"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
