"""torch.distributed set-up for training: launched by torchrun (multi-process) or as one plain process.

Owns :class:`DistInfo` and :func:`init_distributed`, which reads torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and starts the
process group (nccl on CUDA, gloo on CPU). Without those variables, or with a world of one,
nothing is started and every helper here is a no-op, so the same training code runs
unchanged in a single process. :func:`broadcast_object` sends JSON, never pickle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank, the world, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None  # "nccl" | "gloo"; None for a single process
    device: torch.device


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_active() -> bool:
    """True when a process group is running (this process was launched by torchrun and joined)."""
    return _active()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: str | None = None) -> DistInfo:
    """Start (or describe an already started) process group from torchrun's environment.

    ``device``: None picks CUDA (``cuda:LOCAL_RANK``, nccl) when available, else CPU (gloo);
    ``"cpu"`` forces CPU and gloo.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    else:
        where = torch.device("cpu")
    if _active():
        return DistInfo(
            dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), where
        )
    if world_size <= 1:
        return DistInfo(0, 1, 0, None, where)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(
                f"WORLD_SIZE={world_size} but {name} is not set (launch with torchrun)"
            )
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, backend, where)


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank; no-op in a single process."""
    if _active():
        dist.barrier()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks, as a new detached tensor (the input is unchanged)."""
    result = tensor.detach().clone()
    if _active() and dist.get_world_size() > 1:
        dist.all_reduce(result, op=dist.ReduceOp.SUM)
        result /= dist.get_world_size()
    return result


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank; it must be JSON-serialisable (no pickle)."""
    if not _active() or dist.get_world_size() == 1:
        return obj
    where = _comm_device()
    if dist.get_rank() == src:
        data = bytearray(json.dumps(obj).encode("utf-8"))
        payload = torch.frombuffer(data, dtype=torch.uint8).to(where)
        length = torch.tensor([payload.numel()], dtype=torch.long, device=where)
    else:
        length = torch.zeros(1, dtype=torch.long, device=where)
    dist.broadcast(length, src)
    if dist.get_rank() != src:
        payload = torch.empty(int(length), dtype=torch.uint8, device=where)
    dist.broadcast(payload, src)
    return json.loads(payload.cpu().numpy().tobytes().decode("utf-8"))


def cleanup() -> None:
    """Destroy the process group if one was started; safe to call always."""
    if _active():
        dist.destroy_process_group()
