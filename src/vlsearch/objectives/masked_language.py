"""Masked Language Modeling (MLM, MAKE) on query and title tokens: BERT masking and a tied head.

Owns :func:`mask_tokens` (select ``probability`` of the non-special tokens; of those, 80%
become ``[MASK]``, 10% a random token, 10% stay; deterministic given a ``torch.Generator``)
and :class:`MaskedLanguageModeling` (BERT's prediction head: dense + GELU + LayerNorm, then
a decoder whose weight is the word-embedding matrix, plus its own bias).

Tying: the head reads ``tied_embedding.weight`` at every forward but does not register the
embedding as its submodule, so the matrix is saved once (by the tower that owns it;
safetensors refuses shared tensors) and the gradient of the decoder lands on the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlsearch.config import TrainConfig

IGNORE_INDEX = -100  # label of a position the MLM loss skips (not selected for masking)


def mask_tokens(
    input_ids: Tensor,
    special_tokens_mask: Tensor,
    *,
    vocab_size: int,
    mask_id: int,
    probability: float = TrainConfig.mlm_probability,
    generator: torch.Generator,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """BERT masking: returns ``(masked_ids, labels)``; labels are IGNORE_INDEX where not selected.

    ``special_tokens_mask`` is True (or 1) at [CLS]/[SEP]/[PAD] and any other position that
    must never be selected. Of the selected tokens, ``mask_fraction`` become ``mask_id``,
    ``random_fraction`` a uniform random id in ``[0, vocab_size)``, the rest stay unchanged.
    All draws come from ``generator`` (on its own device), so the same seed gives the same masks.
    """
    if input_ids.shape != special_tokens_mask.shape:
        raise ValueError(
            f"mask_tokens: input_ids {tuple(input_ids.shape)} and special_tokens_mask "
            f"{tuple(special_tokens_mask.shape)} must have the same shape"
        )
    if not 0.0 <= probability <= 1.0 or mask_fraction + random_fraction > 1.0:
        raise ValueError(
            "mask_tokens: probability in [0, 1] and mask_fraction + random_fraction <= 1"
        )
    shape, where = input_ids.shape, generator.device

    def uniform() -> Tensor:
        return torch.rand(shape, generator=generator, device=where).to(input_ids.device)

    selected = (uniform() < probability) & ~special_tokens_mask.bool()
    action = uniform()
    to_mask = selected & (action < mask_fraction)
    to_random = selected & (action >= mask_fraction) & (action < mask_fraction + random_fraction)
    random_ids = torch.randint(vocab_size, shape, generator=generator, device=where).to(input_ids)
    masked_ids = input_ids.masked_fill(to_mask, mask_id)
    masked_ids = torch.where(to_random, random_ids, masked_ids)
    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    return masked_ids, labels


class MaskedLanguageModeling(nn.Module):
    """Prediction head + cross entropy over the labelled positions (labels != IGNORE_INDEX)."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        tied_embedding: nn.Embedding | None,
        layer_norm_eps: float = 1e-12,
    ):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        if tied_embedding is None:
            self.decoder_weight = nn.Parameter(torch.empty(vocab_size, hidden_size))
            nn.init.normal_(self.decoder_weight, std=hidden_size**-0.5)
            self._tied: tuple[nn.Embedding, ...] = ()
        else:
            if tuple(tied_embedding.weight.shape) != (vocab_size, hidden_size):
                raise ValueError(
                    f"MLM: tied embedding is {tuple(tied_embedding.weight.shape)}, "
                    f"expected ({vocab_size}, {hidden_size})"
                )
            self._tied = (tied_embedding,)  # a plain tuple: not registered, not in state_dict

    @property
    def decoder(self) -> Tensor:
        """[vocab_size, hidden_size] output matrix (the word embeddings when tied)."""
        return self._tied[0].weight if self._tied else self.decoder_weight

    def logits(self, hidden_states: Tensor) -> Tensor:
        """Vocabulary logits for hidden states [..., hidden_size]."""
        hidden = self.layer_norm(F.gelu(self.dense(hidden_states)))
        return F.linear(hidden, self.decoder, self.bias)

    def forward(self, hidden_states: Tensor, labels: Tensor) -> Tensor:
        if hidden_states.shape[:-1] != labels.shape:
            raise ValueError(
                f"MLM: hidden_states {tuple(hidden_states.shape)} do not match labels {tuple(labels.shape)}"
            )
        chosen = labels != IGNORE_INDEX
        logits = self.logits(hidden_states[chosen])  # only labelled positions reach the vocab
        if logits.shape[0] == 0:  # nothing masked: zero, still attached to the graph
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), labels[chosen])
