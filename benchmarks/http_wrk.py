"""HTTP throughput with a light client: ``vlsearch serve --workers N`` and a bare FastAPI
endpoint (same uvicorn, same workers) driven from another process on loopback.

The client is Debian's ``wrk`` (``apt-get install -y wrk``; C, one thread, keep-alive
connections, a Lua script rotating the request paths) when it is on PATH, else a raw-socket
asyncio client in a subprocess (HTTP/1.1 keep-alive, no HTTP library, so the client's own CPU
stays small). Workloads, each for ``seconds`` at ``concurrency`` connections: the bare
endpoint, logged queries (qid-table hits) and unlogged queries (misses: encode + ANN), all
``GET /search?q=..&k=..``. Every figure of one run is measured back to back on the same
machine; the load average is recorded before and after each.

    .venv/bin/python benchmarks/http_wrk.py --index work/index-full --workdir work/full
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

HERE = Path(__file__).resolve().parent
SETTLE_S = 2.0  # after the first /health answer, until every worker process has loaded


@dataclass(frozen=True)
class WrkConfig:
    seconds: float = 60.0  # per workload
    concurrency: int = 8  # connections kept open
    workers: int = 2  # server worker processes
    k: int = 100
    queries: int = 2000  # distinct request paths per workload
    startup_timeout_s: float = 300.0
    targets: tuple = (("logged", 1500.0, 15.0), ("miss", 150.0, 60.0))  # (workload, q/s >=, p99 ms <=)


def _paths(queries: list[str], k: int) -> list[str]:
    return [f"/search?q={quote(q)}&k={k}" for q in queries]


_LUA = """paths = {%s}
i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1])
end
"""

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()
    return float(value) * _UNITS[unit]


def run_wrk(url: str, paths: list[str], cfg: WrkConfig, tmp: Path) -> dict[str, Any]:
    script = tmp / "paths.lua"
    script.write_text(_LUA % ",".join(json.dumps(p) for p in paths), encoding="utf-8")
    cmd = ["wrk", "-t1", f"-c{cfg.concurrency}", f"-d{int(cfg.seconds)}s", "--latency", "--timeout", "10s",
           "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.seconds + 60, check=False).stdout
    figures: dict[str, Any] = {"client": "wrk", "raw": out[-2000:]}
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.MULTILINE)
        if m:
            figures[f"p{pct}_ms"] = round(_ms(m.group(1)), 3)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    figures["qps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    figures["requests"] = int(m.group(1)) if m else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    figures["errors"] = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return figures


async def _raw_client(host: str, port: int, paths: list[str], seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    counter = iter(range(10**12))

    async def one() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < deadline:
            path = paths[next(counter) % len(paths)]
            sent = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - sent)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    out = common.summarize_ms(latencies)
    return {"client": "raw-socket", "qps": round(len(latencies) / wall, 1), "requests": len(latencies),
            "errors": errors, **{k: v for k, v in out.items() if k.startswith("p")}}


def run_raw(url: str, paths: list[str], cfg: WrkConfig, tmp: Path) -> dict[str, Any]:
    """The fallback client, in its own process (never this one's GIL)."""
    spec = tmp / "raw.json"
    spec.write_text(json.dumps({"url": url, "paths": paths, "seconds": cfg.seconds,
                                "concurrency": cfg.concurrency}), encoding="utf-8")
    done = subprocess.run([sys.executable, str(Path(__file__)), "--raw-client", str(spec)],
                          capture_output=True, text=True, timeout=cfg.seconds + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"raw-socket client failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def http_figures(index: Path, workdir: Path, cfg: WrkConfig, log_dir: Path) -> dict[str, Any]:
    import numpy as np

    from vlsearch.evaluation import read_beir_queries
    from vlsearch.index.builder import current_version
    from vlsearch.index.qid_table import QidTable

    rng = np.random.default_rng(0)
    logged_all = QidTable.load(current_version(index) / "qid").queries
    logged = [logged_all[i] for i in rng.choice(len(logged_all), min(cfg.queries, len(logged_all)), replace=False)]
    unlogged = [q.text for q in read_beir_queries(workdir / "eval" / "test" / "queries.jsonl")][:cfg.queries]
    drive = run_wrk if shutil.which("wrk") else run_raw
    out: dict[str, Any] = {"config": asdict(cfg), "client": "wrk" if drive is run_wrk else "raw-socket",
                           "workloads": {}}
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="http-wrk-") as tmp_name:
        tmp = Path(tmp_name)
        port = common.free_port()
        url = f"http://127.0.0.1:{port}"
        bare = [sys.executable, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(cfg.workers), "--log-level", "warning"]
        with common.server_process(bare, url, timeout_s=cfg.startup_timeout_s, log_path=log_dir / "bare-serve.log",
                                   cwd=HERE, settle_s=SETTLE_S):
            before = common.load_average()
            out["workloads"]["bare_fastapi"] = {**drive(url, _paths(logged, cfg.k), cfg, tmp),
                                                "load_average_before": before,
                                                "load_average_after": common.load_average()}
        port = common.free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "vlsearch.cli", "serve", "--index", str(index), "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(cfg.workers)]
        started = time.perf_counter()
        with common.server_process(cmd, url, timeout_s=cfg.startup_timeout_s,
                                   log_path=log_dir / "vlsearch-serve.log", settle_s=SETTLE_S) as proc:
            out["server_startup_s"] = round(time.perf_counter() - started, 1)
            out["server_rss_mb"] = _rss_mb(proc.pid)
            for name, queries in (("logged", logged), ("miss", unlogged)):
                before = common.load_average()
                out["workloads"][name] = {**drive(url, _paths(queries, cfg.k), cfg, tmp),
                                          "load_average_before": before,
                                          "load_average_after": common.load_average()}
            out["server_rss_mb_after"] = _rss_mb(proc.pid)
    out["targets"] = {}
    for name, qps, p99 in cfg.targets:
        w = out["workloads"][name]
        out["targets"][name] = {"qps_min": qps, "p99_ms_max": p99, "qps": w.get("qps"), "p99_ms": w.get("p99_ms"),
                                "errors": w.get("errors"),
                                "met": bool(w.get("qps") and w["qps"] >= qps and w.get("p99_ms", 1e9) <= p99
                                            and not w.get("errors"))}
    return out


def _rss_mb(parent: int) -> dict[str, float]:
    """Resident and proportional (shared pages split) memory of the server and its workers."""
    pids = [parent]
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        pids += [int(p) for p in children]
    except OSError:
        pass
    out = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss = int(re.search(r"^Rss:\s+(\d+)", text, re.MULTILINE).group(1)) / 1024
        pss = int(re.search(r"^Pss:\s+(\d+)", text, re.MULTILINE).group(1)) / 1024
        out[str(pid)] = {"rss": round(rss, 1), "pss": round(pss, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index")
    p.add_argument("--workdir")
    p.add_argument("--seconds", type=float, default=WrkConfig.seconds)
    p.add_argument("--raw-client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raw_client:
        spec = json.loads(Path(args.raw_client).read_text(encoding="utf-8"))
        host, port = spec["url"].removeprefix("http://").split(":")
        print(json.dumps(asyncio.run(_raw_client(host, int(port), spec["paths"], spec["seconds"],
                                                 spec["concurrency"]))))
        return
    cfg = WrkConfig(seconds=args.seconds)
    print(json.dumps(http_figures(Path(args.index), Path(args.workdir), cfg, common.WORK_DIR), indent=2))


if __name__ == "__main__":
    main()
