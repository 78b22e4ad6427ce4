"""Pre-training loop: data stream, objectives, optimizer, schedule, checkpoints, resume, metrics.

``train(workdir, config, out_dir)`` trains a :class:`vlsearch.model.Retriever` on a prepared
work directory and saves it into ``out_dir`` (``Retriever.save``). Launched by torchrun it
runs DDP (gloo on CPU, nccl on CUDA); only rank 0 writes files.

Determinism: every random draw of a step (which clicks, which tokens/patches are masked,
dropout) is seeded from ``(train.seed, step, rank)``, so a resumed run continues the very
same stream and each rank draws its own shard. Checkpoints (``out_dir/checkpoints/step-N``)
hold the weights, the flattened optimizer state, the memory bank(s) and the RNG state in
one safetensors file plus ``state.json`` (schedule, optimizer groups, the file's sha256);
a checkpoint that fails its checksum or does not parse is refused and the previous one used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from vlsearch.config import Config, ConfigError, TrainConfig
from vlsearch.distributed import barrier, init_distributed
from vlsearch.errors import VlsearchError, WorkdirError
from vlsearch.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    read_json,
    temp_dir,
)
from vlsearch.model import Retriever
from vlsearch.model.towers import TextEncoder
from vlsearch.negatives import MemoryBank, NegativeSet, gather_across_devices
from vlsearch.objectives import (
    UNKNOWN_CATEGORY,
    AMSoftmaxClassifier,
    MaskedLanguageModeling,
    QueryProductMatching,
    mask_tokens,
    masked_patch_objective,
)

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_TENSORS = "tensors.safetensors"
CHECKPOINT_STATE = "state.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"
LOSS_TERMS = ("qpm", "mpm", "mlm", "qpc")


class TrainingError(VlsearchError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and checkpoint."""


class CheckpointError(WorkdirError):
    """A checkpoint is missing files, truncated or corrupt."""


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


# --------------------------------------------------------------------------------------
# data


@dataclass
class Batch:
    """One step's (query, product) pairs as tensors."""

    q_ids: Tensor
    q_mask: Tensor
    q_types: Tensor
    t_ids: Tensor
    t_mask: Tensor
    patches: Tensor | None  # [B, P, D] float32 raw patch vectors
    has_image: Tensor  # [B] bool
    product_ids: Tensor  # [B] int64 product row
    log_q: Tensor  # [B] log sampling probability of the product
    labels: Tensor  # [B] category index, -1 unknown

    def to(self, device: torch.device) -> Batch:
        return Batch(**{k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()})


def _trim(ids: np.ndarray, mask: np.ndarray, *more: np.ndarray) -> list[Tensor]:
    """Drop the padding columns no row of the batch uses."""
    width = max(int(mask.sum(1).max()), 1)
    return [torch.from_numpy(np.ascontiguousarray(a[:, :width])) for a in (ids, mask, *more)]


class ClickLog:
    """The training click log of a work directory, sampled in proportion to click counts:
    ``draw(step)`` gives the click rows of one step and depends only on (seed, step, rank).
    Shared by :class:`ClickStream` and by baselines trained outside vlsearch (benchmarks)."""

    def __init__(self, workdir, seed: int, batch_size: int, rank: int = 0):
        self.seed, self.rank, self.batch_size = seed, rank, batch_size
        ids = workdir.product_table().column("id").to_pylist()
        row_of = {pid: i for i, pid in enumerate(ids)}
        clicks = workdir.clicks()
        pids = clicks.column("product_id").to_pylist()
        known = np.array([pid in row_of for pid in pids], dtype=bool)
        if not known.any():
            raise WorkdirError(f"{workdir.path}: the training click log has no clicks on known products")
        if not known.all():
            _log(f"training: {int((~known).sum())} click rows name unknown products; skipped")
        queries = [q for q, k in zip(clicks.column("query").to_pylist(), known) if k]
        counts = np.asarray(clicks.column("count").to_numpy(), dtype=np.float64)[known]
        self.product_rows = np.array([row_of[p] for p, k in zip(pids, known) if k], dtype=np.int64)
        self.cumulative = np.cumsum(counts) / counts.sum()
        self.distinct_queries = sorted(set(queries))
        index = {q: i for i, q in enumerate(self.distinct_queries)}
        self.query_rows = np.array([index[q] for q in queries], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.product_rows)

    def draw(self, step: int) -> np.ndarray:
        """Indices of the click rows of ``step`` (``query_rows`` / ``product_rows`` index them)."""
        rng = np.random.default_rng([self.seed, step, self.rank])
        clicks = np.searchsorted(self.cumulative, rng.random(self.batch_size), side="right")
        return np.minimum(clicks, len(self.cumulative) - 1)

    def pairs(self, step: int) -> tuple[list[str], np.ndarray]:
        """The query texts and product rows of ``step``."""
        clicks = self.draw(step)
        return [self.distinct_queries[i] for i in self.query_rows[clicks]], self.product_rows[clicks]


class ClickStream:
    """Training batches from :class:`ClickLog`; ``batch(step)`` depends only on (seed, step,
    rank). Queries (with their keywords) and product texts are tokenized once."""

    def __init__(self, workdir, retriever: Retriever, config: Config, rank: int):
        self.log = ClickLog(workdir, config.train.seed, config.train.batch_size, rank)
        table = workdir.product_table()
        self.queries = _tokenize(retriever.tokenize_queries, self.log.distinct_queries, retriever.tokenizer.pad_id)
        # the product tower's text (title + configured attribute text), in product-table order
        self.titles = _tokenize(retriever.tokenize_products, workdir.products(), retriever.tokenizer.pad_id)
        prob = np.asarray(table.column("sampling_prob").to_numpy(), dtype=np.float64)
        self.log_q = np.log(np.where(prob > 0, prob, prob[prob > 0].min())).astype(np.float32)
        position = {c: i for i, c in enumerate(retriever.categories)}
        self.labels = np.array(
            [position.get(c, UNKNOWN_CATEGORY) for c in table.column("category").to_pylist()], dtype=np.int64
        )
        self.features = workdir.features() if config.model.use_images else None

    def __len__(self) -> int:
        return len(self.log)

    def batch(self, step: int) -> Batch:
        clicks = self.log.draw(step)
        rows = self.log.product_rows[clicks]
        q_ids, q_mask, q_types = _trim(*(a[self.log.query_rows[clicks]] for a in self.queries))
        t_ids, t_mask = _trim(*(a[rows] for a in self.titles[:2]))
        patches = None
        if self.features is not None:
            patches = torch.from_numpy(self.features.patches(rows).astype(np.float32))
            has_image = torch.from_numpy(self.features.has_image(rows))
        else:
            has_image = torch.zeros(len(rows), dtype=torch.bool)
        return Batch(
            q_ids, q_mask, q_types, t_ids, t_mask, patches, has_image,
            torch.from_numpy(rows), torch.from_numpy(self.log_q[rows]), torch.from_numpy(self.labels[rows]),
        )


def _tokenize(encode, items: list, pad_id: int, chunk: int = 4096) -> tuple[np.ndarray, ...]:
    """Encode ``items`` (texts, or products for ``tokenize_products``) in chunks and pad every
    chunk to the widest, so rows can be gathered by index."""
    parts = [encode(items[lo:lo + chunk]) for lo in range(0, len(items), chunk)]
    width = max(p.input_ids.shape[1] for p in parts)
    out = []
    for j, fill in enumerate((pad_id, 0, 0)):
        out.append(np.concatenate([np.pad(p[j], ((0, 0), (0, width - p[j].shape[1])), constant_values=fill) for p in parts]))
    return tuple(out)


# --------------------------------------------------------------------------------------
# objectives


@dataclass
class StepOutput:
    loss: Tensor
    terms: dict[str, Tensor]
    vectors: Tensor  # detached product vectors (for the memory bank)
    temperature: float = 0.0
    neg_in_batch: float = 0.0
    neg_memory: float = 0.0
    neg_cross_device: float = 0.0


class Pretrainer(nn.Module):
    """The retrieval model plus the training-only objective modules; ``forward`` gives the loss.

    An objective whose weight is zero is neither built nor computed.
    """

    def __init__(self, retriever: Retriever, config: Config):
        super().__init__()
        t, m = config.train, config.model
        self.model = retriever.model
        self.weights = {"qpm": t.w_qpm, "mpm": t.w_mpm if m.use_images else 0.0, "mlm": t.w_mlm,
                        "qpc": t.w_qpc if retriever.categories else 0.0}
        self.qpm = QueryProductMatching(
            m.init_temperature, t.logq_correction, t.memory_bank_weight, t.cross_device_weight
        )
        self.mpm = masked_patch_objective(t.mpm_kind, t.mpm_init_temperature) if self.weights["mpm"] else None
        self.mask_ratio = t.mpm_mask_ratio
        self.mlm_probability = t.mlm_probability
        self.mlm_fraction = t.mlm_fraction
        if not 0.0 < t.mlm_fraction <= 1.0:
            raise ConfigError(f"train.mlm_fraction must be in (0, 1], got {t.mlm_fraction}")
        if t.mlm_every < 1:
            raise ConfigError(f"train.mlm_every must be at least 1, got {t.mlm_every}")
        if t.freeze_word_embeddings:  # no dense [vocab x hidden] gradient and AdamW update
            for tower in self.model.modules():
                if isinstance(tower, TextEncoder):
                    tower.word_embeddings.weight.requires_grad_(False)
        tok = retriever.tokenizer
        self.vocab_size, self.mask_id = tok.vocab_size, tok.mask_id
        self.register_buffer("special_ids", torch.as_tensor(tok.special_ids), persistent=False)
        self.mlm_query = self.mlm_title = None
        if self.weights["mlm"]:
            text = self.model.text
            self.mlm_title = MaskedLanguageModeling(text.hidden_size, tok.vocab_size, text.word_embeddings)
            if self.model.query is not None:
                q = self.model.query
                self.mlm_query = MaskedLanguageModeling(q.hidden_size, tok.vocab_size, q.word_embeddings)
        self.qpc = None
        if self.weights["qpc"]:
            self.qpc = AMSoftmaxClassifier(retriever.embed_dim, len(retriever.categories), t.qpc_margin, t.qpc_scale)

    def forward(self, batch: Batch, generator: torch.Generator, memory: NegativeSet | None = None,
                cross_device: bool = False, with_mlm: bool = True) -> StepOutput:
        """The weighted loss of one step; ``with_mlm=False`` skips MLM (``train.mlm_every``)."""
        model = self.model
        # the towers may run under bf16 autocast; the vectors and the similarity logits are
        # fp32 (a bf16 logit of 20 has a resolution of 0.125, too coarse for the softmax)
        q = model.encode_query(batch.q_ids, batch.q_mask, batch.q_types).float()
        p = model.encode_product(batch.t_ids, batch.t_mask, batch.patches, batch.has_image).vectors.float()
        others = gather_across_devices(p, batch.product_ids, batch.log_q) if cross_device else None
        terms: dict[str, Tensor] = {}
        out = StepOutput(p.new_zeros(()), terms, p.detach())
        with torch.autocast(p.device.type, enabled=False):
            if self.weights["qpm"]:
                match = self.qpm(q, p, batch.product_ids, batch.log_q, memory, others)
                terms["qpm"] = match.loss
                out.temperature, out.neg_in_batch = match.temperature, match.neg_in_batch
                out.neg_memory, out.neg_cross_device = match.neg_memory, match.neg_cross_device
            if self.qpc is not None:
                terms["qpc"] = 0.5 * (self.qpc(q, batch.labels) + self.qpc(p, batch.labels))
        if self.mpm is not None:
            terms["mpm"] = self._mpm(batch, generator).float()
        if self.mlm_title is not None and with_mlm:
            terms["mlm"] = self._mlm(batch, generator).float()
        out.loss = sum(self.weights[name] * value for name, value in terms.items())
        return out

    def _mlm(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """MLM on titles (title tower) and queries (query tower; the same tower when shared)."""
        losses = []
        n = math.ceil(self.mlm_fraction * len(batch.t_ids))  # train.mlm_fraction of the pairs
        for ids, mask, types, tower, head in (
            (batch.t_ids[:n], batch.t_mask[:n], None, self.model.text, self.mlm_title),
            (batch.q_ids[:n], batch.q_mask[:n], batch.q_types[:n], self.model.query_tower,
             self.mlm_query or self.mlm_title),
        ):
            masked, labels = mask_tokens(
                ids, torch.isin(ids, self.special_ids), vocab_size=self.vocab_size, mask_id=self.mask_id,
                probability=self.mlm_probability, generator=generator,
            )
            losses.append(head(tower.hidden(masked, mask, types), labels))
        return 0.5 * (losses[0] + losses[1])

    def _mpm(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """Mask ``mpm_mask_ratio`` of each image's patches; predict the raw patch vectors."""
        rows = batch.has_image.nonzero(as_tuple=True)[0]
        if len(rows) == 0:  # no image in the batch: nothing to mask
            return batch.patches.new_zeros(())
        patches = batch.patches[rows]
        n, num_patches, _ = patches.shape
        k = max(1, round(self.mask_ratio * num_patches))
        order = torch.rand(n, num_patches, generator=generator).argsort(dim=1)[:, :k]
        chosen = torch.zeros(n, num_patches, dtype=torch.bool).scatter_(1, order, True).to(patches.device)
        predicted = self.model.predict_patches(
            batch.t_ids[rows], batch.t_mask[rows], patches, batch.has_image[rows], chosen
        )
        image, patch = chosen.nonzero(as_tuple=True)
        targets = patches.reshape(n * num_patches, -1).detach()
        return self.mpm(predicted[image, patch], targets, image * num_patches + patch)


# --------------------------------------------------------------------------------------
# optimizer, schedule


def make_optimizer(module: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, vectors/scalars (biases, norms, temperatures) do not.

    Towers loaded from a checkpoint train at ``t.lr``; every layer that starts from random
    weights (heads, image tower, fusion, Modal Adaptation, objectives) at ``t.new_layer_lr``,
    since a fine-tuning rate barely moves a freshly initialised layer in a short run.
    """
    pretrained = {
        id(p) for m in module.modules() if isinstance(m, TextEncoder) and m.pretrained
        for p in m.parameters()
    }
    groups = []
    for from_checkpoint, lr in ((True, t.lr), (False, t.new_layer_lr)):
        params = [p for p in module.parameters() if p.requires_grad and (id(p) in pretrained) == from_checkpoint]
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "weight_decay": t.weight_decay, "lr": lr},
                   {"params": rest, "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=(0.9, t.adam_beta2))


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0."""
    warmup = max(1, math.ceil(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# --------------------------------------------------------------------------------------
# checkpoints


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    """Optimizer ``state_dict`` -> (tensors, JSON): tensors as ``optimizer.<param>.<key>``."""
    tensors: dict[str, Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["plain"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    path: Path
    step: int
    tensors: dict[str, Tensor]
    state: dict


def save_checkpoint(directory: Path, step: int, tensors: dict[str, Tensor], state: dict, keep: int) -> Path:
    """Write ``directory/step-N`` atomically (temp dir + rename) and keep the newest ``keep``."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}"
    tmp = temp_dir(directory, prefix=f".{final.name}.")
    try:
        flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write(tmp / CHECKPOINT_TENSORS, lambda path: save_file(flat, path))
        state = {**state, "format_version": CHECKPOINT_FORMAT, "step": step,
                 "sha256": _sha256(tmp / CHECKPOINT_TENSORS)}
        atomic_write_json(tmp / CHECKPOINT_STATE, state)
        with open(tmp / CHECKPOINT_TENSORS, "rb") as handle:
            os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint directories, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith("step-"))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify one checkpoint; any problem raises :class:`CheckpointError`."""
    try:
        state = read_json(path / CHECKPOINT_STATE)
    except WorkdirError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path}: not checkpoint format {CHECKPOINT_FORMAT}")
    file = path / CHECKPOINT_TENSORS
    if not file.exists():
        raise CheckpointError(f"checkpoint {path}: {CHECKPOINT_TENSORS} is missing")
    if _sha256(file) != state.get("sha256"):
        raise CheckpointError(f"checkpoint {file}: checksum mismatch (truncated or corrupt file)")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {file}: unreadable ({exc})") from None
    return Checkpoint(path, int(state["step"]), tensors, state)


def latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest checkpoint that loads; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            _log(f"training: refusing {exc}; trying the previous checkpoint")
    return None


# --------------------------------------------------------------------------------------
# validation


class Validator:
    """Recall@K on an eval split: its clicked products plus a seeded sample, exact top-K."""

    def __init__(self, workdir, config: Config):
        from vlsearch.evaluation import CLICK_GRADE, read_beir_queries, read_qrels

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
            self.patches, self.has_image = features.patches(self.rows), features.has_image(self.rows)

    def recall(self, retriever: Retriever) -> float:
        from vlsearch.evaluation import recall_at_k

        queries = retriever.encode_queries([q.text for q in self.queries])
        products = retriever.encode_products(self.products, self.patches, self.has_image)
        scores = torch.from_numpy(queries) @ torch.from_numpy(products).T
        top = scores.topk(min(self.k, len(self.products)), dim=1).indices.numpy()
        run = {q.id: [self.products[j].id for j in row] for q, row in zip(self.queries, top)}
        return float(recall_at_k(run, self.qrels, self.k) or 0.0)


# --------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What a run did; ``format()`` is what the CLI prints."""

    out_dir: Path
    steps: int  # steps completed (the final step number)
    total_steps: int  # schedule length (train.steps)
    resumed_from: int | None = None  # checkpoint step the run continued from
    final_loss: float | None = None
    initial_val_recall: float | None = None
    val_recall: float | None = None
    eval_k: int = 0
    seconds: float = 0.0
    steps_per_s: float = 0.0
    samples_per_s: float = 0.0
    metrics_path: Path | None = None
    plot_path: Path | None = None
    checkpoint: Path | None = None
    history: list[dict] = field(default_factory=list, repr=False)
    is_main: bool = True  # False on DDP ranks other than 0 (print the result only where True)
    switches: list[str] = field(default_factory=list)  # schedule changes that move the loss

    def format(self) -> str:
        def fmt(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        lines = [
            f"model            {self.out_dir}",
            f"steps            {self.steps}/{self.total_steps}"
            + (f" (resumed from {self.resumed_from})" if self.resumed_from is not None else ""),
            f"final loss       {fmt(self.final_loss)}",
            f"val Recall@{self.eval_k:<5d}{fmt(self.initial_val_recall)} -> {fmt(self.val_recall)}",
            f"speed            {self.steps_per_s:.2f} steps/s, {self.samples_per_s:.1f} samples/s"
            + f" ({self.seconds:.1f} s)",
            f"metrics          {self.metrics_path}",
        ]
        lines += [f"note             {text}" for text in self.switches]
        return "\n".join(lines)


def _step_seeds(seed: int, step: int, rank: int) -> tuple[int, int]:
    """Two independent 63-bit seeds (dropout, masking) for one step of one rank."""
    a, b = np.random.SeedSequence([seed, step, rank, 1]).generate_state(2, dtype=np.uint64)
    return int(a >> np.uint64(1)), int(b >> np.uint64(1))


def _bank_tensors(bank: MemoryBank | None, world_size: int) -> dict[str, Tensor]:
    """Every rank's memory bank as ``bank.<rank>.<buffer>`` (a collective under DDP)."""
    if bank is None:
        return {}
    out = {}
    for name, value in bank.state_dict().items():
        value = value.reshape(-1) if value.ndim == 0 else value
        parts = [value]
        if world_size > 1:
            parts = [torch.empty_like(value) for _ in range(world_size)]
            dist.all_gather(parts, value.contiguous())
        for rank, part in enumerate(parts):
            out[f"bank.{rank}.{name}"] = part
    return out


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
            try:
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


def train(
    workdir,
    config: Config,
    out_dir: str | Path,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on ``workdir`` (path or Workdir) into ``out_dir``.

    ``config.train.steps`` is the schedule; ``steps`` stops the run early at that step
    (a checkpoint is written there, ``resume=True`` continues). ``resume`` continues from
    the newest valid checkpoint in ``out_dir/checkpoints`` (fresh start when there is none).
    """
    from vlsearch.workdir import Workdir

    t = config.train
    started_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(None if t.device == "auto" else t.device)
    previous_threads = torch.get_num_threads()
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    try:
        wd = workdir if isinstance(workdir, Workdir) else Workdir.open(workdir)
        return _train(wd, config, Path(out_dir), resume, steps, progress, info)
    finally:
        torch.set_num_threads(previous_threads)
        if started_group and info.world_size > 1:
            dist.destroy_process_group()


def _train(wd, config: Config, out_dir: Path, resume: bool, stop_at: int | None, progress: bool, info) -> TrainResult:
    t = config.train
    main = info.rank == 0
    device = info.device
    total = t.steps
    stop = total if stop_at is None else min(stop_at, total)
    ckpt_dir = out_dir / CHECKPOINT_DIR
    if not resume and list_checkpoints(ckpt_dir):
        raise WorkdirError(
            f"{ckpt_dir}: holds checkpoints of an earlier run; resume it (--resume) or use another --out"
        )

    torch.manual_seed(t.seed)  # same initial weights on every rank
    retriever = Retriever.build(config, wd).to(device)
    stream = ClickStream(wd, retriever, config, info.rank)
    trainer = Pretrainer(retriever, config).to(device)
    optimizer = make_optimizer(trainer, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, t.warmup_fraction))
    bank = None
    if t.memory_bank and t.w_qpm:
        bank = MemoryBank(t.memory_bank_batches * t.batch_size, retriever.embed_dim).to(device)

    start, resumed_from = 0, None
    checkpoint = latest_checkpoint(ckpt_dir) if resume else None
    if resume and checkpoint is None and list_checkpoints(ckpt_dir):
        found = list_checkpoints(ckpt_dir)
        raise CheckpointError(
            f"{ckpt_dir}: all {len(found)} checkpoints are corrupt (newest {found[-1].name}); "
            "nothing to resume from: remove them to start again, or use another --out")
    if checkpoint is not None:
        if checkpoint.state.get("config", {}).get("model") != config.to_dict()["model"]:
            raise WorkdirError(f"checkpoint {checkpoint.path}: made with another [model] config; use another --out")
        tensors = checkpoint.tensors
        trainer.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict(unflatten_optimizer(tensors, checkpoint.state["optimizer"]))
        scheduler.load_state_dict(checkpoint.state["scheduler"])
        if bank is not None:
            prefix = f"bank.{info.rank}."
            saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if saved:
                saved = {k: (v.reshape(()) if k in ("cursor", "filled") else v) for k, v in saved.items()}
                bank.load_state_dict(saved)
            else:
                _log(f"training: {checkpoint.path} has no memory bank for rank {info.rank}; starting it empty")
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        start = resumed_from = checkpoint.step
        if main:
            _log(f"training: resuming from {checkpoint.path} (step {start})")
    last_good = checkpoint.path if checkpoint is not None else None

    model = trainer
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(trainer, find_unused_parameters=True)

    validator = None
    if main and (t.eval_every > 0 or t.eval_at_start or stop == total):
        try:
            validator = Validator(wd, config)
        except (OSError, VlsearchError) as exc:
            _log(f"training: no validation ({exc})")

    metrics_path = out_dir / METRICS_FILE
    log = MetricsLog(metrics_path, main, keep_upto=start if resumed_from is not None else None,
                     tensorboard=out_dir / t.tensorboard_dir if t.tensorboard else None)

    def validate(step: int) -> float | None:
        value = None
        if validator is not None:
            value = validator.recall(retriever)
            log.write({"step": step, f"val_recall@{t.eval_k}": value})
        barrier()
        return value

    def checkpoint_now(step: int) -> Path:
        tensors = {f"model.{k}": v for k, v in trainer.state_dict().items()}
        opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        tensors.update(_bank_tensors(bank, info.world_size))
        tensors["rng.torch"] = torch.get_rng_state()
        path = ckpt_dir / f"step-{step:08d}"
        if main:
            state = {"config": config.to_dict(), "optimizer": opt_meta, "scheduler": scheduler.state_dict(),
                     "world_size": info.world_size}
            path = save_checkpoint(ckpt_dir, step, tensors, state, t.keep_checkpoints)
        barrier()
        return path

    initial_recall = None
    if start == 0 and t.eval_at_start and stop > 0:
        from vlsearch.progress import stage

        with stage(f"validation Recall@{t.eval_k} before the first step", progress and validator is not None):
            initial_recall = validate(0)

    use_amp = (device.type == "cuda" and t.bf16) or (device.type == "cpu" and t.cpu_bf16)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    mbns_from = int(t.memory_bank_start * total)
    cdns_from = int(t.cross_device_start * total)
    switches = []
    if bank is not None and mbns_from < stop:
        switches.append(f"memory-bank negatives switch on at step {mbns_from} (train.memory_bank_start = "
                        f"{t.memory_bank_start}): the matching loss jumps there, each query now competes "
                        f"with {t.memory_bank_batches} batches of earlier products too")
    if t.cross_device and info.world_size > 1 and cdns_from < stop:
        switches.append(f"cross-device negatives switch on at step {cdns_from} (train.cross_device_start = "
                        f"{t.cross_device_start}): the loss jumps there, each query now also competes with "
                        f"the other {info.world_size - 1} process(es)' products")
    params = [p for p in trainer.parameters() if p.requires_grad]
    bar = tqdm(total=stop, initial=start, disable=not (progress and main), desc="train", dynamic_ncols=True)
    started = time.perf_counter()
    window_start, window_steps = started, 0
    final_loss = None
    trainer.train()
    try:
        for step in range(start, stop):
            dropout_seed, mask_seed = _step_seeds(t.seed, step, info.rank)
            torch.manual_seed(dropout_seed)
            generator = torch.Generator().manual_seed(mask_seed)
            batch = stream.batch(step).to(device)
            memory = bank.negatives() if bank is not None and step >= mbns_from else None
            cross = t.cross_device and info.world_size > 1 and step >= cdns_from
            with autocast():
                out = model(batch, generator, memory, cross, step % t.mlm_every == 0)
            finite = torch.isfinite(out.loss.detach()).float()
            if info.world_size > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.terms.items())
                raise TrainingError(
                    f"step {step + 1}: non-finite loss {float(out.loss.detach()):.4g} ({terms}); last good checkpoint: "
                    f"{last_good or 'none'}" + (" (continue with --resume)" if last_good else "")
                )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            optimizer.step()
            scheduler.step()
            if bank is not None:
                bank.push(out.vectors, batch.product_ids, batch.log_q)
            done = step + 1
            window_steps += 1
            final_loss = float(out.loss.detach())
            bar.update(1)
            if done % max(1, t.log_every) == 0 or done == stop:
                now = time.perf_counter()
                row = {"step": done, "loss": final_loss}
                row.update({f"loss_{k}": float(out.terms[k].detach()) if k in out.terms else None for k in LOSS_TERMS})
                row.update(temperature=out.temperature, neg_in_batch=out.neg_in_batch,
                           neg_memory=out.neg_memory, neg_cross_device=out.neg_cross_device,
                           lr=scheduler.get_last_lr()[0],
                           samples_per_s=window_steps * t.batch_size * info.world_size / max(now - window_start, 1e-9))
                log.write(row)
                bar.set_postfix(loss=f"{final_loss:.3f}")
                window_start, window_steps = now, 0
            if t.eval_every > 0 and done % t.eval_every == 0 and done != stop:
                validate(done)
            if (t.checkpoint_every > 0 and done % t.checkpoint_every == 0) or done == stop:
                last_good = checkpoint_now(done)
    finally:
        bar.close()

    seconds = time.perf_counter() - started
    ran = stop - start
    key = f"val_recall@{t.eval_k}"
    final_recall = next((r[key] for r in log.rows if r.get("step") == stop and key in r), None)
    if validator is not None and final_recall is None and (stop == total or t.eval_every > 0):
        final_recall = validate(stop)
    else:
        barrier()
    plot_path = None
    log.close()
    if main:
        retriever.save(out_dir)
        plot_path = plot_metrics(log.rows, out_dir / PLOT_FILE)
    barrier()
    if initial_recall is None:
        initial_recall = next((r[key] for r in log.rows if r.get("step") == 0 and key in r), None)
    return TrainResult(
        out_dir=out_dir, steps=stop, total_steps=total, resumed_from=resumed_from, final_loss=final_loss,
        initial_val_recall=initial_recall, val_recall=final_recall, eval_k=t.eval_k, seconds=seconds,
        steps_per_s=ran / seconds if seconds > 0 and ran else 0.0,
        samples_per_s=ran * t.batch_size * info.world_size / seconds if seconds > 0 and ran else 0.0,
        metrics_path=metrics_path, plot_path=plot_path, checkpoint=last_good, history=log.rows, is_main=main,
        switches=switches,
    )


def plot_metrics(history: list[dict], path: Path) -> Path | None:
    """Loss terms and validation recall against step, as a PNG (matplotlib, Agg canvas)."""
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
