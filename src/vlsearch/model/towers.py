"""Encoders: BERT text towers (``transformers.BertModel``) and the image transformer over patch vectors.

The text tower is a plain ``BertModel`` (MiniLM weights, random, or any local BERT dir).
The image tower projects the cached CNN patch vectors to the hidden size, prepends a
learned [CLS] vector and runs a small ``BertModel`` over them (``inputs_embeds``: it adds
the learned position embeddings and the LayerNorm). Masked Patch Modeling replaces the
projected vectors of masked patches by a learned [MASK] vector; ``mpm_head`` maps outputs
back to the *raw* patch-vector space, the MPM targets (fixed inputs, so no loss can move
its own targets).

With ``model.max_images`` N > 1 the image tower reads the patches of up to N images of a
product, ``[B, N*P, D]`` in catalog order: each patch keeps its grid position within its
image (the position embeddings of one image are shared by all) and gets a learned
image-position vector added; ``image_mask [B, N]`` masks absent images out of the attention.
The [CLS] output then pools the product's image set. The image-position embedding exists only
when N > 1, so single-image models keep their weights and outputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

from vlsearch.config import ModelConfig
from vlsearch.errors import WorkdirError
from vlsearch.text import minilm_dir

POOLINGS = ("mean", "cls")


def init_dir(cfg: ModelConfig) -> Path | None:
    """Directory whose BERT weights initialise the text towers (None for random init)."""
    if cfg.init == "random":
        return None
    if cfg.init == "minilm":
        return Path(minilm_dir())
    path = Path(cfg.init)
    if not (path / "config.json").exists():
        raise WorkdirError(
            f"model.init = {cfg.init!r}: expected 'minilm', 'random' or a local BERT directory "
            "with config.json and weights"
        )
    return path


def text_config(cfg: ModelConfig, vocab_size: int) -> BertConfig:
    """The text towers' BertConfig: the checkpoint's own, or one made from ModelConfig sizes."""
    path = init_dir(cfg)
    if path is not None:
        return BertConfig.from_pretrained(path)
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )


def pool(hidden: Tensor, mask: Tensor, how: str) -> Tensor:
    """[B, T, H] -> [B, H]: the first ([CLS]) output or the mean over unmasked positions."""
    if how == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """A BERT tower; ``forward`` gives (pooled [B, H], token outputs [B, T, H])."""

    def __init__(self, config: BertConfig, pooling: str, pretrained: Path | None = None, length_groups: int = 1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling: expected one of {POOLINGS}, got {pooling!r}")
        if length_groups < 1:
            raise ValueError(f"model.length_groups: expected 1 or more, got {length_groups}")
        self.length_groups = length_groups
        if pretrained is not None:
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
            try:
                self.bert = BertModel.from_pretrained(pretrained, add_pooling_layer=False)
            finally:
                hf_logging.set_verbosity(verbosity)
                hf_logging.enable_progress_bar()
        else:
            self.bert = BertModel(config, add_pooling_layer=False)
        self.pooling = pooling
        self.pretrained = pretrained is not None  # weights came from a checkpoint

    @property
    def hidden_size(self) -> int:
        return self.bert.config.hidden_size

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def hidden(self, ids: Tensor, mask: Tensor, types: Tensor | None = None) -> Tensor:
        """Token outputs [B, T, H]. With ``length_groups`` > 1 the rows are sorted by length and
        run in that many groups, each trimmed to its widest row; outputs past a group's width
        are zeros (padded positions: every reader masks them, pooling, fusion and MLM)."""
        groups = min(self.length_groups, ids.shape[0])
        if groups <= 1:
            return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        lengths = mask.sum(1)
        order = torch.argsort(lengths, stable=True)
        pieces = []
        for rows in torch.tensor_split(order, groups):
            width = max(int(lengths[rows].max()), 1)
            part_types = None if types is None else types[rows, :width]
            out = self.bert(input_ids=ids[rows, :width], attention_mask=mask[rows, :width],
                            token_type_ids=part_types).last_hidden_state
            pieces.append(F.pad(out, (0, 0, 0, ids.shape[1] - width)))
        return torch.cat(pieces)[torch.argsort(order)]

    def forward(self, ids: Tensor, mask: Tensor, types: Tensor | None = None) -> tuple[Tensor, Tensor]:
        hidden = self.hidden(ids, mask, types)
        return pool(hidden, mask, self.pooling), hidden


class PatchInput(nn.Module):
    """Patch vectors -> hidden size, the MPM [MASK] vector, and the MPM head back to patch space."""

    def __init__(self, patch_dim: int, hidden: int, init_range: float):
        super().__init__()
        self.project = nn.Linear(patch_dim, hidden)
        self.mask_vector = nn.Parameter(torch.randn(hidden) * init_range)
        self.mpm_head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Linear(hidden, patch_dim)
        )

    def forward(self, patches: Tensor, mpm_mask: Tensor | None = None) -> Tensor:
        x = self.project(patches)
        if mpm_mask is not None:
            x = torch.where(mpm_mask.unsqueeze(-1), self.mask_vector.to(x.dtype), x)
        return x


class ImageEncoder(nn.Module):
    """[CLS] + projected patches through a small BertModel; ``forward`` gives (pooled, patch outputs).

    ``max_images`` > 1 (``model.max_images``): ``patches`` hold up to that many images of
    ``num_patches`` each, ``image_mask [B, N]`` says which are present (see the module docstring).
    """

    def __init__(self, patch_dim: int, num_patches: int, text: BertConfig, cfg: ModelConfig):
        super().__init__()
        config = BertConfig(
            vocab_size=1,  # inputs are always inputs_embeds
            type_vocab_size=1,
            hidden_size=text.hidden_size,
            num_hidden_layers=cfg.image_layers,
            num_attention_heads=text.num_attention_heads,
            intermediate_size=text.intermediate_size,
            max_position_embeddings=num_patches + 1,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
        )
        if cfg.max_images < 1:
            raise ValueError(f"model.max_images: expected >= 1, got {cfg.max_images}")
        self.patches = PatchInput(patch_dim, text.hidden_size, config.initializer_range)
        self.cls = nn.Parameter(torch.randn(text.hidden_size) * config.initializer_range)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.num_patches = num_patches
        self.max_images = cfg.max_images
        if cfg.max_images > 1:  # only then: single-image models keep their state dict
            self.image_position = nn.Parameter(
                torch.randn(cfg.max_images, text.hidden_size) * config.initializer_range
            )

    def forward(self, patches: Tensor, mpm_mask: Tensor | None = None,
                image_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.patches(patches, mpm_mask)
        cls = self.cls.to(x.dtype).expand(x.shape[0], 1, -1)
        if self.max_images == 1:
            hidden = self.bert(inputs_embeds=torch.cat([cls, x], dim=1)).last_hidden_state
            return hidden[:, 0], hidden[:, 1:]
        images = x.shape[1] // self.num_patches
        if images * self.num_patches != x.shape[1] or images > self.max_images:
            raise ValueError(
                f"image tower: {x.shape[1]} patches is not up to {self.max_images} images of {self.num_patches}"
            )
        x = x + self.image_position[:images].to(x.dtype).repeat_interleave(self.num_patches, dim=0)
        grid = torch.arange(1, self.num_patches + 1, device=x.device).repeat(images)
        positions = torch.cat([grid.new_zeros(1), grid]).unsqueeze(0).expand(x.shape[0], -1)
        attention = None
        if image_mask is not None:
            tokens = image_mask.bool().repeat_interleave(self.num_patches, dim=1)
            attention = torch.cat([tokens.new_ones(x.shape[0], 1), tokens], dim=1).long()
        hidden = self.bert(inputs_embeds=torch.cat([cls, x], dim=1), attention_mask=attention,
                           position_ids=positions).last_hidden_state
        return hidden[:, 0], hidden[:, 1:]
