"""Image-feature extraction throughput on real catalog photos (images/s, decode + CNN together).

    .venv/bin/python benchmarks/image_features_speed.py --n 1000 --batch-sizes 16,32,64 --workers 0,1

Writes one JSON line per setting to benchmarks/results/image_features_speed.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from vlsearch.config import ImageConfig
from vlsearch.images import extract_features, get_backbone

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_shared = os.environ.get("VLSEARCH_SHARED", str(ROOT.parent / "shared"))
    parser.add_argument("--images", default=f"{default_shared}/data/fashion-products/images")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--batch-sizes", default="16")
    parser.add_argument("--workers", default="1")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks/results/image_features_speed.jsonl")
    )
    args = parser.parse_args()

    paths = sorted(str(p) for p in Path(args.images).glob("*.jpg"))[: args.n]
    ids = [Path(p).stem for p in paths]
    base = ImageConfig(backbone=args.backbone, num_threads=args.threads)
    backbone = get_backbone(args.backbone, base)
    for workers in (int(w) for w in args.workers.split(",")):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            config = dataclasses.replace(base, batch_size=batch_size, decode_workers=workers)
            with tempfile.TemporaryDirectory() as tmp:
                cache = extract_features(ids, paths, tmp, config, progress=False, backbone=backbone)
            stats = cache.last_run
            record = {
                **dataclasses.asdict(config),
                "images": stats.decoded,
                "seconds": round(stats.seconds, 2),
                "images_per_second": round(stats.images_per_second, 1),
                "torch_threads": args.threads or torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "load_1min": os.getloadavg()[0],  # other work on the machine skews the numbers
                "machine": platform.processor() or platform.machine(),
            }
            print(json.dumps(record), flush=True)
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
