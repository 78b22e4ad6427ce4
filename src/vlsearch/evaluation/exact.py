"""Exact (brute-force) inner-product top-K: the reference ranking that training's validation
(``vlsearch.training.Validator``) and the quality benchmark (``benchmarks/quality_eval.py``)
score, so both rank a corpus the same way.

float32 vectors, one ``torch`` matrix product and ``topk`` per call; ``k`` is capped at the
corpus size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def exact_top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """``[len(queries), min(k, len(corpus))]`` row indices into ``corpus``, best first."""
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    c = torch.from_numpy(np.ascontiguousarray(corpus, dtype=np.float32))
    return (q @ c.T).topk(min(k, c.shape[0]), dim=1).indices.numpy()


def exact_run(query_ids: Sequence[str], queries: np.ndarray, doc_ids: Sequence[str], corpus: np.ndarray,
              k: int) -> dict[str, list[str]]:
    """Each query's exact top ``k`` as ranked ``doc_ids``: a run for :mod:`vlsearch.evaluation`."""
    top = exact_top_k(queries, corpus, k)
    return {qid: [doc_ids[j] for j in row] for qid, row in zip(query_ids, top)}
