"""The qid table as a Milvus collection ``<prefix>_<version>_qid`` keyed by qid (the Milvus
backend's ``milvus_qid_table``): written by the build and by live updates, read by the
engine's ``lookup``."""

from __future__ import annotations

import numpy as np

from vlsearch.config import IndexConfig
from vlsearch.errors import WorkdirError
from vlsearch.index.milvus import INSERT_BATCH, VECTOR
from vlsearch.index.milvus_client import (
    QID_SUFFIX,
    RemoteCollection,
    call_milvus,
    collection_name,
    connect,
    resolved_uri,
)


class MilvusQidTable(RemoteCollection):
    """The qid table as a collection keyed by qid: the logged query's vector (Milvus wants a
    vector field in every collection; it is the query's embedding), its top-K rows and
    scores (arrays) and the constraint signature the answer was computed under."""

    def __init__(self, collection: str, config: IndexConfig, top_k: int):
        self.collection, self.config = collection, config
        self.uri = resolved_uri(config.milvus_uri)
        self._top_k = top_k

    @property
    def top_k(self) -> int:
        return self._top_k


    @classmethod
    def write(cls, table, query_vectors: np.ndarray, config: IndexConfig, version: str) -> MilvusQidTable:
        """Store ``table`` (a QidTable; row i's query vector is ``query_vectors[i]``)."""
        from pymilvus import DataType  # optional and heavy: only the Milvus backend needs it

        client = connect(config)
        name = collection_name(config.milvus_prefix, version) + QID_SUFFIX
        top_k = max(1, table.top_k)
        out = cls(name, config, top_k)
        dim = int(query_vectors.shape[1])
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("qid", DataType.INT64, is_primary=True)
        schema.add_field(VECTOR, DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("rows", DataType.ARRAY, element_type=DataType.INT64, max_capacity=top_k)
        schema.add_field("scores", DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=top_k)
        schema.add_field("signature", DataType.INT64)
        params = client.prepare_index_params()
        params.add_index(VECTOR, index_type="FLAT", metric_type="IP")
        if out._build_call("has_collection", client.has_collection, name):
            out._build_call("drop_collection", client.drop_collection, name)
        out._build_call("create_collection", client.create_collection, name, schema=schema, index_params=params)
        qids = np.asarray(table.qids, np.int64)
        signatures = np.asarray(table.signatures, np.uint64).view(np.int64)
        for start in range(0, len(qids), INSERT_BATCH):
            batch = []
            for i in range(start, min(len(qids), start + INSERT_BATCH)):
                rows = np.asarray(table.rows[i])
                keep = rows >= 0
                batch.append({"qid": int(qids[i]), VECTOR: query_vectors[i].tolist(),
                              "rows": rows[keep].astype(int).tolist(),
                              "scores": np.asarray(table.scores[i])[keep].astype(float).tolist(),
                              "signature": int(signatures[i])})
            out._build_call("insert", client.insert, name, batch)
        out._build_call("flush", client.flush, name)
        out._build_call("load_collection", client.load_collection, name)
        return out

    @classmethod
    def open(cls, collection: str, config: IndexConfig) -> MilvusQidTable:
        client = connect(config)
        uri = resolved_uri(config.milvus_uri)
        if not call_milvus(uri, "has_collection", client.has_collection, collection, timeout=config.milvus_timeout_s):
            raise WorkdirError(f"Milvus at {uri}: qid collection {collection!r} not found; rebuild the index")
        call_milvus(uri, "load_collection", client.load_collection, collection, timeout=config.milvus_build_timeout_s)
        info = call_milvus(uri, "describe_collection", client.describe_collection, collection,
                     timeout=config.milvus_timeout_s)
        rows_field = next(f for f in info["fields"] if f["name"] == "rows")
        return cls(collection, config, int(rows_field["params"]["max_capacity"]))

    def __len__(self) -> int:
        found = self._call("count", self.client.query, self.collection, filter="qid >= 0",
                           output_fields=["count(*)"])
        return int(found[0]["count(*)"])

    def lookup(self, qid: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        found = self._call("get", self.client.get, self.collection, ids=[int(qid)],
                           output_fields=["rows", "scores", "signature"])
        if not found:
            return None
        entity = found[0]
        signature = int(np.asarray([entity["signature"]], np.int64).view(np.uint64)[0])
        return (np.asarray(entity["rows"], np.int64), np.asarray(entity["scores"], np.float32), signature)
