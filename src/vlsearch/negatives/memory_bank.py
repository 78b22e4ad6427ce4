"""Memory Bank Negative Sampling (MBNS, Delving §2.2) and the `NegativeSet` both samplers return.

Owns a FIFO queue of recent product vectors (with their catalog row ids and log sampling
probabilities). Unlike MoCo there is no momentum encoder: the vectors the product tower
produced in earlier steps are stored detached, and are never back-propagated through.
Everything lives in buffers, so the queue is part of ``state_dict`` and a resumed run
continues with the same negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class NegativeSet:
    """Extra negatives for query-product matching; always detached (no gradient)."""

    vectors: Tensor  # [M, d] product vectors, no grad
    product_ids: Tensor  # [M] int64, row index of the product in the prepared catalog
    log_q: Tensor  # [M] float, log sampling probability (0 when unknown)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


class MemoryBank(nn.Module):
    """FIFO queue of the last ``size`` product vectors; the oldest entries drop out first.

    ``size`` counts vectors and is meant to be a multiple of the batch size (``batches *
    batch_size``); a smaller last batch still works, it simply wraps at a different place.
    Call :meth:`push` once per step, after the loss has used :meth:`negatives`.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(
                f"MemoryBank size and dim must be positive, got size={size}, dim={dim}"
            )
        self.size = size
        self.dim = dim
        self.register_buffer("vectors", torch.zeros(size, dim))
        self.register_buffer("product_ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("log_q", torch.zeros(size))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # slots holding data

    def __len__(self) -> int:
        return int(self.filled)

    @torch.no_grad()
    def push(self, vectors: Tensor, product_ids: Tensor, log_q: Tensor | None = None) -> None:
        """Append a batch (detached); once full, it overwrites the oldest entries."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(
                f"MemoryBank.push: vectors must be [n, {self.dim}], got {tuple(vectors.shape)}"
            )
        n = vectors.shape[0]
        if product_ids.shape != (n,) or (log_q is not None and log_q.shape != (n,)):
            raise ValueError(f"MemoryBank.push: product_ids and log_q must be [{n}]")
        if log_q is None:
            log_q = torch.zeros(n)
        if n > self.size:  # only the newest `size` entries can survive anyway
            vectors, product_ids, log_q = (
                vectors[-self.size :],
                product_ids[-self.size :],
                log_q[-self.size :],
            )
            n = self.size
        slots = (int(self.cursor) + torch.arange(n)) % self.size
        slots = slots.to(self.vectors.device)
        self.vectors[slots] = vectors.detach().to(self.vectors)
        self.product_ids[slots] = product_ids.to(self.product_ids)
        self.log_q[slots] = log_q.detach().to(self.log_q)
        self.cursor.fill_((int(self.cursor) + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))

    def negatives(self) -> NegativeSet | None:
        """The filled part, oldest first, as copies (a later push cannot change them); None if empty."""
        filled = int(self.filled)
        if filled == 0:
            return None
        if filled < self.size:
            order = torch.arange(filled)
        else:  # full: the oldest entry sits at the cursor
            order = (int(self.cursor) + torch.arange(self.size)) % self.size
        order = order.to(self.vectors.device)
        return NegativeSet(self.vectors[order], self.product_ids[order], self.log_q[order])
