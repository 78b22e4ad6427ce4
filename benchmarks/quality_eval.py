"""Quality benchmark, the fixed test bed: every product of the work dir as the corpus, the
eval splits (test, heldout, colour probe, single attribute), exact top-K scoring of a row's
vectors, BM25, and the serving engine's channel x query-understanding matrix.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from quality_rows import COLOUR_PROBE, ENGINE_DENSE, ENGINE_LEXICAL, SINGLE_ATTRIBUTE

from vlsearch.config import IndexConfig, ServeConfig
from vlsearch.evaluation import evaluate, read_beir_queries, read_qrels
from vlsearch.evaluation.exact import exact_run
from vlsearch.index.builder import build_index_from_parts
from vlsearch.index.lexical import LexicalIndex, build_lexical
from vlsearch.queries.generator import export_beir, single_attribute_queries
from vlsearch.serving.engine import Engine


@dataclass
class EvalSplit:
    name: str
    queries: list
    qrels: dict


class Evaluation:
    """The fixed test bed: corpus (every product of the work dir) and the eval splits."""

    def __init__(self, workdir, max_queries: int, ks: tuple[int, ...], test_bed_dir: Path,
                 engine_queries: int | None = None):
        self.ks = ks
        self.engine_queries = engine_queries  # first N queries of each split in the engine matrix
        self.products = workdir.products()
        self.by_id = {p.id: p for p in self.products}
        splits = workdir.product_table().column("split").to_pylist()
        self.heldout_ids = {p.id for p, s in zip(self.products, splits) if s == "heldout"}
        directories = {name: workdir.eval_dir(name) for name in ("test", "heldout", COLOUR_PROBE)}
        # one query per attribute value, every product with it relevant: from the catalog
        # alone, so it joins the test bed without touching the training data
        directories[SINGLE_ATTRIBUTE] = test_bed_dir / SINGLE_ATTRIBUTE
        export_beir(single_attribute_queries(self.products), self.products,
                    directories[SINGLE_ATTRIBUTE], max_queries=max_queries, id_prefix="attr")
        self.splits = []
        for name, directory in directories.items():
            queries = read_beir_queries(directory / "queries.jsonl")[:max_queries]
            self.splits.append(EvalSplit(name, queries, read_qrels(directory / "qrels.tsv")))
        self._workdir = workdir
        self._patches = None

    def patches(self) -> tuple[np.ndarray, np.ndarray]:
        if self._patches is None:
            features = self._workdir.features()
            self._patches = (features.patches(), features.has_image())
        return self._patches

    def score(self, runs: dict[str, dict[str, list[str]]], splits: list[EvalSplit] | None = None
              ) -> dict[str, Any]:
        """Metrics of every split/subset, keyed test | colour_only_in_image | heldout |
        colour_probe (and colour_probe_heldout: its queries about held-out products)."""
        metrics, counts = {}, {}
        for split in splits or self.splits:
            result = evaluate(runs[split.name], split.qrels, split.queries, self.by_id, ks=self.ks,
                              heldout=self.heldout_ids)
            subsets = result["subsets"]
            keep = {"test": {"all": "test", "colour_only_in_image": "colour_only_in_image"},
                    "heldout": {"all": "heldout"},
                    COLOUR_PROBE: {"all": COLOUR_PROBE, "heldout": f"{COLOUR_PROBE}_heldout"},
                    SINGLE_ATTRIBUTE: {"all": SINGLE_ATTRIBUTE},
                    }[split.name]
            for subset, key in keep.items():
                metrics[key] = subsets[subset]["metrics"]
                counts[key] = subsets[subset]["queries"]
        return {"metrics": metrics, "queries": counts, "corpus": len(self.products)}

    def dense(self, retriever, with_engine: bool = True) -> dict[str, Any]:
        """Encode every product and query with a vlsearch Retriever; exact top-K; score."""
        patches = has_image = None
        if retriever.config.model.use_images:
            patches, has_image = self.patches()
        vectors, weights = retriever.encode_products(self.products, patches, has_image,
                                                     return_weights=True)
        out = self.exact(vectors, retriever.encode_queries)
        if with_engine:
            out["engine"] = self.engine(vectors, retriever, ENGINE_DENSE)
        out["modal_weights"] = {m: round(float(w), 4)
                                for m, w in zip(retriever.modalities, weights.mean(axis=0))}
        return out

    def exact(self, vectors: np.ndarray, encode_queries) -> dict[str, Any]:
        """Exact inner-product top-K of every split's queries over the product vectors."""
        ids = [p.id for p in self.products]
        runs = {split.name: exact_run([x.id for x in split.queries], encode_queries([x.text for x in split.queries]),
                                      ids, vectors, max(self.ks))
                for split in self.splits}
        return self.score(runs)

    def engine(self, vectors: np.ndarray, encoder, settings: dict[str, tuple]) -> dict[str, Any]:
        """Every split searched by the serving engine (exact Flat index over ``vectors``, no
        qid table, so every query is encoded) under each of ``settings``: name -> (channels,
        query-understanding constraints); metrics per setting as ``score`` gives them."""
        k = min(max(self.ks), len(self.products))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        splits = [EvalSplit(split.name, split.queries[:self.engine_queries], split.qrels)
                  for split in self.splits]
        texts = sorted({x.text for split in splits for x in split.queries})
        cached = _CachedQueries(texts, encoder.encode_queries)
        out = {}
        with tempfile.TemporaryDirectory(prefix="engine-") as tmp:
            build_index_from_parts(tmp, self.products, lambda lo, hi: vectors[lo:hi],
                                   cached.encode_queries, [], [],
                                   config=IndexConfig(kind="flat", recall_sample_queries=0),
                                   progress=False)
            engine = Engine.open(tmp, ServeConfig(qid_table=False, reload_check=False,
                                                  max_k=max(k, 1)), retriever=cached)
            for name, (channels, constraints) in settings.items():
                runs = {split.name: {x.id: [h.product_id for h in engine.search(
                            x.text, k, channels=channels, auto_constraints=constraints).hits]
                            for x in split.queries} for split in splits}
                out[name] = self.score(runs, splits)["metrics"]
        return out

    def bm25(self, with_engine: bool = True) -> dict[str, Any]:
        """The lexical channel of the index (tantivy BM25 over titles and attributes)."""
        k = min(max(self.ks), len(self.products))
        with tempfile.TemporaryDirectory(prefix="bm25-") as tmp:
            build_lexical(self.products, tmp)
            lexical = LexicalIndex.open(tmp)
            runs = {}
            for split in self.splits:
                runs[split.name] = {
                    x.id: [self.products[r].id for r in lexical.search(x.text, k)[1]]
                    for x in split.queries
                }
        out = self.score(runs)
        if not with_engine:
            return out
        out["engine"] = self.engine(np.zeros((len(self.products), 1), np.float32),
                                    _CachedQueries([], lambda t: np.zeros((len(t), 1), np.float32)),
                                    ENGINE_LEXICAL)
        return out


class _CachedQueries:
    """Query vectors encoded once in batches, looked up by text (the engine encodes one query
    per search); texts not seen before are encoded on the spot."""

    def __init__(self, texts: list[str], encode):
        self._encode = encode
        vectors = np.asarray(encode(texts), np.float32) if texts else np.zeros((0, 0), np.float32)
        self._vectors = dict(zip(texts, vectors))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, np.asarray(self._encode(missing), np.float32)))
        return np.stack([self._vectors[t] for t in texts])

