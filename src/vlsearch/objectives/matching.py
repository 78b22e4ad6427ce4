"""Query-Product Matching (QPM): contrastive softmax over in-batch, memory-bank and cross-device negatives.

Owns :class:`QueryProductMatching`, :class:`MatchingOutput` and the learnable
:class:`Temperature` (also used by contrastive MPM). The form is DESIGN.md "Objectives":

    s'(q, p) = (q . p) / tau - log Q(p)          (the - log Q(p) term only with logq_correction)
    L = - log exp s'(q, p+) / [ sum_B exp s' + alpha sum_M exp s' + beta sum_C exp s' ]

with B the batch's products (the positive included), M the memory bank and C the other
devices. The weights enter as ``log alpha`` / ``log beta`` added to those logit blocks, so
the whole thing is one cross entropy. Every negative whose product id equals the query's
positive id (the same product clicked by two queries of the batch, or seen again in the
queue or on another rank) is masked out: it is not a negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlsearch.config import ModelConfig, TrainConfig
from vlsearch.negatives import NegativeSet


class Temperature(nn.Module):
    """A positive temperature ``tau = exp(log_tau)``, learnable or fixed, floored at ``min_value``.

    Parametrised in log space so it stays positive; the floor keeps logits bounded (CLIP's
    cap on the logit scale). Keep ``log_tau`` out of weight decay: decay pulls tau to 1.
    """

    def __init__(self, init: float, learnable: bool = True, min_value: float = 0.01):
        super().__init__()
        if init <= 0 or min_value <= 0:
            raise ValueError(
                f"temperature must be positive, got init={init}, min_value={min_value}"
            )
        log_tau = torch.tensor(math.log(init))
        if learnable:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        self.min_value = min_value

    def forward(self) -> Tensor:
        return self.log_tau.exp().clamp(min=self.min_value)


@dataclass
class MatchingOutput:
    """QPM loss and what the training log reports about it."""

    loss: Tensor  # scalar, with grad
    logits: Tensor  # [B, B + M + C] detached s' (+ log alpha / log beta); masked entries -inf
    temperature: float  # current tau
    neg_in_batch: float  # mean unmasked in-batch negatives per query
    neg_memory: float  # mean unmasked memory-bank negatives per query
    neg_cross_device: float  # mean unmasked cross-device negatives per query


class QueryProductMatching(nn.Module):
    """Contrastive QPM loss; row i of ``p`` is the positive of query ``q_i``; q, p L2-normalised."""

    def __init__(
        self,
        init_temperature: float = ModelConfig.init_temperature,
        logq_correction: bool = TrainConfig.logq_correction,
        memory_weight: float = TrainConfig.memory_bank_weight,
        cross_device_weight: float = TrainConfig.cross_device_weight,
        learn_temperature: bool = True,
        min_temperature: float = 0.01,
    ):
        super().__init__()
        if memory_weight < 0 or cross_device_weight < 0:
            raise ValueError("memory_weight and cross_device_weight must be >= 0")
        self.tau = Temperature(init_temperature, learn_temperature, min_temperature)
        self.logq_correction = logq_correction
        self.memory_weight = memory_weight
        self.cross_device_weight = cross_device_weight

    def _block(
        self, q: Tensor, tau: Tensor, candidates: NegativeSet, positive_ids: Tensor, weight: float
    ) -> tuple[Tensor, Tensor]:
        """s' of q against one block of candidates (+ log weight), and the same-id mask."""
        logits = q @ candidates.vectors.to(q).T / tau + math.log(weight)
        if self.logq_correction:
            logits = logits - candidates.log_q.to(q)[None, :]
        same = positive_ids[:, None] == candidates.product_ids.to(positive_ids.device)[None, :]
        return logits, same

    def forward(
        self,
        q: Tensor,
        p: Tensor,
        product_ids: Tensor,
        log_q: Tensor | None = None,
        memory: NegativeSet | None = None,
        cross_device: NegativeSet | None = None,
    ) -> MatchingOutput:
        batch = q.shape[0]
        if batch == 0 or p.shape != q.shape or product_ids.shape != (batch,):
            raise ValueError(
                f"QPM: q {tuple(q.shape)} and p {tuple(p.shape)} must match (non-empty), "
                f"product_ids must be [{batch}]"
            )
        q = q.float()
        tau = self.tau()
        in_batch = NegativeSet(p, product_ids, torch.zeros(batch) if log_q is None else log_q)
        logits, same = self._block(q, tau, in_batch, product_ids, 1.0)
        diagonal = torch.eye(batch, dtype=torch.bool, device=q.device)
        blocks, masks = [logits], [same & ~diagonal]  # the positive itself is never masked
        counts = [float((~masks[0]).sum() - batch)]
        for extra, weight in (
            (memory, self.memory_weight),
            (cross_device, self.cross_device_weight),
        ):
            if extra is None or len(extra) == 0 or weight == 0:
                counts.append(0.0)
                continue
            detached = NegativeSet(extra.vectors.detach(), extra.product_ids, extra.log_q.detach())
            logits, same = self._block(q, tau, detached, product_ids, weight)
            blocks.append(logits)
            masks.append(same)
            counts.append(float((~same).sum()))
        logits = torch.cat(blocks, dim=1).masked_fill(torch.cat(masks, dim=1), float("-inf"))
        loss = F.cross_entropy(logits, torch.arange(batch, device=q.device))
        return MatchingOutput(
            loss=loss,
            logits=logits.detach(),
            temperature=float(tau.detach()),
            neg_in_batch=counts[0] / batch,
            neg_memory=counts[1] / batch,
            neg_cross_device=counts[2] / batch,
        )
