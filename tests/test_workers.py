"""`vlsearch serve --workers 2`: both worker processes serve, each hot-reloads a newly
published version, and the service stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from index_helpers import sample_index

from vlsearch.index.builder import current_version, publish


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workers_seen(url: str, version: str | None, want: int, seconds: float) -> dict[int, str]:
    """Health answers (worker pid -> version) until ``want`` workers report ``version``."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:  # a new connection per request, so the kernel hands it to any worker
            body = httpx.get(f"{url}/health", timeout=5, headers={"Connection": "close"}).json()
            seen[body["worker"]] = body["version"]
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if sum(v == version or version is None for v in seen.values()) >= want:
            break
    return seen


@pytest.mark.slow
def test_two_workers_serve_reload_and_stop(tmp_path, tmp_path_factory, sample_catalog_dir):
    index = tmp_path / "index"
    shutil.copytree(sample_index(tmp_path_factory, sample_catalog_dir)[0], index, symlinks=True)
    first = current_version(index)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlsearch.cli", "serve", "--index", str(index),
                             "--port", str(port), "--workers", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = workers_seen(url, first.name, 2, 240)
        assert len(seen) == 2 and set(seen.values()) == {first.name}, seen
        r = httpx.get(f"{url}/search", params={"q": "blue shirt", "k": 5})
        assert r.status_code == 200 and r.json()["hits"]
        second = first.parent / "v000002-reload"
        shutil.copytree(first, second)
        publish(index, second)
        seen = workers_seen(url, second.name, 2, 120)
        assert sorted(seen.values()) == [second.name, second.name], seen
        pids = list(seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    for pid in pids:  # the workers are gone too
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
