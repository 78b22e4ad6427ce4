"""Towers, fusion, Modal Adaptation, Keyword Enhancement and the saved ``Retriever``.

``Retriever.build(config, workdir)`` makes a fresh model, ``Retriever.load(dir)`` a trained
one; ``encode_queries`` / ``encode_products`` give L2-normalised float32 vectors.
``BASELINES`` names the architectures and ablations of the quality benchmark.
"""

from vlsearch.model.architectures import ARCHITECTURES, ProductOutput, RetrievalModel, modalities
from vlsearch.model.baselines import BASELINES, apply_baseline, zero_shot_minilm
from vlsearch.model.keywords import KeywordTable, mine_from_workdir, mine_keywords
from vlsearch.model.retriever import MODEL_FORMAT_VERSION, Retriever

__all__ = [
    "ARCHITECTURES",
    "BASELINES",
    "MODEL_FORMAT_VERSION",
    "KeywordTable",
    "ProductOutput",
    "RetrievalModel",
    "Retriever",
    "apply_baseline",
    "mine_from_workdir",
    "mine_keywords",
    "modalities",
    "zero_shot_minilm",
]
