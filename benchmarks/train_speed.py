"""Training throughput of the cheaper-step switches, side by side with today's default.

    .venv/bin/python benchmarks/train_speed.py --workdir work/bench-epoch/subset-10000
    .venv/bin/python benchmarks/train_speed.py --smoke --out /tmp/ts     # sample catalog, tiny

Every variant (``VARIANTS``: config overrides by section, over the preset and baseline) trains the
same steps on the same pairs, one thread, in rounds: each round runs every variant for
``--steps`` steps, in a rotated order, so load changes on a shared machine hit all variants
alike. Reported per variant: the median samples/s over rounds (first step of each run left
out: warm-up), its ratio to the default measured in the same rounds, and the QPM loss curve
(mean over the last half of the steps, against the default's), with the load average.
Written to ``OUT/train_speed.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

# name -> config overrides by section; "default" is today's configuration
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "mlm-every-4": {"train": {"mlm_every": 4}},
    "mlm-fraction-0.25": {"train": {"mlm_fraction": 0.25}},
    "cpu-bf16": {"train": {"cpu_bf16": True}},
    "frozen-word-embeddings": {"train": {"freeze_word_embeddings": True}},
    "length-groups-4": {"model": {"length_groups": 4}},
    "combined": {"train": {"mlm_every": 4, "cpu_bf16": True, "freeze_word_embeddings": True},
                 "model": {"length_groups": 4}},
}


def variant_config(workdir, preset: str, baseline: str, steps: int, batch_size: int,
                   overrides: dict[str, dict[str, Any]]):
    from vlsearch.config import preset as make_preset
    from vlsearch.config import update
    from vlsearch.model import apply_baseline

    config = make_preset(preset)
    config.data, config.images = workdir.config.data, workdir.config.images
    config = apply_baseline(config, baseline)
    budget = {"steps": steps, "batch_size": batch_size, "num_threads": 1, "log_every": 1,
              "eval_every": 0, "eval_at_start": False, "checkpoint_every": 0,
              "keep_checkpoints": 1, "eval_max_products": 0, "device": "cpu",
              "memory_bank": False, "cross_device": False, **overrides.get("train", {})}
    return update(config, {**overrides, "train": budget}, source="train_speed")


def run_variant(workdir, config) -> dict[str, Any]:
    from vlsearch.training import train

    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        started = time.perf_counter()
        result = train(workdir, config, Path(tmp) / "model", progress=False)
        wall = time.perf_counter() - started
    rows = [r for r in result.history if "loss" in r]
    return {"samples_per_s": [r["samples_per_s"] for r in rows[1:]],
            "qpm": [r["loss_qpm"] for r in rows], "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", help="prepared work directory (default: the smoke sample)")
    p.add_argument("--preset", default="minilm")
    p.add_argument("--baseline", default="make", help="vlsearch.model.BASELINES key")
    p.add_argument("--steps", type=int, default=12, help="steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default=str(common.RESULTS_DIR))
    p.add_argument("--smoke", action="store_true", help="sample catalog, tiny preset, 2 rounds of 4 steps")
    args = p.parse_args(argv)
    from vlsearch.workdir import Workdir

    if args.smoke:
        work = Path(args.out) / "work"
        common.prepare_smoke_workdir(work, common.SmokeData())
        args.workdir, args.preset, args.steps, args.rounds = str(work / "workdir"), "tiny", 4, 2
    if not args.workdir:
        p.error("--workdir is required without --smoke")
    workdir = Workdir.open(args.workdir)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
    if "default" not in names:
        names.insert(0, "default")
    configs = {n: variant_config(workdir, args.preset, args.baseline, args.steps, args.batch_size,
                                 VARIANTS[n]) for n in names}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    load_before = common.load_average()
    for round_index in range(args.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            runs[name].append(run_variant(workdir, configs[name]))
            common.log(f"round {round_index + 1} {name}: "
                       f"{np.median(runs[name][-1]['samples_per_s']):.1f} samples/s")
    half = args.steps // 2
    ref_rate = float(np.median([x for r in runs["default"] for x in r["samples_per_s"]]))
    ref_qpm = float(np.mean(runs["default"][0]["qpm"][half:]))
    variants = {}
    for name in names:
        rates = [x for r in runs[name] for x in r["samples_per_s"]]
        qpm = runs[name][0]["qpm"]
        variants[name] = {
            "overrides": VARIANTS[name], "samples_per_s_median": round(float(np.median(rates)), 2),
            "ratio_to_default": round(float(np.median(rates)) / ref_rate, 3),
            "qpm_loss_last_half": round(float(np.mean(qpm[half:])), 4),
            "qpm_loss_ratio_to_default": round(float(np.mean(qpm[half:])) / ref_qpm, 4),
            "deterministic": all(r["qpm"] == qpm for r in runs[name]),
            "qpm_curve_first_round": [round(x, 4) for x in qpm],
        }
    report = {"benchmark": "train_speed", "workdir": str(workdir.path), "preset": args.preset,
              "baseline": args.baseline, "steps": args.steps, "rounds": args.rounds,
              "batch_size": args.batch_size, "threads": 1, "load_average_before": load_before,
              "load_average_after": common.load_average(), "machine": common.machine_info(),
              "variants": variants}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.write_json(out / "train_speed.json", report)
    for name, v in variants.items():
        print(f"{name:24s} {v['samples_per_s_median']:7.2f} samples/s  x{v['ratio_to_default']:.2f}  "
              f"QPM {v['qpm_loss_last_half']:.4f} (x{v['qpm_loss_ratio_to_default']:.3f})"
              f"{'' if v['deterministic'] else '  NOT deterministic'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
