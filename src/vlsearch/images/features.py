"""Feature extraction: the backbone run over the first image of each product into the
feature cache (:mod:`vlsearch.images.cache`), in durable chunks, resumable byte for byte.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlsearch.config import ConfigError, ImageConfig
from vlsearch.errors import InputError, Problem
from vlsearch.images.backbones import Backbone, get_backbone
from vlsearch.images.cache import (
    FORMAT_VERSION,
    INDEX_FILE,
    PATCHES_FILE,
    ExtractionStats,
    FeatureCache,
    _existing_meta,
    _problem_to_dict,
)
from vlsearch.images.loading import load_image
from vlsearch.io import atomic_write_json


def _first_path(paths: Any) -> str | None:
    if paths is None:
        return None
    if isinstance(paths, (str, Path)):
        return str(paths) if str(paths) else None
    paths = list(paths)
    return str(paths[0]) if paths and paths[0] else None


def _decode(path: str, backbone: Backbone) -> tuple[np.ndarray | None, Problem | None]:
    try:
        return backbone.preprocess_array(load_image(path)), None
    except InputError as exc:
        return None, Problem(path, None, None, str(exc).removeprefix(f"{path}: "))


def _batches(start: int, n: int, chunk_size: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Batches that start at multiples of ``chunk_size`` (and never cross one), so a run
    resumed at ``done`` forms the very batches of an uninterrupted run."""
    chunk_start = start
    while chunk_start < n:
        chunk_end = min((chunk_start // chunk_size + 1) * chunk_size, n)
        for b in range(chunk_start, chunk_end, batch_size):
            yield b, min(b + batch_size, chunk_end)
        chunk_start = chunk_end


def extract_features(
    ids: Sequence[str],
    image_paths: Sequence[Sequence[str] | str | Path | None],
    out_dir: str | Path,
    config: ImageConfig | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
    backbone: Backbone | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> FeatureCache:
    """Run the backbone over the first image of each product into the cache in ``out_dir``.

    ``image_paths[i]`` is product i's list of paths (the first is used), one path, or None.
    A missing or undecodable file gives a zero row, ``has_image`` False and a
    :class:`Problem` naming it. Progress is made durable every ``config.chunk_size`` rows, so
    a killed run resumes where it stopped and produces the same bytes. A complete cache for
    the same ids, backbone and size is returned without work; a cache made with other
    settings or ids raises :class:`WorkdirError`, or is rebuilt when ``overwrite`` is True
    (a compatible partial cache is always resumed). ``backbone`` overrides
    ``config.backbone`` with a ready module; ``on_chunk(done)`` is called after each durable
    chunk. The returned cache's ``last_run`` holds the images/s of this call.
    """
    config = config or ImageConfig()
    out_dir = Path(out_dir)
    ids = [str(pid) for pid in ids]
    image_paths = list(image_paths)
    if len(ids) != len(image_paths):
        raise InputError(
            f"extract_features: {len(ids)} ids but {len(image_paths)} image path entries"
        )
    seen: dict[str, int] = {}
    for row, pid in enumerate(ids):
        if pid in seen:
            raise InputError(
                f"extract_features: product id {pid!r} at rows {seen[pid]} and {row}; ids must be unique"
            )
        seen[pid] = row
    if config.batch_size < 1 or config.chunk_size < 1:
        raise ConfigError(
            f"images: batch_size and chunk_size must be >= 1, got {config.batch_size}, {config.chunk_size}"
        )
    name = backbone.name if backbone is not None else config.backbone
    if backbone is not None and (backbone.width, backbone.height) != (config.width, config.height):
        raise ConfigError(
            f"images: backbone built for {backbone.width}x{backbone.height}, config asks {config.width}x{config.height}"
        )
    wanted = {"backbone": name, "width": config.width, "height": config.height}

    meta = _existing_meta(out_dir, wanted, ids, overwrite)
    if meta is not None and meta["done"] == len(ids):
        cache = FeatureCache.open(out_dir)
        cache.last_run = ExtractionStats(0, 0, 0.0, 0.0, cache.done, 0)
        return cache

    if backbone is None:
        backbone = get_backbone(name, config)
    if meta is not None and (meta["grid"] != list(backbone.grid) or meta["dim"] != backbone.dim):
        meta = None  # same name, different network output: start over
    n, shape = len(ids), (len(ids), backbone.num_patches, backbone.dim)
    patches_path = out_dir / PATCHES_FILE
    if meta is None:
        meta = {
            "format": FORMAT_VERSION,
            **backbone.describe(),
            "n": n,
            "done": 0,
            "counts": {"no_image": 0, "failed": 0},
            "problems": [],
            "ids": ids,
            "has_image": [False] * n,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        patches_path.unlink(missing_ok=True)
        with open(patches_path, "wb") as handle:  # sparse file of zeros
            handle.truncate(int(np.prod(shape)) * 2)
        atomic_write_json(out_dir / INDEX_FILE, meta)

    paths = [_first_path(p) for p in image_paths]
    previous_threads = torch.get_num_threads()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    try:
        stats = _run(backbone, paths, meta, out_dir, shape, config, progress, on_chunk)
    finally:
        torch.set_num_threads(previous_threads)
    cache = FeatureCache.open(out_dir)
    cache.last_run = stats
    return cache


def extract_product_features(
    products: Sequence[Any], out_dir: str | Path, config: ImageConfig | None = None, **kwargs: Any
) -> FeatureCache:
    """:func:`extract_features` over ``Product`` records (their ``id`` and ``image_paths``)."""
    return extract_features(
        [p.id for p in products], [p.image_paths for p in products], out_dir, config, **kwargs
    )




def _run(
    backbone: Backbone,
    paths: list[str | None],
    meta: dict[str, Any],
    out_dir: Path,
    shape: tuple[int, int, int],
    config: ImageConfig,
    progress: bool,
    on_chunk: Callable[[int], None] | None,
) -> ExtractionStats:
    from tqdm.auto import tqdm

    n = shape[0]
    start = meta["done"]
    stats = ExtractionStats(0, 0, 0.0, 0.0, start, 0)
    if start >= n:
        return stats
    store = np.memmap(out_dir / PATCHES_FILE, dtype=np.float16, mode="r+", shape=shape)
    device = backbone.device
    workers = max(0, config.decode_workers)
    pool = (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlsearch-decode")
        if workers
        else None
    )

    def decode_batch(lo: int, hi: int) -> list[tuple[int, np.ndarray | None, Problem | None]]:
        out = []
        for row in range(lo, hi):
            path = paths[row]
            out.append((row, *(_decode(path, backbone) if path else (None, None))))
        return out

    pending: collections.deque[tuple[int, int, Future | None]] = collections.deque()
    batches = _batches(start, n, config.chunk_size, config.batch_size)
    depth = workers + 1

    def refill() -> None:
        while len(pending) < depth:
            span = next(batches, None)
            if span is None:
                return
            job = pool.submit(decode_batch, *span) if pool else None
            pending.append((*span, job))

    bar = tqdm(
        total=n,
        initial=start,
        unit="img",
        desc="image features",
        disable=not progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    began = time.perf_counter()
    try:
        with torch.inference_mode():
            refill()
            while pending:
                lo, hi, job = pending.popleft()
                decoded = job.result() if job is not None else decode_batch(lo, hi)
                refill()
                rows = [row for row, array, _ in decoded if array is not None]
                block = np.zeros((hi - lo, shape[1], shape[2]), dtype=np.float16)
                if rows:
                    batch = torch.from_numpy(np.stack([a for _, a, _ in decoded if a is not None]))
                    vectors = backbone(batch.to(device)).to("cpu", torch.float16).numpy()
                    block[np.asarray(rows) - lo] = vectors
                store[lo:hi] = block
                for row, array, problem in decoded:
                    meta["has_image"][row] = array is not None
                    if problem is not None:
                        meta["problems"].append(_problem_to_dict(problem))
                        meta["counts"]["failed"] += 1
                        stats.failed += 1
                    elif array is None:
                        meta["counts"]["no_image"] += 1
                stats.images += hi - lo
                stats.decoded += len(rows)
                bar.update(hi - lo)
                if hi == n or hi % config.chunk_size == 0:  # end of a chunk: make it durable
                    store.flush()
                    meta["done"] = hi
                    atomic_write_json(out_dir / INDEX_FILE, meta)
                    if on_chunk is not None:
                        on_chunk(hi)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        del store
    stats.seconds = time.perf_counter() - began
    stats.images_per_second = stats.decoded / stats.seconds if stats.seconds > 0 else 0.0
    if progress:
        print(
            f"image features: {stats.decoded} images in {stats.seconds:.1f}s "
            f"({stats.images_per_second:.1f} images/s) with {backbone.name} at "
            f"{backbone.width}x{backbone.height}; rows without an image: "
            f"{stats.images - stats.decoded} ({stats.failed} missing or undecodable files)",
            file=sys.stderr,
        )
    return stats
