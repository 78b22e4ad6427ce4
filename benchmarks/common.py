"""Helpers shared by the benchmarks: paths, machine facts, load average, latency summaries,
JSON output, a server subprocess on a free loopback port, and the small sample work directory
the smoke runs use.

The machine is shared and noisy, so every figure is recorded with the load average seen
while it was measured, and timings are summarised by medians and percentiles.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
WORK_DIR = ROOT / "work" / "bench"
REAL_CATALOG = Path("data") / "fashion-products"  # inside the shared folder

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                      ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)


def default_shared() -> str:
    """``$VLSEARCH_SHARED`` or ``../shared`` next to the repository."""
    return os.environ.get("VLSEARCH_SHARED", str(ROOT.parent / "shared"))


def load_average() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages * size / 2**30, 1)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (library versions included)."""
    import faiss
    import torch

    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "git_commit": git_commit(),
        "load_average": load_average(),
    }


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Latency summary in milliseconds: median (= p50), p90, p99, mean, count, and the
    rate of one caller issuing them back to back (1000 / mean ms, per second)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"n": 0}
    mean = float(ms.mean())
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(mean, 3),
        "sequential_qps": round(1000.0 / mean, 1) if mean > 0 else None,
    }


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch intra-op threads and FAISS OpenMP threads set to ``n`` inside the block."""
    import faiss
    import torch

    previous = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        faiss.omp_set_num_threads(previous[1])


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``."""
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started



def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (readers never see half a file)."""
    from vlsearch.io import atomic_write_json

    atomic_write_json(path, obj)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SmokeData:
    """The generated sample catalog, prepared with the tiny preset and the random-cnn backbone."""

    products: int = 300  # products of the generated catalog
    seed: int = 0  # catalog generator seed
    backbone: str = "random-cnn"  # test backbone (no download, fast)
    preset: str = "tiny"  # model size of every smoke row


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(cmd: list[str], url: str, *, timeout_s: float, log_path: Path | None = None,
                   cwd: Path | None = None, settle_s: float = 0.0,
                   stop_timeout_s: float = 30.0) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until ``url/health`` answers 200, wait ``settle_s`` more (other worker
    processes finish loading), yield the process; always stopped (SIGTERM, then kill)."""
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    sink = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd, env=dict(os.environ))
    name = " ".join(cmd[:4])
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} (see {log_path})")
            try:
                if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not up after {timeout_s} s (see {log_path})")
            time.sleep(0.5)
        time.sleep(settle_s)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            sink.close()


def prepare_smoke_workdir(work: Path, data: SmokeData = SmokeData()):
    """Write the sample catalog and prepare it into ``work/workdir`` (idempotent); returns
    ``(workdir path, base Config)``."""
    from vlsearch.config import preset
    from vlsearch.sample import write_sample_catalog
    from vlsearch.workdir import prepare

    catalog = work / "sample-catalog"
    if not (catalog / "styles.csv").exists():
        write_sample_catalog(catalog, n_products=data.products, seed=data.seed)
    config = preset(data.preset)
    config.images.backbone = data.backbone
    workdir = work / "workdir"
    prepare(catalog, workdir, config, progress=False, log=lambda _m: None)
    return workdir, config
