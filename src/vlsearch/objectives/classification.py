"""Query-Product Classification (QPC, MAKE): one AM-Softmax classifier over categories.

Owns :class:`AMSoftmaxClassifier`. The same module (same weights) classifies the query
vectors and the product vectors into the product's category, so both towers are pulled
towards shared category directions; the trainer calls it on each and sums (or on the
concatenation). AM-Softmax (additive margin): features and class weights are
L2-normalised, the target cosine is reduced by ``margin`` and all cosines are multiplied
by ``scale`` before the cross entropy. Label ``UNKNOWN_CATEGORY`` (-1) is ignored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlsearch.config import TrainConfig

UNKNOWN_CATEGORY = -1  # label of a product without a known category; ignored by the loss


class AMSoftmaxClassifier(nn.Module):
    """Additive-margin softmax: ``logits = scale * (cos(x, w_c) - margin * [c == y])``."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        margin: float = TrainConfig.qpc_margin,
        scale: float = TrainConfig.qpc_scale,
    ):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(
                f"AMSoftmaxClassifier: num_classes must be positive, got {num_classes}"
            )
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin = margin
        self.scale = scale

    def cosine(self, vectors: Tensor) -> Tensor:
        """[N, num_classes] cosine of each vector with each class direction (for prediction)."""
        return F.normalize(vectors.float(), dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, vectors: Tensor, labels: Tensor) -> Tensor:
        if labels.shape != (vectors.shape[0],):
            raise ValueError(f"QPC: labels must be [{vectors.shape[0]}], got {tuple(labels.shape)}")
        num_classes = self.weight.shape[0]
        if bool(((labels < UNKNOWN_CATEGORY) | (labels >= num_classes)).any()):
            raise ValueError(
                f"QPC: labels must be in [0, {num_classes}) or {UNKNOWN_CATEGORY} (unknown)"
            )
        known = labels != UNKNOWN_CATEGORY
        cosine = self.cosine(vectors[known])
        if cosine.shape[0] == 0:  # no known category in the batch: zero, still attached
            return cosine.sum() * 0.0
        target = labels[known]
        margin = F.one_hot(target, num_classes).to(cosine) * self.margin
        return F.cross_entropy(self.scale * (cosine - margin), target)
