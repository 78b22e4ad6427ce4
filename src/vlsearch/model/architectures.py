"""``RetrievalModel``: the query and product towers; every architecture is a setting of one class.

``ModelConfig.architecture`` picks how the towers are wired:

- ``make``: separate query tower; title tower + image tower + fusion; product = Modal
  Adaptation over (title, image, fused).
- ``uni-encoder`` (FashionBERT-like): one BERT for queries and products; a product is one
  sequence of title tokens followed by projected image patches (token type 1).
- ``dual-encoder`` (CLIP-like): one text tower for queries and titles, an image tower;
  product = combination of the normalised title and image vectors.
- ``mixed-encoder`` (CommerceMM-like): shared text tower, image tower, fusion layer;
  product = the fused vector.

``use_images=False`` gives a title-only product tower for any architecture. Every output
vector is L2-normalised. ``has_image`` is ``[B]`` (one image per product) or, with
``model.max_images`` N > 1, ``[B, N]`` (which of the N image slots hold an image; patches
``[B, N*P, D]``): the image view is then the image tower's pooling of the set, the fused view
attends to the present images' patches, and Modal Adaptation weighs the title against them
(the uni-encoder reads one image only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig

from vlsearch.config import ModelConfig
from vlsearch.model.fusion import Fusion, ModalAdaptation, uniform_weights
from vlsearch.model.towers import ImageEncoder, PatchInput, TextEncoder, pool

ARCHITECTURES = ("make", "uni-encoder", "dual-encoder", "mixed-encoder")


def modalities(cfg: ModelConfig) -> tuple[str, ...]:
    """Names of the vectors a product is combined from (the columns of the MA weights)."""
    if not cfg.use_images:
        return ("title",)
    return {
        "make": ("title", "image", "fused"),
        "uni-encoder": ("joint",),
        "dual-encoder": ("title", "image"),
        "mixed-encoder": ("fused",),
    }[cfg.architecture]


@dataclass
class ProductOutput:
    """Product vectors [B, E] (normalised), the weight each modality got [B, K] and, when the
    product is combined from several, the normalised modality vectors themselves [B, K, E]
    (in ``RetrievalModel.modalities`` order; None for a single view)."""

    vectors: Tensor
    weights: Tensor
    views: Tensor | None = None


class RetrievalModel(nn.Module):
    """Query tower + product tower, wired by ``cfg.architecture`` (see the module docstring)."""

    def __init__(
        self,
        cfg: ModelConfig,
        text: BertConfig,
        patch_dim: int,
        num_patches: int,
        pretrained: Path | None = None,
    ):
        super().__init__()
        if cfg.architecture not in ARCHITECTURES:
            raise ValueError(f"model.architecture: expected one of {ARCHITECTURES}, got {cfg.architecture!r}")
        if cfg.max_images != 1 and cfg.use_images and cfg.architecture == "uni-encoder":
            raise ValueError("model.max_images > 1 needs an image tower; the uni-encoder reads one image")
        self.cfg = cfg
        self.modalities = modalities(cfg)
        self.num_patches = num_patches
        hidden = text.hidden_size
        self.text = TextEncoder(text, cfg.pooling, pretrained, cfg.length_groups)  # titles (and queries unless make)
        self.query = TextEncoder(text, cfg.pooling, pretrained, cfg.length_groups) if cfg.architecture == "make" else None

        def projection() -> nn.Module:
            return nn.Linear(hidden, cfg.embed_dim) if cfg.project else nn.Identity()

        self.proj = nn.ModuleDict({"text": projection()})
        if self.query is not None:
            self.proj["query"] = projection()
            if cfg.tied_projection_init:
                # Both towers start from one checkpoint; equal heads keep its query-title
                # similarity at step 0 instead of comparing two unrelated random projections.
                self.proj["query"].load_state_dict(self.proj["text"].state_dict())
        self.patch_input = self.image = self.fusion = self.adaptation = None
        if cfg.use_images:
            if cfg.architecture == "uni-encoder":
                self.patch_input = PatchInput(patch_dim, hidden, text.initializer_range)
            else:
                self.image = ImageEncoder(patch_dim, num_patches, text, cfg)
            if cfg.architecture in ("make", "mixed-encoder"):
                self.fusion = Fusion(
                    hidden, text.num_attention_heads, text.intermediate_size, cfg.fusion_layers, cfg.dropout
                )
            for name in self.modalities:
                if name not in ("title", "joint"):
                    self.proj[name] = projection()
            if cfg.modal_adaptation and len(self.modalities) > 1:
                out_dim = cfg.embed_dim if cfg.project else hidden
                self.adaptation = ModalAdaptation(out_dim, len(self.modalities), cfg.ma_hidden_size)

    # --- queries -------------------------------------------------------------------------
    @property
    def query_tower(self) -> TextEncoder:
        return self.query if self.query is not None else self.text

    def encode_query(self, ids: Tensor, mask: Tensor, types: Tensor) -> Tensor:
        pooled, _ = self.query_tower(ids, mask, types)
        proj = self.proj["query"] if self.query is not None else self.proj["text"]
        return F.normalize(proj(pooled).float(), dim=-1)

    # --- products ------------------------------------------------------------------------
    def _joint(self, ids: Tensor, mask: Tensor, patches: Tensor, has_image: Tensor, mpm_mask=None):
        """Uni-encoder: title tokens then image patches in one sequence through the text BERT."""
        tokens = self.text.word_embeddings(ids)
        images = self.patch_input(patches.to(tokens.dtype), mpm_mask)
        inputs = torch.cat([tokens, images.to(tokens.dtype)], dim=1)
        image_mask = has_image.unsqueeze(1).expand(-1, patches.shape[1]).to(mask.dtype)
        full_mask = torch.cat([mask, image_mask], dim=1)
        types = torch.cat([torch.zeros_like(ids), torch.ones_like(image_mask)], dim=1)
        hidden = self.text.bert(inputs_embeds=inputs, attention_mask=full_mask, token_type_ids=types)
        hidden = hidden.last_hidden_state
        return pool(hidden, full_mask, self.text.pooling), hidden[:, ids.shape[1]:]

    def encode_product(self, ids: Tensor, mask: Tensor, patches: Tensor | None, has_image: Tensor) -> ProductOutput:
        batch = ids.shape[0]
        if not self.cfg.use_images:
            pooled, _ = self.text(ids, mask)
            vector = F.normalize(self.proj["text"](pooled).float(), dim=-1)
            return ProductOutput(vector, torch.ones(batch, 1, device=vector.device))
        has_image = has_image.bool()
        if self.cfg.architecture == "uni-encoder":
            pooled, _ = self._joint(ids, mask, patches, has_image)
            vector = F.normalize(self.proj["text"](pooled).float(), dim=-1)
            return ProductOutput(vector, torch.ones(batch, 1, device=vector.device))
        image_mask, has_image, token_mask = self._image_masks(has_image)
        views: dict[str, Tensor] = {}
        title, title_tokens = self.text(ids, mask)
        views["title"] = title
        image, image_tokens = self.image(patches.to(title.dtype), image_mask=image_mask)
        views["image"] = image
        if self.fusion is not None:
            views["fused"] = self.fusion(title_tokens, mask, image_tokens, token_mask)
        names = self.modalities
        vectors = torch.stack(
            [F.normalize(self.proj["text" if n == "title" else n](views[n]).float(), dim=-1) for n in names],
            dim=1,
        )
        # a product without an image has only its title (the fused view then sees the title alone)
        available = torch.stack(
            [torch.ones_like(has_image) if n == "title" else has_image for n in names], dim=1
        )
        if names == ("fused",):
            available = torch.ones_like(available)
        if self.adaptation is not None:
            weights = self.adaptation(vectors, available)
        else:
            weights = uniform_weights(available)
        combined = (weights.unsqueeze(-1) * vectors).sum(1)
        return ProductOutput(F.normalize(combined, dim=-1), weights, vectors)

    def _image_masks(self, has_image: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """``has_image`` [B] or [B, N] -> (the per-image mask [B, N] or None, any image [B],
        the image-token mask the fusion reads: [B] or [B, N*P])."""
        if has_image.dim() == 1:
            return None, has_image, has_image
        image_mask = has_image.bool()
        return image_mask, image_mask.any(1), image_mask.repeat_interleave(self.num_patches, dim=1)

    # --- pre-training views ----------------------------------------------------------------
    def predict_patches(self, ids: Tensor, mask: Tensor, patches: Tensor, has_image: Tensor, mpm_mask: Tensor) -> Tensor:
        """MPM: patch-space predictions [B, P, D] (``[B, N*P, D]`` with several images) for
        images whose ``mpm_mask`` patches are masked."""
        if self.cfg.architecture == "uni-encoder":
            _, outputs = self._joint(ids, mask, patches, has_image.bool(), mpm_mask)
            return self.patch_input.mpm_head(outputs)
        image_mask = has_image.bool() if has_image.dim() == 2 else None
        _, outputs = self.image(patches, mpm_mask, image_mask=image_mask)
        return self.image.patches.mpm_head(outputs)

    @property
    def patch_dim(self) -> int:
        module = self.patch_input if self.patch_input is not None else self.image.patches
        return module.project.in_features
