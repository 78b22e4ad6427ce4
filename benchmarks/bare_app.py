"""A bare FastAPI endpoint (the HTTP + JSON floor the search service is compared with):
``GET /search`` echoes the query in a small JSON body, ``GET /health`` answers ok."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/search")
def search(q: str, k: int = 10) -> dict:
    return {"query": q, "k": k, "hits": []}


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
