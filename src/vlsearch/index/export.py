"""Resumable export of product vectors into a numpy memmap (``vectors.npy`` + ``progress.json``),
in one process or sharded over the ranks of a ``torchrun`` job.

Rows are encoded in batches (``IndexConfig.export_batch_size``) with a tqdm bar; after each
batch the memmap is flushed and ``progress.json`` (written atomically) records how many rows
are done, so a killed export resumes at the next batch. A different ``key`` (model, catalog,
dtype) restarts from zero.

Sharded (``export_sharded``): rank r of N encodes a contiguous run of whole batches into
``OUT/shards/r-of-N/`` (each shard resumable like the one-process export); after a barrier,
rank 0 merges the shards into ``OUT/vectors.npy`` (temporary file + rename) and writes the
same ``progress.json`` a one-process export would. Shard boundaries fall on batch
boundaries, so every batch holds the same products as in one process and the vectors are
the same. Several machines need ``OUT`` on a filesystem all of them see.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vlsearch.errors import InputError, WorkdirError
from vlsearch.io import atomic_write_json, fsync_dir, read_json

DTYPES = {"float32": np.float32, "float16": np.float16}
VECTORS_FILE = "vectors.npy"
PROGRESS_FILE = "progress.json"
SHARDS_DIR = "shards"
MERGE_CHUNK_ROWS = 65536  # rows copied per step when merging shards (bounds memory)


def export_vectors(
    encode: Callable[[int, int], np.ndarray],
    n: int,
    out_dir: str | Path,
    batch_size: int = 256,
    dtype: str = "float32",
    key: dict[str, Any] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Fill ``out_dir/vectors.npy`` with ``encode(start, stop)`` for consecutive row ranges.

    Returns the finished array as a read-only memmap of shape ``[n, d]``.
    """
    if dtype not in DTYPES:
        raise InputError(f"export dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if n <= 0:
        raise InputError("vector export: no products to encode")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path, progress_path = out_dir / VECTORS_FILE, out_dir / PROGRESS_FILE
    key = _full_key(n, dtype, key)

    state = read_json(progress_path) if progress_path.exists() else None
    if state and state.get("key") == key and path.exists():
        done, dim = int(state["done"]), int(state["dim"])
        mm = np.load(path, mmap_mode="r+")
    else:
        done, dim, mm = 0, None, None

    bar = tqdm(total=n, initial=done, desc="export vectors", unit="product", disable=not progress)
    while done < n:
        stop = min(n, done + batch_size)
        batch = np.asarray(encode(done, stop), dtype=np.float32)
        if batch.shape[0] != stop - done:
            raise InputError(f"encoder returned {batch.shape[0]} vectors for rows {done}:{stop}")
        if mm is None:
            dim = int(batch.shape[1])
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPES[dtype], shape=(n, dim))
        mm[done:stop] = batch
        mm.flush()
        done = stop
        atomic_write_json(progress_path, {"key": key, "dim": dim, "done": done})
        bar.update(stop - bar.n)
    bar.close()
    del mm
    return np.load(path, mmap_mode="r")


def _full_key(n: int, dtype: str, key: dict[str, Any] | None) -> dict[str, Any]:
    return {"n": n, "dtype": dtype, **(key or {})}


def finished_export(out_dir: str | Path, n: int, dtype: str = "float32",
                    key: dict[str, Any] | None = None) -> np.ndarray | None:
    """The complete export in ``out_dir`` for this ``key`` (read-only memmap), or None."""
    out_dir = Path(out_dir)
    path, progress_path = out_dir / VECTORS_FILE, out_dir / PROGRESS_FILE
    if not (path.exists() and progress_path.exists()):
        return None
    state = read_json(progress_path)
    if state.get("key") != _full_key(n, dtype, key) or int(state.get("done", -1)) != n:
        return None
    return np.load(path, mmap_mode="r")


def shard_rows(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of shard ``rank`` of ``world``: a contiguous run of whole batches."""
    if not 0 <= rank < world:
        raise InputError(f"shard {rank} of {world}: rank must be in [0, {world})")
    batches = -(-n // batch_size)
    lo, hi = batches * rank // world, batches * (rank + 1) // world
    return min(n, lo * batch_size), min(n, hi * batch_size)


def shard_dir(out_dir: str | Path, rank: int, world: int) -> Path:
    return Path(out_dir) / SHARDS_DIR / f"{rank:05d}-of-{world:05d}"


def _merge_shards(out_dir: Path, n: int, world: int, batch_size: int, dtype: str,
                  key: dict[str, Any]) -> np.ndarray:
    """Rank 0: check every shard is complete, copy them into ``vectors.npy`` atomically."""
    shards = []
    for rank in range(world):
        start, stop = shard_rows(n, batch_size, rank, world)
        if stop == start:
            continue
        sdir = shard_dir(out_dir, rank, world)
        done = finished_export(sdir, stop - start, dtype, {**key, "rows": [start, stop]})
        if done is None:
            raise WorkdirError(
                f"{sdir}: shard {rank} of {world} (rows {start}:{stop}) is missing or incomplete; "
                "with several machines the output directory must be on a filesystem every rank sees"
            )
        shards.append((start, stop, done))
    dim = int(shards[0][2].shape[1])
    final, progress_path = out_dir / VECTORS_FILE, out_dir / PROGRESS_FILE
    tmp = out_dir / f".{VECTORS_FILE}.merge-{os.getpid()}.tmp"
    try:
        mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPES[dtype], shape=(n, dim))
        for start, stop, part in shards:
            for lo in range(0, stop - start, MERGE_CHUNK_ROWS):
                hi = min(stop - start, lo + MERGE_CHUNK_ROWS)
                mm[start + lo:start + hi] = part[lo:hi]
        mm.flush()
        del mm
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        progress_path.unlink(missing_ok=True)  # never a stale progress file beside merged vectors
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out_dir)
    atomic_write_json(progress_path, {"key": _full_key(n, dtype, key), "dim": dim, "done": n})
    shutil.rmtree(out_dir / SHARDS_DIR, ignore_errors=True)
    return np.load(final, mmap_mode="r")


def export_sharded(
    encode: Callable[[int, int], np.ndarray],
    n: int,
    out_dir: str | Path,
    rank: int,
    world: int,
    barrier: Callable[[], None],
    batch_size: int = 256,
    dtype: str = "float32",
    key: dict[str, Any] | None = None,
    progress: bool = True,
) -> np.ndarray | None:
    """This rank's share of the export, then (rank 0) the merged ``out_dir/vectors.npy``.

    Every rank must call it (``barrier`` waits for all of them). Returns the finished array
    on rank 0 and None on the others. A complete export for ``key`` is returned as it is.
    """
    if n <= 0:
        raise InputError("vector export: no products to encode")
    out_dir = Path(out_dir)
    key = dict(key or {})
    finished = finished_export(out_dir, n, dtype, key)
    if finished is None:
        start, stop = shard_rows(n, batch_size, rank, world)
        if stop > start:
            export_vectors(
                lambda a, b: encode(start + a, start + b), stop - start, shard_dir(out_dir, rank, world),
                batch_size, dtype, key={**key, "rows": [start, stop]}, progress=progress,
            )
    barrier()  # every shard is durable (or this rank found the export already finished)
    if rank != 0:
        return None
    return finished if finished is not None else _merge_shards(out_dir, n, world, batch_size, dtype, key)
