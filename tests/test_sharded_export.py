"""Sharded export: shard boundaries, the in-process merge, and a real 2-process torchrun (gloo)
`vlsearch index` that equals the one-process index, including after a kill -9 mid-export."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from index_helpers import HashEncoder, sample_index, synthetic_products

from vlsearch.errors import WorkdirError
from vlsearch.index.ann import AnnIndex
from vlsearch.index.builder import current_version
from vlsearch.index.export import (
    SHARDS_DIR,
    export_sharded,
    export_vectors,
    finished_export,
    shard_rows,
)
from vlsearch.index.qid_table import QidTable


@pytest.mark.parametrize("n,batch,world", [(1000, 64, 2), (1000, 64, 3), (5, 4, 4), (257, 256, 2), (1, 8, 2)])
def test_shards_cover_the_rows_on_batch_boundaries(n, batch, world):
    spans = [shard_rows(n, batch, r, world) for r in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (a, b), (c, _) in itertools.pairwise(spans):
        assert b == c and a <= b
    assert all(a % batch == 0 for a, _ in spans)
    sizes = [b - a for a, b in spans]
    assert max(sizes) - min(sizes) <= batch  # balanced to within one batch


def test_in_process_shards_merge_to_the_one_process_export(tmp_path):
    products = synthetic_products(300)
    vectors = HashEncoder().encode_products(products)

    def encode(a, b):
        return vectors[a:b]

    one = export_vectors(encode, len(vectors), tmp_path / "one", batch_size=32, key={"m": 1}, progress=False)
    out = tmp_path / "sharded"
    # rank 1 first, then rank 0 (the barrier of a real run orders them the same way)
    assert export_sharded(encode, len(vectors), out, 1, 2, lambda: None, 32, key={"m": 1}, progress=False) is None
    with pytest.raises(WorkdirError, match="shard 1 of 3"):
        export_sharded(encode, len(vectors), tmp_path / "three", 0, 3, lambda: None, 32, key={"m": 1},
                       progress=False)  # shards 1 and 2 of 3 were never written
    merged = export_sharded(encode, len(vectors), out, 0, 2, lambda: None, 32, key={"m": 1}, progress=False)
    assert np.array_equal(merged, one)
    assert not (out / SHARDS_DIR).exists()
    # the merged export is what a one-process export with the same key finds finished
    assert finished_export(out, len(vectors), key={"m": 1}) is not None
    again = export_vectors(lambda a, b: pytest.fail("re-encoded"), len(vectors), out, 32, key={"m": 1},
                           progress=False)
    assert np.array_equal(again, one)


# --- torchrun ---------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _index_cmd(workdir: Path, model: Path, out: Path, config: Path, nproc: int) -> list[str]:
    args = ["index", "--workdir", str(workdir), "--model", str(model), "--out", str(out), "--config", str(config)]
    if nproc == 1:
        return [sys.executable, "-m", "vlsearch.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "vlsearch.cli", *args]


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _shard_progress(out: Path) -> dict[str, int]:
    found = {}
    for p in (out / "export" / SHARDS_DIR).glob("*/progress.json"):
        try:
            found[p.parent.name] = int(json.loads(p.read_text())["done"])
        except (ValueError, KeyError, OSError):
            continue  # being replaced right now
    return found


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_even_after_a_kill(tmp_path, tmp_path_factory, sample_catalog_dir):
    _, workdir, model = sample_index(tmp_path_factory, sample_catalog_dir)
    n = len(np.load(current_version(sample_index(tmp_path_factory, sample_catalog_dir)[0]) / "vectors.npy",
                    mmap_mode="r"))
    config = tmp_path / "index.toml"
    config.write_text('[index]\nkind = "ivf"\nexport_batch_size = 2\n')
    one_out, out = tmp_path / "one", tmp_path / "two"
    _run(_index_cmd(workdir, model, one_out, config, 1))
    one = current_version(one_out)

    # a sharded build killed (SIGKILL, whole process group) while the ranks are exporting
    proc = subprocess.Popen(_index_cmd(workdir, model, out, config, 2), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    seen: dict[str, int] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        seen = _shard_progress(out)
        if seen and any(v > 0 for v in seen.values()):
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _shard_progress(out)
    shard_size = -(-n // 2)
    assert partial and min(partial.values()) < shard_size, f"kill came too late: {seen} -> {partial}"
    with pytest.raises(WorkdirError):
        current_version(out)  # nothing was published, and no half-written version is served

    # rerun: resumes the shards, merges, publishes; same vectors as one process, bit for bit
    stdout = _run(_index_cmd(workdir, model, out, config, 2))
    assert "published as current" in stdout and "rank 1/2: exported rows" in stdout
    two = current_version(out)
    v1, v2 = np.load(one / "vectors.npy"), np.load(two / "vectors.npy")
    assert v1.shape == v2.shape == (n, v1.shape[1])
    assert np.array_equal(v1, v2)
    assert not (out / "export").exists()  # staging (shards included) is gone once published
    a1, a2 = AnnIndex.load(one / "ann.faiss"), AnnIndex.load(two / "ann.faiss")
    assert a1.kind == a2.kind == "ivf" and a1.nlist == a2.nlist
    q = v1[:20]
    assert np.array_equal(a1.search(q, 10)[1], a2.search(q, 10)[1])
    t1, t2 = QidTable.load(one / "qid"), QidTable.load(two / "qid")
    assert np.array_equal(t1.qids, t2.qids) and np.array_equal(t1.rows, t2.rows)
