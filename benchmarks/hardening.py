"""Hardening run (issue 11), not part of the test suite: ``vlsearch serve`` (a subprocess on a
free loopback port) fuzzed by schemathesis with every check and more examples than the suite's
bounded test, then loaded by keep-alive clients.

    .venv/bin/python benchmarks/hardening.py --index work/i2000 \
        --out benchmarks/results/hardening.json

Fuzzing: ``schemathesis run --checks all`` (examples, coverage, fuzzing and stateful phases)
for ``--fuzz-examples`` per operation or ``--fuzz-seconds``, whichever ends first. Requests
and 5xx are counted from the server's access log (every request the server saw); failures
are schemathesis' own (schema violations, undocumented statuses, valid data refused, ...).

Load: ``--clients`` threads, each with one keep-alive HTTP/1.1 connection, for ``--seconds``:
a mix of ``GET /search`` (query words from the catalog titles, sometimes a brand filter),
``POST /search``, ``GET /products/{id}`` and ``/health``. Every 200 body is validated against
the API's pydantic models; any exception, non-200 answer or invalid body is an error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode, urlparse

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from http_load import LoadConfig, running_server

ACCESS = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|TRACE|CONNECT|[A-Z]+) [^"]*" (\d{3})')


def access_statuses(log_path: Path, start: int = 0) -> Counter:
    """Status codes of the access-log lines after byte ``start``."""
    with open(log_path, "rb") as handle:
        handle.seek(start)
        text = handle.read().decode("utf-8", "replace")
    return Counter(int(m.group(1)) for m in ACCESS.finditer(text))


def fuzz(url: str, examples: int, seconds: int, seed: int, workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
           "--max-examples", str(examples), "--max-time", str(seconds), "--seed", str(seed),
           "--workers", "1", "--generation-database", "none", "--no-color",
           "--request-timeout", "30"]
    started = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=workdir,
                          timeout=seconds * 3 + 300)
    out = done.stdout
    failures = dict(re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", out))
    generated = re.search(r"(\d+) generated", out)
    return {"command": " ".join(cmd[1:]), "exit_code": done.returncode,
            "seconds": round(time.perf_counter() - started, 1),
            "test_cases": int(generated.group(1)) if generated else None,
            "failures": {k: int(v) for k, v in failures.items()},
            "verdict": out.strip().splitlines()[-1] if out.strip() else done.stderr[-500:]}


def load(url: str, clients: int, seconds: float, index_dir: Path, seed: int) -> dict:
    from vlsearch.serving.schema import HealthOut, ProductOut, SearchResponse

    table = pq.read_table(Path(index_dir) / "current" / "products.parquet",
                          columns=["id", "title", "brand"]).to_pydict()
    words = sorted({w for t in table["title"] for w in t.lower().split() if w.isalpha()})
    brands = sorted({b for b in table["brand"] if b})
    ids = table["id"]
    parsed = urlparse(url)
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    statuses: Counter = Counter()
    kinds: Counter = Counter()
    errors: Counter = Counter()
    latencies: list[float] = []

    def request(rng: random.Random) -> tuple[str, str, str, bytes | None, type]:
        roll = rng.random()
        q = " ".join(rng.sample(words, rng.randint(1, 3)))
        if roll < 0.55:
            params = {"q": q, "k": rng.choice([10, 20, 100])}
            if rng.random() < 0.3:
                params["filter"] = f"brand:{rng.choice(brands)}"
            return "search-get", "GET", "/search?" + urlencode(params), None, SearchResponse
        if roll < 0.8:
            body = {"q": q, "k": rng.choice([10, 50]), "filters": {"gender": rng.choice(["Men", "Women"])}}
            return "search-post", "POST", "/search", json.dumps(body).encode(), SearchResponse
        if roll < 0.95:
            return "product", "GET", f"/products/{rng.choice(ids)}", None, ProductOut
        return "health", "GET", "/health", None, HealthOut

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        mine: list[float] = []
        while time.monotonic() < deadline:
            kind, method, path, body, model = request(rng)
            headers = {"content-type": "application/json"} if body else {}
            started = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                status = response.status
            except Exception as exc:  # noqa: BLE001 - every failure counts as an error
                with lock:
                    errors[f"{kind}: {type(exc).__name__}"] += 1
                conn.close()
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
                continue
            mine.append(time.perf_counter() - started)
            problem = None
            if status != 200:
                problem = f"{kind}: HTTP {status}"
            else:
                try:
                    model.model_validate_json(payload)
                except ValueError:
                    problem = f"{kind}: body outside the schema"
            with lock:
                statuses[status] += 1
                kinds[kind] += 1
                if problem:
                    errors[problem] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    total = sum(statuses.values())
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": total,
            "requests_per_s": round(total / elapsed, 1), "statuses": dict(statuses),
            "by_kind": dict(kinds), "errors": sum(errors.values()), "error_kinds": dict(errors),
            "latency_ms": common.summarize_ms(latencies) if latencies else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hardening.json"))
    parser.add_argument("--fuzz-examples", type=int, default=1000)
    parser.add_argument("--fuzz-seconds", type=int, default=600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--skip-fuzz", action="store_true")
    args = parser.parse_args()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="vlsearch-hardening-"))  # server log, schemathesis files
    log_path = scratch / "server.log"
    common.log(f"server log and schemathesis files in {scratch}")
    result = {"machine": common.machine_info(), "commit": common.git_commit(),
              "index": str(args.index), "load_average_before": common.load_average()}
    with running_server(args.index, LoadConfig(), log_path) as url:
        products = json.loads(urlparse_get(url, "/health"))["products"]
        result["products"] = products
        if not args.skip_fuzz:
            mark = log_path.stat().st_size
            common.log(f"fuzzing {url} ({args.fuzz_examples} examples/operation, "
                       f"at most {args.fuzz_seconds} s)")
            result["fuzz"] = fuzz(url, args.fuzz_examples, args.fuzz_seconds, args.seed, scratch)
            seen = access_statuses(log_path, mark)
            result["fuzz"]["server_requests"] = sum(seen.values())
            result["fuzz"]["server_5xx"] = sum(v for k, v in seen.items() if k >= 500)
            result["fuzz"]["server_statuses"] = dict(sorted(seen.items()))
            common.write_json(args.out, result)
        common.log(f"load: {args.clients} keep-alive clients for {args.seconds} s")
        mark = log_path.stat().st_size
        result["load"] = load(url, args.clients, args.seconds, args.index, args.seed)
        result["load"]["server_5xx"] = sum(v for k, v in access_statuses(log_path, mark).items()
                                           if k >= 500)
    result["load_average_after"] = common.load_average()
    common.write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("fuzz", "load") if k in result}, indent=2))


def urlparse_get(url: str, path: str) -> str:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    conn.request("GET", path)
    return conn.getresponse().read().decode()


if __name__ == "__main__":
    main()
