"""Batch search: every query of a BEIR ``queries.jsonl`` through an ``Engine``, as a Run
(query id -> product ids), optionally written as TREC run lines or JSON results
(``vlsearch search --queries``, ``vlsearch eval``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from vlsearch.errors import InputError
from vlsearch.queries.beir import read_beir_queries, write_trec_run
from vlsearch.serving.engine import Engine


def search_queries_file(
    engine: Engine,
    queries_jsonl: str | Path,
    k: int = 100,
    filters: Mapping[str, Sequence[str]] | None = None,
    channels: Sequence[str] | None = None,
    out: str | Path | IO[str] | None = None,
    fmt: str = "trec",
    tag: str = "vlsearch",
) -> dict[str, list[str]]:
    """Search every query of a BEIR ``queries.jsonl``; returns the Run (query id → product ids).

    With ``out``, also writes TREC run lines (``fmt="trec"``) or one JSON result per line
    (``fmt="json"``).
    """
    run: dict[str, list[str]] = {}
    scores: dict[str, list[float]] = {}
    results = []
    for query in read_beir_queries(queries_jsonl):
        try:
            result = engine.search(query.text, k=k, filters=filters, channels=channels)
        except InputError as exc:
            raise InputError(f"{queries_jsonl}: query {query.id!r}: {exc}") from None
        run[query.id] = [h.product_id for h in result.hits]
        scores[query.id] = [h.score for h in result.hits]
        if fmt == "json":
            results.append({"_id": query.id, **result.to_dict()})
    if out is not None:
        if fmt == "trec":
            write_trec_run(out, run, scores, tag)
        elif fmt == "json":
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
            if isinstance(out, (str, os.PathLike)):
                Path(out).write_text(text, encoding="utf-8")
            else:
                out.write(text)
        else:
            raise InputError(f"format {fmt!r}: expected trec or json")
    return run
