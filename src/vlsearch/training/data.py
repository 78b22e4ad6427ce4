"""Training data: the click log sampled per step, tokenized once, served as :class:`Batch`.

``ClickLog.draw(step)`` depends only on ``(train.seed, step, rank)``, so a resumed run sees
the very same stream and each rank draws its own shard. ``ClickStream`` tokenizes every
distinct query (with its keywords) and every product text once and gathers rows by index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vlsearch.config import Config
from vlsearch.errors import WorkdirError
from vlsearch.model import Retriever
from vlsearch.objectives import UNKNOWN_CATEGORY
from vlsearch.text import Encoded, concat_encoded
from vlsearch.training.metrics import log


@dataclass
class Batch:
    """One step's (query, product) pairs as tensors."""

    q_ids: Tensor
    q_mask: Tensor
    q_types: Tensor
    t_ids: Tensor
    t_mask: Tensor
    patches: Tensor | None  # [B, P, D] float32 raw patch vectors ([B, N*P, D]: model.max_images N > 1)
    has_image: Tensor  # [B] bool ([B, N]: which of the N images are present)
    product_ids: Tensor  # [B] int64 product row
    log_q: Tensor  # [B] log sampling probability of the product
    labels: Tensor  # [B] category index, -1 unknown

    def to(self, device: torch.device) -> Batch:
        return Batch(**{k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()})


def _trim(ids: np.ndarray, mask: np.ndarray, *more: np.ndarray) -> list[Tensor]:
    """Drop the padding columns no row of the batch uses."""
    width = max(int(mask.sum(1).max()), 1)
    return [torch.from_numpy(np.ascontiguousarray(a[:, :width])) for a in (ids, mask, *more)]


class ClickLog:
    """The training click log of a work directory, sampled in proportion to click counts:
    ``draw(step)`` gives the click rows of one step and depends only on (seed, step, rank).
    Shared by :class:`ClickStream` and by baselines trained outside vlsearch (benchmarks)."""

    def __init__(self, workdir, seed: int, batch_size: int, rank: int = 0):
        self.seed, self.rank, self.batch_size = seed, rank, batch_size
        ids = workdir.product_table().column("id").to_pylist()
        row_of = {pid: i for i, pid in enumerate(ids)}
        clicks = workdir.clicks()
        pids = clicks.column("product_id").to_pylist()
        known = np.array([pid in row_of for pid in pids], dtype=bool)
        if not known.any():
            raise WorkdirError(f"{workdir.path}: the training click log has no clicks on known products")
        if not known.all():
            log(f"training: {int((~known).sum())} click rows name unknown products; skipped")
        queries = [q for q, k in zip(clicks.column("query").to_pylist(), known) if k]
        counts = np.asarray(clicks.column("count").to_numpy(), dtype=np.float64)[known]
        self.product_rows = np.array([row_of[p] for p, k in zip(pids, known) if k], dtype=np.int64)
        self.cumulative = np.cumsum(counts) / counts.sum()
        self.distinct_queries = sorted(set(queries))
        index = {q: i for i, q in enumerate(self.distinct_queries)}
        self.query_rows = np.array([index[q] for q in queries], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.product_rows)

    def draw(self, step: int) -> np.ndarray:
        """Indices of the click rows of ``step`` (``query_rows`` / ``product_rows`` index them)."""
        rng = np.random.default_rng([self.seed, step, self.rank])
        clicks = np.searchsorted(self.cumulative, rng.random(self.batch_size), side="right")
        return np.minimum(clicks, len(self.cumulative) - 1)

    def pairs(self, step: int) -> tuple[list[str], np.ndarray]:
        """The query texts and product rows of ``step``."""
        clicks = self.draw(step)
        return [self.distinct_queries[i] for i in self.query_rows[clicks]], self.product_rows[clicks]


class ClickStream:
    """Training batches from :class:`ClickLog`; ``batch(step)`` depends only on (seed, step,
    rank). Queries (with their keywords) and product texts are tokenized once."""

    def __init__(self, workdir, retriever: Retriever, config: Config, rank: int):
        self.log = ClickLog(workdir, config.train.seed, config.train.batch_size, rank)
        table = workdir.product_table()
        self.queries = _tokenize(retriever.tokenize_queries, self.log.distinct_queries, retriever.tokenizer.pad_id)
        # the product tower's text (title + configured attribute text), in product-table order
        self.titles = _tokenize(retriever.tokenize_products, workdir.products(), retriever.tokenizer.pad_id)
        prob = np.asarray(table.column("sampling_prob").to_numpy(), dtype=np.float64)
        self.log_q = np.log(np.where(prob > 0, prob, prob[prob > 0].min())).astype(np.float32)
        position = {c: i for i, c in enumerate(retriever.categories)}
        self.labels = np.array(
            [position.get(c, UNKNOWN_CATEGORY) for c in table.column("category").to_pylist()], dtype=np.int64
        )
        self.features = workdir.features() if config.model.use_images else None
        self.max_images = config.model.max_images

    def __len__(self) -> int:
        return len(self.log)

    def batch(self, step: int) -> Batch:
        clicks = self.log.draw(step)
        rows = self.log.product_rows[clicks]
        q_ids, q_mask, q_types = _trim(*(a[self.log.query_rows[clicks]] for a in self.queries))
        t_ids, t_mask = _trim(*(a[rows] for a in self.titles[:2]))
        patches = None
        if self.features is not None:
            patches, has_image = self.features.product_images(rows, self.max_images)
            patches, has_image = torch.from_numpy(patches.astype(np.float32)), torch.from_numpy(has_image)
        else:
            has_image = torch.zeros(len(rows), dtype=torch.bool)
        return Batch(
            q_ids, q_mask, q_types, t_ids, t_mask, patches, has_image,
            torch.from_numpy(rows), torch.from_numpy(self.log_q[rows]), torch.from_numpy(self.labels[rows]),
        )


def _tokenize(encode, items: list, pad_id: int, chunk: int = 4096) -> Encoded:
    """Encode ``items`` (texts, or products for ``tokenize_products``) in chunks and pad every
    chunk to the widest, so rows can be gathered by index."""
    return concat_encoded([encode(items[lo:lo + chunk]) for lo in range(0, len(items), chunk)], pad_id)
