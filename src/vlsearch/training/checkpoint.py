"""Checkpoints: ``out_dir/checkpoints/step-N`` written atomically, verified on read, resumed.

A checkpoint holds the weights, the flattened optimizer state and every rank's memory bank
in one safetensors file plus ``state.json`` (config, schedule, optimizer groups, the file's
sha256). A checkpoint that fails its checksum or does not parse is refused and the previous
one used; only the newest ``train.keep_checkpoints`` are kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from vlsearch.errors import WorkdirError
from vlsearch.io import atomic_write, atomic_write_json, fsync_dir, read_json, temp_dir
from vlsearch.negatives import MemoryBank
from vlsearch.training.metrics import log

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_TENSORS = "tensors.safetensors"
CHECKPOINT_STATE = "state.json"


class CheckpointError(WorkdirError):
    """A checkpoint is missing files, truncated or corrupt."""


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
            log(f"training: refusing {exc}; trying the previous checkpoint")
    return None



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



def checkpoint_tensors(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, bank: MemoryBank | None,
                       world_size: int) -> tuple[dict[str, Tensor], dict]:
    """The tensors of a checkpoint (``model.*``, ``optimizer.*``, ``bank.*``) and the
    optimizer's JSON part; a collective under DDP (every rank's memory bank)."""
    tensors = {f"model.{k}": v for k, v in objective.state_dict().items()}
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors.update(_bank_tensors(bank, world_size))
    return tensors, opt_meta


def restore_checkpoint(checkpoint: Checkpoint, objective: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler, bank: MemoryBank | None, rank: int) -> None:
    """Load weights, optimizer, schedule and this rank's memory bank from ``checkpoint``.

    No RNG state: every step reseeds torch from ``(train.seed, step, rank)``, so the state
    at a checkpoint has no effect (an older checkpoint's ``rng.torch`` tensor is ignored).
    """
    tensors = checkpoint.tensors
    objective.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer.load_state_dict(unflatten_optimizer(tensors, checkpoint.state["optimizer"]))
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    if bank is not None:
        prefix = f"bank.{rank}."
        saved = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if saved:
            saved = {k: (v.reshape(()) if k in ("cursor", "filled") else v) for k, v in saved.items()}
            bank.load_state_dict(saved)
        else:
            log(f"training: {checkpoint.path} has no memory bank for rank {rank}; starting it empty")
