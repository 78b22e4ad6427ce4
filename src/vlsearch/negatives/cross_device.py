"""Cross-Device Negative Sampling (CDNS, Delving §2.2): other ranks' product vectors as negatives.

Owns :func:`gather_across_devices`, an ``all_gather`` of the product vectors, ids and log
sampling probabilities of every *other* rank. The gathered copies are detached: each rank
back-propagates only through its own products, so a product gets gradient from the
queries of its own rank only (the same trade-off as open_clip without ``gather_with_grad``).

Layout: the result is ordered by rank with the caller's rank left out, e.g. on rank 1 of 3
it is ``[rank 0's batch, rank 2's batch]``. Batches may differ in size (the last batch of
an epoch): sizes are gathered first, every rank pads to the largest, and the padding is
trimmed after the gather, so no padded row ever becomes a negative.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from vlsearch.negatives.memory_bank import NegativeSet


def gather_across_devices(
    vectors: Tensor, product_ids: Tensor, log_q: Tensor | None = None, group=None
) -> NegativeSet | None:
    """The other ranks' ``(vectors, product_ids, log_q)``; None when not distributed or alone.

    Every rank of ``group`` must call this in the same step (it is a collective). ``log_q``
    None means unknown (zeros). Tensors must be on the device the backend expects (CUDA for
    nccl, anything for gloo).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return None
    rank = dist.get_rank(group)
    n = vectors.shape[0]
    if product_ids.shape != (n,) or (log_q is not None and log_q.shape != (n,)):
        raise ValueError(f"gather_across_devices: product_ids and log_q must be [{n}]")
    if log_q is None:
        log_q = torch.zeros(n, device=vectors.device)

    size = torch.tensor([n], dtype=torch.long, device=vectors.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    sizes = [int(s) for s in sizes]
    largest = max(sizes)
    if sum(sizes) - n == 0:  # every other rank is empty: nothing to add (same answer everywhere)
        return None

    def gather(tensor: Tensor) -> list[Tensor]:
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[:n] = tensor
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return [part[:s] for part, s in zip(parts, sizes)]

    others = [r for r in range(world_size) if r != rank]
    gathered = [gather(t.detach()) for t in (vectors, product_ids.long(), log_q)]
    return NegativeSet(*(torch.cat([parts[r] for r in others]) for parts in gathered))
