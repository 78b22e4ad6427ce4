"""Resumable export of product vectors into a numpy memmap (``vectors.npy`` + ``progress.json``).

Rows are encoded in batches (``IndexConfig.export_batch_size``) with a tqdm bar; after each
batch the memmap is flushed and ``progress.json`` (written atomically) records how many rows
are done, so a killed export resumes at the next batch. A different ``key`` (model, catalog,
dtype) restarts from zero.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vlsearch.errors import InputError
from vlsearch.io import atomic_write_json, read_json

DTYPES = {"float32": np.float32, "float16": np.float16}
VECTORS_FILE = "vectors.npy"
PROGRESS_FILE = "progress.json"


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
    key = {"n": n, "dtype": dtype, **(key or {})}

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
