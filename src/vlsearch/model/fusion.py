"""Cross-modal fusion and Modal Adaptation (MAKE).

``Fusion``: a transformer over the concatenated title and image token outputs (with a
learned modality embedding), mean-pooled over the valid tokens: the *fused* view.

``ModalAdaptation``: per-product softmax weights over the modality vectors (title, image,
fused), from a small MLP over their concatenation. Unavailable modalities (no image) get
weight 0, so a product without an image puts all its weight on the title. ``uniform_weights``
is the switch-off: equal weights over what is available.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Fusion(nn.Module):
    """Transformer over [title tokens ; image tokens] -> one pooled vector per product."""

    def __init__(self, hidden: int, heads: int, intermediate: int, layers: int, dropout: float):
        super().__init__()
        self.modality = nn.Embedding(2, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, intermediate, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, title: Tensor, title_mask: Tensor, image: Tensor, has_image: Tensor) -> Tensor:
        """``has_image``: [B] (all image tokens or none) or a per-token mask [B, T_image]."""
        x = torch.cat([title + self.modality.weight[0], image + self.modality.weight[1]], dim=1)
        image_mask = has_image.unsqueeze(1).expand(-1, image.shape[1]) if has_image.dim() == 1 else has_image
        valid = torch.cat([title_mask.bool(), image_mask.bool()], dim=1)
        out = self.norm(self.encoder(x, src_key_padding_mask=~valid))
        weights = valid.unsqueeze(-1).to(out.dtype)
        return (out * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class ModalAdaptation(nn.Module):
    """Softmax weights [B, K] over K modality vectors [B, K, E]; masked modalities get 0."""

    def __init__(self, dim: int, num_modalities: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim * num_modalities, hidden), nn.GELU(), nn.Linear(hidden, num_modalities)
        )

    def forward(self, vectors: Tensor, available: Tensor) -> Tensor:
        inputs = (vectors * available.unsqueeze(-1).to(vectors.dtype)).flatten(1)
        logits = self.mlp(inputs).float().masked_fill(~available, float("-inf"))
        return torch.softmax(logits, dim=-1)


def uniform_weights(available: Tensor) -> Tensor:
    """Equal weights over the available modalities (Modal Adaptation switched off)."""
    weights = available.float()
    return weights / weights.sum(-1, keepdim=True)
