"""A model-free text encoder: each term hashes to a fixed random vector, a text is the
normalised sum of its terms' vectors (plus a tiny shared bias, so a text of no known term
still has a direction).

It speaks the encoder protocol the index builder and the engine use (``encode_queries``,
``encode_products``), so constraints, BM25, fusion and the qid table can be built and measured
exactly as served without a trained model: the query-understanding benchmark's
``--hash-index`` and the index/serving tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from vlsearch.text import query_terms

BIAS_TERM = "\x00bias"  # not a term any text produces
BIAS_WEIGHT = 1e-3


class HashingEncoder:
    """Deterministic bag-of-words vectors of ``dim`` dimensions (same terms, same vector)."""

    def __init__(self, dim: int = 64):
        self.dim = dim
        self._vectors: dict[str, np.ndarray] = {}

    def _term(self, term: str) -> np.ndarray:
        vec = self._vectors.get(term)
        if vec is None:
            seed = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")
            vec = self._vectors[term] = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return vec

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for term in query_terms(text):
                out[i] += self._term(term)
            out[i] += BIAS_WEIGHT * self._term(BIAS_TERM)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def encode_products(self, products, patches=None, has_image=None) -> np.ndarray:
        return self.encode_queries([p.title for p in products])
