"""Masked Patch Modeling (MPM): the contrastive task of Delving and the regression baseline of MAKE.

Owns :class:`ContrastiveMaskedPatch`, :class:`RegressionMaskedPatch` and
:func:`masked_patch_objective` (picks one from ``TrainConfig.mpm_kind``). Both take the same
arguments, so the trainer swaps them freely:

- ``predicted`` [N_mask, D]: image-transformer outputs at the masked positions, projected
  back to the patch-vector space;
- ``targets`` [N_all, D]: every (real, not padded) input patch vector of the batch, the
  candidates. The caller passes them **detached** (``targets.detach()``): they are the
  inputs to be recognised, and letting gradient into them would let the model move the
  targets towards its predictions instead of learning to predict;
- ``target_index`` [N_mask] int64: the row of each masked patch's own input in ``targets``.

Contrastive (DESIGN.md):
``L = -1/N_mask sum_i log exp(cos(h_i, v_i)/tau_m) / sum_j exp(cos(h_i, v_j)/tau_m)``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vlsearch.config import TrainConfig
from vlsearch.objectives.matching import Temperature


def _check(predicted: Tensor, targets: Tensor, target_index: Tensor) -> None:
    if predicted.ndim != 2 or targets.ndim != 2 or predicted.shape[1] != targets.shape[1]:
        raise ValueError(
            f"MPM: predicted {tuple(predicted.shape)} and targets {tuple(targets.shape)} "
            "must be [N_mask, D] and [N_all, D]"
        )
    if target_index.shape != (predicted.shape[0],):
        raise ValueError(
            f"MPM: target_index must be [{predicted.shape[0]}], got {tuple(target_index.shape)}"
        )


class ContrastiveMaskedPatch(nn.Module):
    """Each masked output must pick its own input patch among all patches of the batch (InfoNCE)."""

    def __init__(
        self,
        init_temperature: float = TrainConfig.mpm_init_temperature,
        learn_temperature: bool = True,
        min_temperature: float = 0.01,
    ):
        super().__init__()
        self.tau = Temperature(init_temperature, learn_temperature, min_temperature)

    def forward(self, predicted: Tensor, targets: Tensor, target_index: Tensor) -> Tensor:
        _check(predicted, targets, target_index)
        cosine = F.normalize(predicted.float(), dim=-1) @ F.normalize(targets.float(), dim=-1).T
        logits = cosine / self.tau()
        if predicted.shape[0] == 0:  # nothing masked: zero, still attached to the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target_index.to(logits.device))


class RegressionMaskedPatch(nn.Module):
    """MAKE's baseline: mean squared error between each masked output and its input patch vector."""

    def forward(self, predicted: Tensor, targets: Tensor, target_index: Tensor) -> Tensor:
        _check(predicted, targets, target_index)
        chosen = targets[target_index.to(targets.device)]
        if predicted.shape[0] == 0:
            return predicted.sum() * 0.0
        return F.mse_loss(predicted.float(), chosen.float())


def masked_patch_objective(
    kind: str = TrainConfig.mpm_kind,
    init_temperature: float = TrainConfig.mpm_init_temperature,
    learn_temperature: bool = True,
) -> nn.Module:
    """The MPM module named by ``TrainConfig.mpm_kind`` (contrastive | regression)."""
    if kind == "contrastive":
        return ContrastiveMaskedPatch(init_temperature, learn_temperature)
    if kind == "regression":
        return RegressionMaskedPatch()
    raise ValueError(f"train.mpm_kind: expected 'contrastive' or 'regression', got {kind!r}")
