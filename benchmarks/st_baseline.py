"""The alternative a team would glue together by hand: a sentence-transformers fine-tune.

The packaged all-MiniLM-L6-v2 (the same weights vlsearch's towers start from, offline) is
fine-tuned with ``MultipleNegativesRankingLoss`` (in-batch negatives, scale 20) on the very
pairs vlsearch trains on: ``vlsearch.training.ClickLog`` draws the same clicks for the same
(seed, step). One shared encoder, natural word order, mean pooling + normalisation (the
model's own modules); the product text is the title, optionally with attribute text
(``vlsearch.model.product_text``). AdamW with linear warm-up and decay, as the library's own
``fit`` does; no image. Used by ``benchmarks/quality.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MARKER = "vlsearch_st_baseline.json"  # written last: a complete saved model


@dataclass(frozen=True)
class StSettings:
    """Training settings of the baseline (sentence-transformers' own defaults where it has one)."""

    lr: float = 2e-5  # SentenceTransformer.fit default
    warmup_fraction: float = 0.1  # share of steps with linear warm-up (then linear decay)
    weight_decay: float = 0.01  # fit default
    max_seq_length: int = 64  # tokens per text (titles + attributes fit)
    scale: float = 20.0  # MultipleNegativesRankingLoss default (1 / temperature)
    grad_clip: float = 1.0  # fit default max_grad_norm
    encode_batch_size: int = 128  # texts per forward pass when encoding


def load_base(settings: StSettings = StSettings()):
    from sentence_transformers import SentenceTransformer

    from vlsearch.text import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    model.max_seq_length = settings.max_seq_length
    return model


def product_texts(products: Sequence, template: Sequence[str]) -> list[str]:
    from vlsearch.model.product_text import product_texts as texts

    return texts(products, template, ", ", sort_title=False)


def train(workdir, out_dir: Path, template: Sequence[str], steps: int, batch_size: int, seed: int,
          settings: StSettings = StSettings(), log_every: int = 10) -> dict:
    """Fine-tune for ``steps`` steps of ``batch_size`` pairs; save into ``out_dir``."""
    import torch
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from vlsearch.training import ClickLog, lr_factor

    torch.manual_seed(seed)
    model = load_base(settings)
    loss_fn = MultipleNegativesRankingLoss(model, scale=settings.scale)
    log = ClickLog(workdir, seed, batch_size)
    texts = product_texts(workdir.products(), template)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, settings.warmup_fraction))
    curve = []
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        torch.manual_seed(seed * 1_000_003 + step)  # dropout of this step
        queries, rows = log.pairs(step)
        features = [model.preprocess(queries), model.preprocess([texts[r] for r in rows])]
        loss = loss_fn(features, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        if (step + 1) % max(1, log_every) == 0 or step + 1 == steps:
            curve.append({"step": step + 1, "loss": float(loss.detach()), "loss_qpm": float(loss.detach())})
    seconds = time.perf_counter() - started
    out_dir = Path(out_dir)
    model.save(str(out_dir))
    (out_dir / MARKER).write_text(json.dumps({"steps": steps, "template": list(template)}))
    return {"steps": steps, "wall_s": round(seconds, 1),
            "steps_per_s": round(steps / seconds, 3) if seconds else 0.0,
            "samples_per_s": round(steps * batch_size / seconds, 2) if seconds else 0.0,
            "final_loss": curve[-1]["loss"] if curve else None, "curve": curve}


class StEncoder:
    """Query and product encoding with a (fine-tuned or base) sentence-transformers model."""

    def __init__(self, model, template: Sequence[str], settings: StSettings = StSettings()):
        self.model, self.template, self.settings = model, tuple(template), settings

    @classmethod
    def load(cls, model_dir: Path | None, template: Sequence[str], settings: StSettings = StSettings()):
        if model_dir is None:
            return cls(load_base(settings), template, settings)
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(model_dir), device="cpu")
        model.max_seq_length = settings.max_seq_length
        return cls(model, template, settings)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.settings.encode_batch_size,
                                 normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False).astype(np.float32)

    def encode_products(self, products: Sequence) -> np.ndarray:
        return self.encode_queries(product_texts(products, self.template))


def is_saved(model_dir: Path) -> bool:
    return (Path(model_dir) / MARKER).exists()
