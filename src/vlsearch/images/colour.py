"""Per-patch colour histograms: what a patch's pixels are coloured, beside the CNN's features.

An ImageNet CNN is trained to be colour-invariant enough to name objects, and a frozen one
at 4 x 3 patches carries a product's colour only loosely (a linear probe over 12 base colours
of 4,000 catalog photos: 0.57 accuracy from EfficientNet-Lite0's mean patch vector, 0.62
from these histograms, 0.64 from both). With ``images.colour_levels`` L > 0 every patch vector
gets ``L**3`` more values: the share of the patch's pixels in each cell of an L x L x L RGB
grid, each pixel spread over its neighbouring cells by linear (tent) weights so that a small
colour change moves the histogram a little, square-rooted (the Hellinger map: a patch's
values then have unit L2 norm, and a small share of a colour still shows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def histogram_size(levels: int) -> int:
    """Values per patch for ``levels`` per RGB channel (0: no histogram)."""
    return levels**3 if levels > 0 else 0


def colour_histograms(pixels: Tensor, levels: int, grid: tuple[int, int]) -> Tensor:
    """``[B, 3, H, W]`` RGB in 0..1 → ``[B, levels**3, rows, cols]``: the square-rooted soft
    colour histogram of each of the ``rows x cols`` regions (adaptive average pooling, the
    regions of a stride-32 feature map at the default size)."""
    if levels < 2:
        raise ValueError(f"images.colour_levels: expected 0 or at least 2, got {levels}")
    centres = torch.linspace(0.0, 1.0, levels, device=pixels.device, dtype=pixels.dtype)
    # [B, 3, L, H, W]: each channel's tent weight on each level (they sum to 1 per pixel)
    weights = (1.0 - (pixels.clamp(0.0, 1.0).unsqueeze(2) - centres[:, None, None]).abs() * (levels - 1)).clamp(min=0.0)
    red, green, blue = weights.unbind(1)
    joint = torch.einsum("brhw,bghw,bchw->brgchw", red, green, blue).flatten(1, 3)
    return F.adaptive_avg_pool2d(joint, grid).clamp(min=0.0).sqrt()
