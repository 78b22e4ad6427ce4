"""The pre-training objective module and its optimizer and schedule.

:class:`PretrainingObjective` holds the retrieval model (``.model``, the same module as
``Retriever.model``) plus the training-only heads (query-product matching, masked patch /
language modelling, category classification, title-image alignment); ``forward`` gives one
step's weighted loss.
``make_optimizer`` and ``lr_factor`` are the AdamW groups and the warm-up/decay schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlsearch.config import Config, ConfigError, TrainConfig
from vlsearch.model import Retriever
from vlsearch.model.architectures import ProductOutput
from vlsearch.model.towers import TextEncoder
from vlsearch.negatives import NegativeSet, gather_across_devices
from vlsearch.objectives import (
    AMSoftmaxClassifier,
    MaskedLanguageModeling,
    QueryProductMatching,
    TitleImageAlignment,
    mask_tokens,
    masked_patch_objective,
)
from vlsearch.training.data import Batch


@dataclass
class StepOutput:
    loss: Tensor
    terms: dict[str, Tensor]
    vectors: Tensor  # detached product vectors (for the memory bank)
    temperature: float = 0.0
    neg_in_batch: float = 0.0
    neg_memory: float = 0.0
    neg_cross_device: float = 0.0


class PretrainingObjective(nn.Module):
    """The pre-training objective: the retrieval model plus the training-only objective
    modules; ``forward`` gives the loss. An objective whose weight is zero is neither built
    nor computed.

    ``.model`` is the retrieval model itself (``Retriever.model``, not a copy): its weights
    are saved as ``model.model.*`` in a checkpoint, so the attribute keeps that name.
    """

    def __init__(self, retriever: Retriever, config: Config):
        super().__init__()
        t, m = config.train, config.model
        self.model = retriever.model
        self.weights = {"qpm": t.w_qpm, "mpm": t.w_mpm if m.use_images else 0.0, "mlm": t.w_mlm,
                        "qpc": t.w_qpc if retriever.categories else 0.0,
                        "tia": t.w_tia if {"title", "image"} <= set(self.model.modalities) else 0.0}
        if t.w_tia and not self.weights["tia"]:
            raise ConfigError(
                f"train.w_tia = {t.w_tia}: title-image alignment needs a product tower with title and "
                f"image vectors (model.architecture make or dual-encoder, use_images), "
                f"this one has {self.model.modalities}"
            )
        self.qpm = QueryProductMatching(
            m.init_temperature, t.logq_correction, t.memory_bank_weight, t.cross_device_weight
        )
        self.mpm = masked_patch_objective(t.mpm_kind, t.mpm_init_temperature) if self.weights["mpm"] else None
        self.mask_ratio = t.mpm_mask_ratio
        self.mlm_probability = t.mlm_probability
        self.mlm_fraction = t.mlm_fraction
        if not 0.0 < t.mlm_fraction <= 1.0:
            raise ConfigError(f"train.mlm_fraction must be in (0, 1], got {t.mlm_fraction}")
        if t.mlm_every < 1:
            raise ConfigError(f"train.mlm_every must be at least 1, got {t.mlm_every}")
        if t.freeze_word_embeddings:  # no dense [vocab x hidden] gradient and AdamW update
            for tower in self.model.modules():
                if isinstance(tower, TextEncoder):
                    tower.word_embeddings.weight.requires_grad_(False)
        tok = retriever.tokenizer
        self.vocab_size, self.mask_id = tok.vocab_size, tok.mask_id
        self.register_buffer("special_ids", torch.as_tensor(tok.special_ids), persistent=False)
        self.mlm_query = self.mlm_title = None
        if self.weights["mlm"]:
            text = self.model.text
            self.mlm_title = MaskedLanguageModeling(text.hidden_size, tok.vocab_size, text.word_embeddings)
            if self.model.query is not None:
                q = self.model.query
                self.mlm_query = MaskedLanguageModeling(q.hidden_size, tok.vocab_size, q.word_embeddings)
        self.qpc = None
        if self.weights["qpc"]:
            self.qpc = AMSoftmaxClassifier(retriever.embed_dim, len(retriever.categories), t.qpc_margin, t.qpc_scale)
        self.tia = TitleImageAlignment(m.init_temperature) if self.weights["tia"] else None

    def forward(self, batch: Batch, generator: torch.Generator, memory: NegativeSet | None = None,
                cross_device: bool = False, with_mlm: bool = True) -> StepOutput:
        """The weighted loss of one step; ``with_mlm=False`` skips MLM (``train.mlm_every``)."""
        model = self.model
        # the towers may run under bf16 autocast; the vectors and the similarity logits are
        # fp32 (a bf16 logit of 20 has a resolution of 0.125, too coarse for the softmax)
        q = model.encode_query(batch.q_ids, batch.q_mask, batch.q_types).float()
        product = model.encode_product(batch.t_ids, batch.t_mask, batch.patches, batch.has_image)
        p = product.vectors.float()
        others = gather_across_devices(p, batch.product_ids, batch.log_q) if cross_device else None
        terms: dict[str, Tensor] = {}
        out = StepOutput(p.new_zeros(()), terms, p.detach())
        with torch.autocast(p.device.type, enabled=False):
            if self.weights["qpm"]:
                match = self.qpm(q, p, batch.product_ids, batch.log_q, memory, others)
                terms["qpm"] = match.loss
                out.temperature, out.neg_in_batch = match.temperature, match.neg_in_batch
                out.neg_memory, out.neg_cross_device = match.neg_memory, match.neg_cross_device
            if self.qpc is not None:
                terms["qpc"] = 0.5 * (self.qpc(q, batch.labels) + self.qpc(p, batch.labels))
            if self.tia is not None:
                terms["tia"] = self._tia(product, batch)
        if self.mpm is not None:
            terms["mpm"] = self._mpm(batch, generator).float()
        if self.mlm_title is not None and with_mlm:
            terms["mlm"] = self._mlm(batch, generator).float()
        out.loss = sum(self.weights[name] * value for name, value in terms.items())
        return out

    def _tia(self, product: ProductOutput, batch: Batch) -> Tensor:
        """Title-image alignment over the batch's products that have an image."""
        names = self.model.modalities
        views = product.views.float()
        has_image = batch.has_image.bool()
        if has_image.dim() == 2:  # several images per product: any of them
            has_image = has_image.any(1)
        return self.tia(views[:, names.index("title")], views[:, names.index("image")],
                        batch.product_ids, has_image)

    def _mlm(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """MLM on titles (title tower) and queries (query tower; the same tower when shared)."""
        losses = []
        n = math.ceil(self.mlm_fraction * len(batch.t_ids))  # train.mlm_fraction of the pairs
        for ids, mask, types, tower, head in (
            (batch.t_ids[:n], batch.t_mask[:n], None, self.model.text, self.mlm_title),
            (batch.q_ids[:n], batch.q_mask[:n], batch.q_types[:n], self.model.query_tower,
             self.mlm_query or self.mlm_title),
        ):
            masked, labels = mask_tokens(
                ids, torch.isin(ids, self.special_ids), vocab_size=self.vocab_size, mask_id=self.mask_id,
                probability=self.mlm_probability, generator=generator,
            )
            losses.append(head(tower.hidden(masked, mask, types), labels))
        return 0.5 * (losses[0] + losses[1])

    def _mpm(self, batch: Batch, generator: torch.Generator) -> Tensor:
        """Mask ``mpm_mask_ratio`` of each image's patches; predict the raw patch vectors.
        With several images per product (``has_image [B, N]``) the ratio is of the present
        images' patches, and absent ones are never masked."""
        several = batch.has_image.dim() == 2
        rows = (batch.has_image.any(1) if several else batch.has_image).nonzero(as_tuple=True)[0]
        if len(rows) == 0:  # no image in the batch: nothing to mask
            return batch.patches.new_zeros(())
        patches = batch.patches[rows]
        n, num_patches, _ = patches.shape
        if several:
            chosen = _chosen_patches(batch.has_image[rows].cpu(), num_patches, self.mask_ratio, generator)
            chosen = chosen.to(patches.device)
        else:
            k = max(1, round(self.mask_ratio * num_patches))
            order = torch.rand(n, num_patches, generator=generator).argsort(dim=1)[:, :k]
            chosen = torch.zeros(n, num_patches, dtype=torch.bool).scatter_(1, order, True).to(patches.device)
        predicted = self.model.predict_patches(
            batch.t_ids[rows], batch.t_mask[rows], patches, batch.has_image[rows], chosen
        )
        image, patch = chosen.nonzero(as_tuple=True)
        targets = patches.reshape(n * num_patches, -1).detach()
        return self.mpm(predicted[image, patch], targets, image * num_patches + patch)


def _chosen_patches(image_mask: Tensor, num_patches: int, ratio: float, generator: torch.Generator) -> Tensor:
    """[n, T] bool: ``ratio`` of the present images' patches of each row (at least one), at
    random; ``image_mask [n, N]`` says which of the N images (T // N patches each) are present."""
    valid = image_mask.bool().repeat_interleave(num_patches // image_mask.shape[1], dim=1)
    k = (ratio * valid.sum(1)).round().clamp(min=1)
    scores = torch.rand(valid.shape, generator=generator).masked_fill(~valid, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    return rank < k.unsqueeze(1)


def make_optimizer(module: nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; matrices decay, vectors/scalars (biases, norms, temperatures) do not.

    Towers loaded from a checkpoint train at ``t.lr``; every layer that starts from random
    weights (heads, image tower, fusion, Modal Adaptation, objectives) at ``t.new_layer_lr``,
    since a fine-tuning rate barely moves a freshly initialised layer in a short run.
    """
    pretrained = {
        id(p) for m in module.modules() if isinstance(m, TextEncoder) and m.pretrained
        for p in m.parameters()
    }
    groups = []
    for from_checkpoint, lr in ((True, t.lr), (False, t.new_layer_lr)):
        params = [p for p in module.parameters() if p.requires_grad and (id(p) in pretrained) == from_checkpoint]
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "weight_decay": t.weight_decay, "lr": lr},
                   {"params": rest, "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr, betas=(0.9, t.adam_beta2))


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up over ``warmup_fraction`` of the steps, then linear decay to 0."""
    warmup = max(1, math.ceil(warmup_fraction * total))
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))

