"""The query tower as an ONNX graph for serving: export with a parity check, and
``OnnxQueryEncoder`` (onnxruntime) with the Retriever's ``encode_queries`` interface.

The graph is ``RetrievalModel.encode_query`` (query tower, projection, L2 normalisation)
with inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, dynamic batch and
sequence) and output ``vector``. Tokenization stays in Python with the Retriever's fast
tokenizer and its Keyword Enhancement (keywords ride in the second segment, so every input
of the query tower goes through the same graph). Export refuses (writes no file and says
why) when the ONNX output's cosine to torch's falls below ``min_cosine`` on any sample
query.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vlsearch.errors import VlsearchError

QUERY_ONNX = "query.onnx"  # file name inside a model directory
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OPSET = 17


class OnnxExportError(VlsearchError):
    """The exported graph does not reproduce the torch query tower."""


@dataclass
class OnnxExportReport:
    path: str
    exported: bool
    queries: int  # sample queries of the parity check
    min_cosine: float  # worst cosine of ONNX vs torch over the sample
    required_cosine: float
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _session(path: str | Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxQueryEncoder:
    """``encode_queries(texts)`` through onnxruntime; same tokenization as the Retriever."""

    def __init__(self, retriever, path: str | Path, threads: int = 1):
        self.retriever = retriever
        self.path = Path(path)
        self.session = _session(self.path, threads)
        self.embed_dim = retriever.embed_dim

    def encode_queries(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        texts = list(texts)
        batch_size = batch_size or self.retriever.config.model.encode_batch_size
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        for lo in range(0, len(texts), batch_size):
            encoded = self.retriever.tokenize_queries(texts[lo:lo + batch_size])
            feed = {name: np.ascontiguousarray(a, dtype=np.int64) for name, a in zip(INPUTS, encoded)}
            out[lo:lo + len(encoded[0])] = self.session.run(None, feed)[0]
        return out


def _query_module(model):
    import torch

    class QueryGraph(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner.encode_query(input_ids, attention_mask, token_type_ids)

    return QueryGraph(model)


def parity(retriever, encoder: OnnxQueryEncoder, queries: list[str]) -> np.ndarray:
    """Cosine of the ONNX vector to the torch vector for each query (one at a time, as served)."""
    torch_vecs = retriever.encode_queries(queries)
    onnx_vecs = np.concatenate([encoder.encode_queries([q]) for q in queries]) if queries else torch_vecs
    norms = np.linalg.norm(torch_vecs, axis=1) * np.linalg.norm(onnx_vecs, axis=1)
    return (torch_vecs * onnx_vecs).sum(axis=1) / np.maximum(norms, 1e-12)


def export_query_onnx(retriever, model_dir: str | Path, queries: list[str], min_cosine: float = 0.9999,
                      threads: int = 1) -> OnnxExportReport:
    """Write ``model_dir/query.onnx`` if it reproduces torch on ``queries`` (cosine >=
    ``min_cosine`` for every one); otherwise write nothing and report why."""
    import torch

    model_dir = Path(model_dir)
    target = model_dir / QUERY_ONNX
    queries = [q for q in dict.fromkeys(queries) if q and q.strip()] or ["shoes", "blue shirt for men"]
    was_training = retriever.model.training
    retriever.model.eval()
    fd, tmp_name = tempfile.mkstemp(prefix=".query.", suffix=".onnx.tmp", dir=model_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        example = retriever.tokenize_queries(queries[:2])
        args = tuple(torch.as_tensor(a, dtype=torch.int64) for a in example)
        axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
        axes["vector"] = {0: "batch"}
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation/tracer notes
            torch.onnx.export(_query_module(retriever.model), args, str(tmp), input_names=list(INPUTS),
                              output_names=["vector"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False)
        cosines = parity(retriever, OnnxQueryEncoder(retriever, tmp, threads), queries)
        worst = float(cosines.min())
        report = OnnxExportReport(str(target), worst >= min_cosine, len(queries), worst, min_cosine)
        if report.exported:
            os.replace(tmp, target)
        else:
            bad = queries[int(cosines.argmin())]
            report.reason = (f"ONNX query encoder refused: cosine to torch {worst:.6f} < {min_cosine} "
                             f"(query {bad!r}); serving encodes queries with torch")
        return report
    finally:
        tmp.unlink(missing_ok=True)
        retriever.model.train(was_training)


def load_query_encoder(retriever, model_dir: str | Path, mode: str = "auto", threads: int = 1):
    """The serving query encoder: ONNX when ``model_dir/query.onnx`` exists and onnxruntime
    imports (``mode`` auto or onnx), else the torch Retriever. ``mode="onnx"`` without a
    usable graph raises OnnxExportError; ``mode="torch"`` always returns the Retriever."""
    if mode not in ("auto", "onnx", "torch"):
        raise VlsearchError(f"query_encoder {mode!r}: expected auto, onnx or torch")
    path = Path(model_dir) / QUERY_ONNX
    if mode == "torch":
        return retriever
    if path.is_file() and onnx_available():
        return OnnxQueryEncoder(retriever, path, threads)
    if mode == "onnx":
        why = "onnxruntime is not installed" if path.is_file() else f"{path} does not exist"
        raise OnnxExportError(f"query_encoder = onnx but {why}")
    return retriever
