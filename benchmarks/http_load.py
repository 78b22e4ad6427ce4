"""HTTP load: start ``vlsearch serve`` on a free loopback port as a subprocess, drive it with a
bounded asyncio + httpx client at fixed concurrency from this (another) process, stop it.

    .venv/bin/python benchmarks/http_load.py --index work/index-full --queries Q.jsonl

The client sends ``GET /search?q=...&k=...`` for the queries in turn; every request is
timed end to end (connect, server work, body read). A request that raises or answers
anything but 200 counts as an error. The run stops after ``requests`` requests or
``max_seconds``, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


@dataclass(frozen=True)
class LoadConfig:
    requests: int = 2000  # requests in total
    concurrency: int = 8  # requests in flight at once
    k: int = 100  # results per request
    max_seconds: float = 300.0  # stop sending after this long
    warmup: int = 20  # untimed requests first (model and caches warm)
    startup_timeout_s: float = 180.0  # wait this long for /health
    request_timeout_s: float = 30.0  # per request


@contextmanager
def running_server(index_dir: Path, config: LoadConfig, log_path: Path | None = None):
    """``vlsearch serve`` as a subprocess on 127.0.0.1; yields its base URL; always stopped."""
    port = common.free_port()
    cmd = [sys.executable, "-m", "vlsearch.cli", "serve", "--index", str(index_dir),
           "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with common.server_process(cmd, url, timeout_s=config.startup_timeout_s, log_path=log_path,
                               stop_timeout_s=15.0):
        yield url


async def _drive(url: str, queries: list[str], config: LoadConfig) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    qid_hits = 0
    limits = httpx.Limits(max_connections=config.concurrency,
                          max_keepalive_connections=config.concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits,
                                 timeout=config.request_timeout_s) as client:
        for i in range(config.warmup):
            await client.get("/search", params={"q": queries[i % len(queries)], "k": config.k})
        counter = iter(range(config.requests))
        started = time.perf_counter()
        deadline = started + config.max_seconds

        async def one_client() -> None:
            nonlocal qid_hits
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                sent = time.perf_counter()
                try:
                    response = await client.get(
                        "/search", params={"q": queries[i % len(queries)], "k": config.k})
                    body = response.content
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    body, status = b"", type(exc).__name__
                latencies.append(time.perf_counter() - sent)
                statuses[status] += 1
                if status == "200" and json.loads(body).get("qid_hit"):
                    qid_hits += 1

        await asyncio.gather(*(one_client() for _ in range(config.concurrency)))
        wall = time.perf_counter() - started
    done = sum(statuses.values())
    return {
        "requests": done, "wall_s": round(wall, 2), "qps": round(done / wall, 1) if wall else None,
        "errors": done - statuses.get("200", 0), "statuses": dict(statuses),
        "qid_hit_share": round(qid_hits / done, 3) if done else None,
        "latency": common.summarize_ms(latencies),
    }


def run_load(index_dir: Path, queries: list[str], config: LoadConfig,
             log_path: Path | None = None) -> dict[str, Any]:
    """Start the server, drive it, stop it; the client's figures plus the settings."""
    started = time.perf_counter()
    with running_server(index_dir, config, log_path) as url:
        startup = time.perf_counter() - started
        result = asyncio.run(_drive(url, queries, config))
    result.update(config=asdict(config), server_startup_s=round(startup, 1),
                  distinct_queries=len(set(queries)), url_host="127.0.0.1")
    return result


def main() -> None:
    from vlsearch.evaluation import read_beir_queries

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--queries", required=True, help="BEIR queries.jsonl")
    parser.add_argument("--requests", type=int, default=LoadConfig.requests)
    parser.add_argument("--concurrency", type=int, default=LoadConfig.concurrency)
    args = parser.parse_args()
    config = LoadConfig(requests=args.requests, concurrency=args.concurrency)
    texts = [q.text for q in read_beir_queries(args.queries)]
    print(json.dumps(run_load(Path(args.index), texts, config), indent=2))


if __name__ == "__main__":
    main()
