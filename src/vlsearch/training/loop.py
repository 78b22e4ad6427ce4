"""The training loop: ``train(workdir, config, out_dir)`` reads top to bottom as named steps.

``train`` builds the run (model, click stream, objective, optimizer, schedule, memory bank),
restores the newest valid checkpoint when resuming, then for every step: *step* (seeded
forward, finite-loss check, backward, optimizer), *log* (a ``metrics.jsonl`` row),
*evaluate* (validation Recall@K), *checkpoint*; and *finish* (final recall, save the model,
plot). Launched by torchrun it runs DDP (gloo on CPU, nccl on CUDA); only rank 0 writes files.

Determinism: every random draw of a step (which clicks, which tokens/patches are masked,
dropout) is seeded from ``(train.seed, step, rank)``, so a resumed run continues the very
same stream and each rank draws its own shard.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from vlsearch.config import Config
from vlsearch.distributed import DistInfo, barrier, init_distributed
from vlsearch.errors import VlsearchError, WorkdirError
from vlsearch.model import Retriever
from vlsearch.negatives import MemoryBank
from vlsearch.progress import stage
from vlsearch.training.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_tensors,
    latest_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from vlsearch.training.data import ClickStream
from vlsearch.training.metrics import (
    LOSS_TERMS,
    METRICS_FILE,
    PLOT_FILE,
    MetricsLog,
    TrainingError,
    Validator,
    log,
    plot_metrics,
)
from vlsearch.training.objective import PretrainingObjective, StepOutput, lr_factor, make_optimizer
from vlsearch.workdir import Workdir


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


def _train(wd: Workdir, config: Config, out_dir: Path, resume: bool, stop_at: int | None, progress: bool,
           info: DistInfo) -> TrainResult:
    """The run, top to bottom: build, restore, start, then step / log / evaluate /
    checkpoint until ``stop``, then finish."""
    t = config.train
    run = _build(wd, config, out_dir, resume, stop_at, info)
    if resume:
        _restore(run)
    _start(run)
    initial_recall = _evaluate_at_start(run, progress)
    params = [p for p in run.objective.parameters() if p.requires_grad]
    bar = tqdm(total=run.stop, initial=run.start, disable=not (progress and run.main), desc="train",
               dynamic_ncols=True)
    started = time.perf_counter()
    run.logged = (started, run.start)
    final_loss = None
    run.objective.train()
    try:
        for step in range(run.start, run.stop):
            out = _step(run, step, params)
            done = step + 1
            final_loss = float(out.loss.detach())
            bar.update(1)
            if done % max(1, t.log_every) == 0 or done == run.stop:
                _log_step(run, done, out)
                bar.set_postfix(loss=f"{final_loss:.3f}")
            if t.eval_every > 0 and done % t.eval_every == 0 and done != run.stop:
                _evaluate(run, done)
            if (t.checkpoint_every > 0 and done % t.checkpoint_every == 0) or done == run.stop:
                run.last_good = _checkpoint(run, done)
    finally:
        bar.close()
    return _finish(run, initial_recall, final_loss, time.perf_counter() - started)


# --------------------------------------------------------------------------------------
# the named steps


@dataclass
class _Run:
    """One run's state: built by ``_build``, advanced by the steps below."""

    wd: Workdir
    config: Config
    out_dir: Path
    info: DistInfo
    retriever: Retriever
    stream: ClickStream
    objective: PretrainingObjective  # the retrieval model (``retriever.model``) plus the training heads
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    bank: MemoryBank | None
    stop: int  # the last step of this run (train.steps, or the early stop)
    autocast: Callable[[], contextlib.AbstractContextManager]
    memory_from: int  # first step with memory-bank negatives
    cross_from: int  # first step with cross-device negatives
    start: int = 0
    resumed_from: int | None = None
    last_good: Path | None = None  # the newest checkpoint written or resumed from
    forward: nn.Module | None = None  # the objective, or its DDP wrapper
    validator: Validator | None = None
    metrics: MetricsLog | None = None
    logged: tuple[float, int] = (0.0, 0)  # (time, step) of the last metrics row, for samples/s

    @property
    def main(self) -> bool:
        return self.info.rank == 0

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / CHECKPOINT_DIR


def _build(wd: Workdir, config: Config, out_dir: Path, resume: bool, stop_at: int | None, info: DistInfo) -> _Run:
    """Model, click stream, objective, optimizer, schedule and memory bank (same initial
    weights on every rank)."""
    t = config.train
    total = t.steps
    checkpoints = out_dir / CHECKPOINT_DIR
    if not resume and list_checkpoints(checkpoints):
        raise WorkdirError(
            f"{checkpoints}: holds checkpoints of an earlier run; resume it (--resume) or use another --out"
        )
    device = info.device
    torch.manual_seed(t.seed)  # same initial weights on every rank
    retriever = Retriever.build(config, wd).to(device)
    stream = ClickStream(wd, retriever, config, info.rank)
    objective = PretrainingObjective(retriever, config).to(device)
    optimizer = make_optimizer(objective, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, t.warmup_fraction))
    bank = None
    if t.memory_bank and t.w_qpm:
        bank = MemoryBank(t.memory_bank_batches * t.batch_size, retriever.embed_dim).to(device)
    use_amp = (device.type == "cuda" and t.bf16) or (device.type == "cpu" and t.cpu_bf16)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
    return _Run(
        wd, config, out_dir, info, retriever, stream, objective, optimizer, scheduler, bank,
        stop=total if stop_at is None else min(stop_at, total), autocast=autocast,
        memory_from=int(t.memory_bank_start * total), cross_from=int(t.cross_device_start * total),
    )


def _restore(run: _Run) -> None:
    """Continue from the newest valid checkpoint (none: a fresh start; all corrupt: refuse)."""
    checkpoint = latest_checkpoint(run.checkpoints)
    if checkpoint is None:
        found = list_checkpoints(run.checkpoints)
        if found:
            raise CheckpointError(
                f"{run.checkpoints}: all {len(found)} checkpoints are corrupt (newest {found[-1].name}); "
                "nothing to resume from: remove them to start again, or use another --out")
        return
    if checkpoint.state.get("config", {}).get("model") != run.config.to_dict()["model"]:
        raise WorkdirError(f"checkpoint {checkpoint.path}: made with another [model] config; use another --out")
    restore_checkpoint(checkpoint, run.objective, run.optimizer, run.scheduler, run.bank, run.info.rank)
    run.start = run.resumed_from = checkpoint.step
    run.last_good = checkpoint.path
    if run.main:
        log(f"training: resuming from {checkpoint.path} (step {run.start})")


def _start(run: _Run) -> None:
    """DDP over the (restored) objective; the validator and the metrics log (rank 0)."""
    t = run.config.train
    run.forward = run.objective
    if run.info.world_size > 1:
        run.forward = nn.parallel.DistributedDataParallel(run.objective, find_unused_parameters=True)
    if run.main and (t.eval_every > 0 or t.eval_at_start or run.stop == t.steps):
        try:
            run.validator = Validator(run.wd, run.config)
        except (OSError, VlsearchError) as exc:
            log(f"training: no validation ({exc})")
    run.metrics = MetricsLog(run.out_dir / METRICS_FILE, run.main,
                             keep_upto=run.start if run.resumed_from is not None else None,
                             tensorboard=run.out_dir / t.tensorboard_dir if t.tensorboard else None)


def _step_seeds(seed: int, step: int, rank: int) -> tuple[int, int]:
    """Two independent 63-bit seeds (dropout, masking) for one step of one rank."""
    a, b = np.random.SeedSequence([seed, step, rank, 1]).generate_state(2, dtype=np.uint64)
    return int(a >> np.uint64(1)), int(b >> np.uint64(1))


def _step(run: _Run, step: int, params: list[nn.Parameter]) -> StepOutput:
    """One optimizer step, every random draw seeded from (seed, step, rank)."""
    t, info = run.config.train, run.info
    dropout_seed, mask_seed = _step_seeds(t.seed, step, info.rank)
    torch.manual_seed(dropout_seed)
    generator = torch.Generator().manual_seed(mask_seed)
    batch = run.stream.batch(step).to(info.device)
    memory = run.bank.negatives() if run.bank is not None and step >= run.memory_from else None
    cross = t.cross_device and info.world_size > 1 and step >= run.cross_from
    with run.autocast():
        out = run.forward(batch, generator, memory, cross, step % t.mlm_every == 0)
    _check_finite(run, step, out)
    run.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if t.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    if run.bank is not None:
        run.bank.push(out.vectors, batch.product_ids, batch.log_q)
    return out


def _check_finite(run: _Run, step: int, out: StepOutput) -> None:
    """Stop every rank on a non-finite loss, naming the step and the last good checkpoint."""
    finite = torch.isfinite(out.loss.detach()).float()
    if run.info.world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1:
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.terms.items())
        last_good = run.last_good
        raise TrainingError(
            f"step {step + 1}: non-finite loss {float(out.loss.detach()):.4g} ({terms}); last good checkpoint: "
            f"{last_good or 'none'}" + (" (continue with --resume)" if last_good else "")
        )


def _log_step(run: _Run, done: int, out: StepOutput) -> None:
    """One ``metrics.jsonl`` row: loss and its terms, temperature, negatives, lr, samples/s."""
    t = run.config.train
    now = time.perf_counter()
    since, since_step = run.logged
    row = {"step": done, "loss": float(out.loss.detach())}
    row.update({f"loss_{k}": float(out.terms[k].detach()) if k in out.terms else None for k in LOSS_TERMS})
    row.update(temperature=out.temperature, neg_in_batch=out.neg_in_batch,
               neg_memory=out.neg_memory, neg_cross_device=out.neg_cross_device,
               lr=run.scheduler.get_last_lr()[0],
               samples_per_s=(done - since_step) * t.batch_size * run.info.world_size / max(now - since, 1e-9))
    run.metrics.write(row)
    run.logged = (now, done)


def _evaluate(run: _Run, step: int) -> float | None:
    """Validation Recall@K on rank 0 (a metrics row); every rank waits for it."""
    value = None
    if run.validator is not None:
        value = run.validator.recall(run.retriever)
        run.metrics.write({"step": step, f"val_recall@{run.config.train.eval_k}": value})
    barrier()
    return value


def _evaluate_at_start(run: _Run, progress: bool) -> float | None:
    """Recall before the first step (``train.eval_at_start``; not on a resumed run)."""
    t = run.config.train
    if not (run.start == 0 and t.eval_at_start and run.stop > 0):
        return None
    with stage(f"validation Recall@{t.eval_k} before the first step", progress and run.validator is not None):
        return _evaluate(run, 0)


def _checkpoint(run: _Run, step: int) -> Path:
    """Write ``checkpoints/step-N`` (rank 0; every rank's memory bank gathered into it)."""
    t = run.config.train
    tensors, optimizer_meta = checkpoint_tensors(run.objective, run.optimizer, run.bank, run.info.world_size)
    path = run.checkpoints / f"step-{step:08d}"
    if run.main:
        state = {"config": run.config.to_dict(), "optimizer": optimizer_meta,
                 "scheduler": run.scheduler.state_dict(), "world_size": run.info.world_size}
        path = save_checkpoint(run.checkpoints, step, tensors, state, t.keep_checkpoints)
    barrier()
    return path


def _finish(run: _Run, initial_recall: float | None, final_loss: float | None, seconds: float) -> TrainResult:
    """Final validation, save the model and the plot (rank 0), and say what the run did."""
    t, stop, rows = run.config.train, run.stop, run.metrics.rows
    ran = stop - run.start
    key = f"val_recall@{t.eval_k}"
    final_recall = next((r[key] for r in rows if r.get("step") == stop and key in r), None)
    if run.validator is not None and final_recall is None and (stop == t.steps or t.eval_every > 0):
        final_recall = _evaluate(run, stop)
    else:
        barrier()
    plot_path = None
    run.metrics.close()
    if run.main:
        run.retriever.save(run.out_dir)
        plot_path = plot_metrics(rows, run.out_dir / PLOT_FILE)
    barrier()
    if initial_recall is None:
        initial_recall = next((r[key] for r in rows if r.get("step") == 0 and key in r), None)
    samples = ran * t.batch_size * run.info.world_size
    return TrainResult(
        out_dir=run.out_dir, steps=stop, total_steps=t.steps, resumed_from=run.resumed_from,
        final_loss=final_loss, initial_val_recall=initial_recall, val_recall=final_recall, eval_k=t.eval_k,
        seconds=seconds, steps_per_s=ran / seconds if seconds > 0 and ran else 0.0,
        samples_per_s=samples / seconds if seconds > 0 and ran else 0.0,
        metrics_path=run.out_dir / METRICS_FILE, plot_path=plot_path, checkpoint=run.last_good,
        history=rows, is_main=run.main, switches=_switch_notes(run),
    )


def _switch_notes(run: _Run) -> list[str]:
    """Schedule changes that make the loss jump (printed with the result)."""
    t, stop, world_size = run.config.train, run.stop, run.info.world_size
    notes = []
    if run.bank is not None and run.memory_from < stop:
        notes.append(f"memory-bank negatives switch on at step {run.memory_from} (train.memory_bank_start = "
                     f"{t.memory_bank_start}): the matching loss jumps there, each query now competes "
                     f"with {t.memory_bank_batches} batches of earlier products too")
    if t.cross_device and world_size > 1 and run.cross_from < stop:
        notes.append(f"cross-device negatives switch on at step {run.cross_from} (train.cross_device_start = "
                     f"{t.cross_device_start}): the loss jumps there, each query now also competes with "
                     f"the other {world_size - 1} process(es)' products")
    return notes
