"""What a run reports: stderr lines, ``metrics.jsonl`` (and TensorBoard), the loss/recall
plot, and the validation Recall@K measured during training.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlsearch.config import Config
from vlsearch.errors import VlsearchError
from vlsearch.evaluation import CLICK_GRADE, read_beir_queries, read_qrels, recall_at_k
from vlsearch.evaluation.exact import exact_run
from vlsearch.io import atomic_write_text
from vlsearch.model import Retriever

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
LOSS_TERMS = ("qpm", "mpm", "mlm", "qpc", "tia")


class TrainingError(VlsearchError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and checkpoint."""


def log(message: str) -> None:
    """One line on stderr that does not break a progress bar."""
    tqdm.write(message, file=sys.stderr)


class Validator:
    """Recall@K on an eval split: its clicked products plus a seeded sample, exact top-K."""

    def __init__(self, workdir, config: Config):
        t = config.train
        directory = workdir.eval_dir(t.eval_split)
        self.k = t.eval_k
        self.queries = read_beir_queries(directory / "queries.jsonl")
        self.qrels = read_qrels(directory / "qrels.tsv")
        products = workdir.products()
        row_of = {p.id: i for i, p in enumerate(products)}
        clicked = sorted({row_of[d] for judged in self.qrels.values() for d, g in judged.items()
                          if g >= CLICK_GRADE and d in row_of})
        rest = np.setdiff1d(np.arange(len(products)), clicked)
        extra = max(0, t.eval_max_products - len(clicked))
        sample = np.random.default_rng(t.seed).permutation(rest)[:extra]
        self.rows = np.sort(np.concatenate([np.asarray(clicked, dtype=np.int64), sample]))
        self.products = [products[i] for i in self.rows]
        self.patches = self.has_image = None
        if config.model.use_images:
            features = workdir.features()
            self.patches, self.has_image = features.product_images(self.rows, config.model.max_images)

    def recall(self, retriever: Retriever) -> float:
        queries = retriever.encode_queries([q.text for q in self.queries])
        products = retriever.encode_products(self.products, self.patches, self.has_image)
        run = exact_run([q.id for q in self.queries], queries, [p.id for p in self.products], products, self.k)
        return float(recall_at_k(run, self.qrels, self.k) or 0.0)



class MetricsLog:
    """``metrics.jsonl``: one JSON object a line, appended as it comes; only rank 0 writes.

    A resumed run keeps the lines up to its checkpoint step (``keep_upto``) and drops the
    rest, so the file reads as one uninterrupted run. With ``tensorboard`` (a folder), every
    numeric value of every row is also written as a TensorBoard scalar at the row's step.
    """

    def __init__(self, path: Path, enabled: bool, keep_upto: int | None = None,
                 tensorboard: Path | None = None):
        self.path, self.enabled, self.rows = path, enabled, []
        self.board = None
        if not enabled:
            return
        if keep_upto is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if isinstance(row, dict) and row.get("step", 0) <= keep_upto:
                        self.rows.append(row)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.rows))
        if tensorboard is not None:
            try:  # optional dependency, only with train.tensorboard = true
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise TrainingError(f"train.tensorboard = true needs the tensorboard package ({exc}); "
                                    "install it with `pip install tensorboard`") from None
            self.board = SummaryWriter(log_dir=str(tensorboard), purge_step=keep_upto)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if self.board is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.board.add_scalar(key, value, row["step"])
            self.board.flush()

    def close(self) -> None:
        if self.board is not None:
            self.board.close()



def plot_metrics(history: list[dict], path: Path) -> Path | None:
    """Loss terms and validation recall against step, as a PNG (matplotlib, Agg canvas)."""
    # matplotlib is heavy (about a second to import) and only needed once, at the end of a run
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    losses = [r for r in history if "loss" in r]
    recalls = [(r["step"], v) for r in history for k, v in r.items() if k.startswith("val_recall@")]
    if not losses and not recalls:
        return None
    figure = Figure(figsize=(10, 4))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for key in ("loss", *(f"loss_{k}" for k in LOSS_TERMS)):
        points = [(r["step"], r[key]) for r in losses if r.get(key) is not None]
        if points:
            left.plot(*zip(*points), label=key)
    left.set_xlabel("step")
    if losses:
        left.set_yscale("log")
        left.legend()
    left.set_title("training loss")
    if recalls:
        right.plot(*zip(*recalls), marker="o")
    right.set_xlabel("step")
    right.set_title(next((k for r in history for k in r if k.startswith("val_recall@")), "validation"))
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp)
    os.replace(tmp, path)
    return path
