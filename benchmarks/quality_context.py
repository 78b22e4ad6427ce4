"""Quality benchmark, one run's context: the work dir the rows share, the seeds, each row's
config (budget + baseline), and the keys that say when a row must be trained or scored again.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import st_baseline
from quality_eval import Evaluation
from quality_rows import (
    DEFAULTS,
    MODEL_SHAPING_SECTIONS,
    ROW_BY_NAME,
    TEST_BED_VERSION,
    TRAIN_ROW_FIELDS,
    Row,
)

from vlsearch.config import Config, apply_overrides, preset, update
from vlsearch.model import BASELINES, apply_baseline
from vlsearch.workdir import Workdir
from vlsearch.workdir import prepare as prepare_workdir


@dataclass
class Context:
    """Everything a row needs; built the same way by the main process and torchrun workers."""

    args: argparse.Namespace
    workdir: Any  # vlsearch.workdir.Workdir
    base: Any  # Config: the preset with the work dir's data/image settings
    run_dir: Path
    out_dir: Path
    seeds: list[int]
    rows: list[Row]  # rows this process runs
    report_rows: list[Row]  # rows the report lists (--rows)
    invocations: list[dict] = dataclasses.field(default_factory=list)  # runs behind the report
    current: dict | None = None  # this process's entry of ``invocations`` (main run only)
    _evaluation: Evaluation | None = None
    _data_digest: str | None = None

    @property
    def data_digest(self) -> str:
        """Digest of the bytes of the prepared data (products, clicks, eval sets, image
        features): a refactor that re-fingerprints the work dir's stages but writes the same
        data keeps the finished rows."""
        if self._data_digest is None:
            self._data_digest = content_digest(self.workdir.path, skip=WORKDIR_METADATA)
        return self._data_digest

    @property
    def evaluation(self) -> Evaluation:
        if self._evaluation is None:
            self._evaluation = Evaluation(self.workdir, self.args.eval_queries, self.args.ks,
                                          self.run_dir / "test_bed", self.args.engine_queries)
        return self._evaluation

    def row_file(self, row: Row, seed: int) -> Path:
        return self.run_dir / "rows" / f"{row.name}-seed{seed}.json"

    def model_dir(self, row: Row, seed: int) -> Path:
        return self.run_dir / "models" / f"{row.name}-seed{seed}"

    def seeds_of(self, row: Row) -> list[int]:
        """Every seed for trained rows (those of --seed-rows when given); deterministic rows
        (BM25, untrained models) run once."""
        chosen = self.args.seed_rows is None or row.name in self.args.seed_rows
        return self.seeds if self.trains(row) and chosen else self.seeds[:1]

    def trains(self, row: Row) -> bool:
        if row.kind == "st":
            return row.st_train and self.args.steps > 0
        return row.kind == "vlsearch" and self.row_config(row, self.seeds[0])[0].train.steps > 0

    def row_threads(self, row: Row) -> int:
        """Threads per training process: ``--threads`` shared by a row's processes, or by the
        ``--parallel`` single-process rows that run at once."""
        share = row.processes if row.processes > 1 else self.args.parallel
        return max(1, self.args.threads // share)

    def eval_threads(self, row: Row) -> int:
        """Rank 0 of a multi-process row evaluates alone (the other ranks wait)."""
        return self.args.threads if row.processes > 1 else self.row_threads(row)

    def budget_overrides(self, row: Row, seed: int) -> dict[str, Any]:
        a = self.args
        return {"train": {
            "steps": a.steps, "seed": seed, "batch_size": a.batch_size // row.processes,
            "num_threads": self.row_threads(row),
            # the memory bank holds the same number of vectors whatever the process count
            "memory_bank_batches": self.base.train.memory_bank_batches * row.processes,
            "log_every": a.log_every, "eval_every": 0, "eval_at_start": False,
            "eval_max_products": DEFAULTS.validation_products,
            "checkpoint_every": 0, "keep_checkpoints": 1, "device": "cpu",
        }}

    def row_config(self, row: Row, seed: int):
        budget = self.budget_overrides(row, seed)
        config = update(self.base, budget, source="benchmark budget")
        if row.baseline is not None:
            config = apply_baseline(config, row.baseline)
        overrides = {"preset": self.args.preset, "budget": budget,
                     "baseline": BASELINES.get(row.baseline) if row.baseline else None}
        if row.kind == "vlsearch" and self.args.set:  # after the baseline: the run's own settings
            config = apply_overrides(config, self.args.set, source="quality --set")
            overrides["set"] = list(self.args.set)
        if row.kind == "st":
            overrides["sentence_transformers"] = dataclasses.asdict(st_baseline.StSettings())
        return config, overrides

    def train_key(self, row: Row, seed: int) -> str:
        """Changes whenever anything that affects the row's trained model changes."""
        config, overrides = self.row_config(row, seed)
        # fields at their defaults are left out, so a new config field whose default keeps
        # today's behaviour does not retrain finished rows
        defaults = Config().to_dict()
        shaping = {k: {f: v for f, v in values.items() if defaults[k].get(f) != v}
                   for k, values in config.to_dict().items() if k in MODEL_SHAPING_SECTIONS}
        if row.kind != "vlsearch":  # the budget and data are all that shape other rows
            budget = config.train
            shaping = {"train": {k: getattr(budget, k) for k in ("steps", "batch_size", "seed")},
                       "st": overrides.get("sentence_transformers")}
        # the row fields that shape its model (label and table do not)
        fields = {k: v for k, v in dataclasses.asdict(row).items() if k in TRAIN_ROW_FIELDS}
        return _digest({"row": fields, "config": shaping, "data": self.data_digest})

    def spec_key(self, row: Row, seed: int) -> str:
        """Changes whenever anything that affects the row's numbers changes: its model or
        the test bed."""
        bed = {"train": self.train_key(row, seed), "test_bed": TEST_BED_VERSION,
               "eval_queries": self.args.eval_queries, "ks": list(self.args.ks)}
        if self.args.engine_queries is not None:
            bed["engine_queries"] = self.args.engine_queries
        return _digest(bed)


# Work-dir files that describe the data rather than hold it (left out of ``data_digest``).
WORKDIR_METADATA = ("manifest.json", "prepare_report.json")


def content_digest(folder: Path, skip: tuple[str, ...] = ()) -> str:
    """blake2b over the relative path and bytes of every file under ``folder``, in path order."""
    h = hashlib.blake2b(digest_size=8)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in skip:
            continue
        h.update(rel.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _digest(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_context(args: argparse.Namespace, prepare: bool) -> Context:
    """Open (and with ``prepare``, first create) the work dir the rows share."""
    work = Path(args.work)
    if args.smoke:
        data = common.SmokeData()
        path = work / "workdir"
        if prepare:
            common.prepare_smoke_workdir(work, data)
    else:
        path = work / (f"subset-{args.products}" + (f"-colour{args.colour_levels}" if args.colour_levels else ""))
        if prepare:
            config = preset(args.preset)
            config.data.limit = args.products
            config.data.max_eval_queries = args.eval_queries
            config.images.backbone = args.backbone
            config.images.colour_levels = args.colour_levels
            catalog = Path(args.shared) / common.REAL_CATALOG
            common.log(f"preparing {path} from the first {args.products} products of {catalog}")
            print(prepare_workdir(catalog, path, config, progress=False).format(), file=sys.stderr)
    workdir = Workdir.open(path)
    base = preset(args.preset)
    base.data, base.images = workdir.config.data, workdir.config.images
    seeds = [args.seed + i for i in range(args.seeds)]
    selected = [ROW_BY_NAME[name] for name in args.rows]
    rows = [row for row in selected if not args.only or row.name in args.only]
    # runs with other --set settings keep their rows and models apart (and can run side by side)
    run_dir = work / (f"quality-set-{_digest({'set': sorted(args.set)})[:8]}" if args.set else "quality")
    ctx = Context(args, workdir, base, run_dir, Path(args.out), seeds, rows, selected)
    old = previous_report(ctx.out_dir)
    ctx.invocations = list(old.get("invocations", []))
    if prepare and not args.fresh:
        restore_row_files(ctx, old)
    return ctx


def previous_report(out_dir: Path) -> dict:
    """The existing report in ``out_dir`` ({} when there is none): its runs are kept when rows
    are added or re-reported, and its finished rows restore a new machine's work dir."""
    try:
        return json.loads((out_dir / "quality.json").read_text())
    except (OSError, ValueError):
        return {}


def restore_row_files(ctx: Context, report: dict) -> None:
    """Write the report's finished runs back as row files where the work dir has none (a run
    that continues on a fresh machine). They are reused only while their spec key matches."""
    for entry in report.get("rows", []):
        for record in entry.get("runs", []):
            if record.get("row") not in ROW_BY_NAME:  # a row this code no longer has
                continue
            path = ctx.row_file(ROW_BY_NAME[record["row"]], record["seed"])
            if not path.exists():
                common.write_json(path, record)

