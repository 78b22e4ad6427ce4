"""Feature extraction: the backbone run over every image of each product into the feature
cache (:mod:`vlsearch.images.cache`; the first images at the product rows, further ones
appended), in durable chunks, resumable byte for byte.

Images are decoded and preprocessed by a ``torch.utils.data.DataLoader`` over the cache's
rows (``ImageConfig.decode_workers`` worker processes decode ahead of the CNN; 0 decodes in
this process); batches come back in row order, so the bytes never depend on the workers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vlsearch.config import ConfigError, ImageConfig
from vlsearch.errors import InputError, Problem
from vlsearch.images.backbones import Backbone, get_backbone
from vlsearch.images.cache import (
    INDEX_FILE,
    PATCHES_FILE,
    CacheMeta,
    ExtractionStats,
    FeatureCache,
    create,
    image_rows_for,
    resumable_meta,
)
from vlsearch.images.loading import load_image


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
    """Run the backbone over the images of each product into the cache in ``out_dir``.

    ``image_paths[i]`` is product i's list of paths, one path, or None. Row i holds product
    i's first image; further images get rows after all first images, product-major, recorded
    in the cache's ``image_rows`` (a catalog with one image per product gives the
    single-image layout). A missing or undecodable file gives a zero row, ``has_image`` False and a
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
    _check_arguments(ids, image_paths, config, backbone)
    name = backbone.name if backbone is not None else config.backbone
    wanted = {"backbone": name, "width": config.width, "height": config.height,
              "colour_levels": config.colour_levels}
    first, more = _split_paths(image_paths)
    image_rows = image_rows_for([1 + len(m) for m in more])
    meta = resumable_meta(out_dir, wanted, ids, overwrite, image_rows)
    if meta is not None and meta.done == meta.rows:
        cache = FeatureCache.open(out_dir)
        cache.last_run = ExtractionStats(0, 0, 0.0, 0.0, cache.done, 0)
        return cache

    if backbone is None:
        backbone = get_backbone(name, config)
    if meta is None or meta.grid != backbone.grid or meta.dim != backbone.dim:
        meta = CacheMeta.start(backbone.describe(), ids, image_rows)  # (same name, other output: start over)
        create(out_dir, meta)
    paths = first + [path for m in more for path in m]  # the cache's row order
    with _torch_threads(config.num_threads):
        stats = _run(backbone, paths, meta, out_dir, config, progress, on_chunk)
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


def _check_arguments(ids: list[str], image_paths: list[Any], config: ImageConfig,
                     backbone: Backbone | None) -> None:
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
    if backbone is not None and (backbone.width, backbone.height) != (config.width, config.height):
        raise ConfigError(
            f"images: backbone built for {backbone.width}x{backbone.height}, config asks {config.width}x{config.height}"
        )


def _split_paths(image_paths: list[Any]) -> tuple[list[str | None], list[list[str]]]:
    """Each product's first path (None: none given) and its further non-empty paths."""
    first: list[str | None] = []
    more: list[list[str]] = []
    for paths in image_paths:
        if paths is None or isinstance(paths, (str, Path)):
            paths = [paths] if paths is not None else []
        paths = list(paths)
        first.append(str(paths[0]) if paths and paths[0] else None)
        more.append([str(p) for p in paths[1:] if p])
    return first, more


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block (0: leave torch's setting)."""
    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- decoding -----------------------------------------------------------------------------


class _Decoded(NamedTuple):
    row: int
    pixels: np.ndarray | None  # preprocessed float32 [3, H, W]; None without a usable image
    problem: Problem | None  # the missing or undecodable file (None: no path given)


class _Batch(NamedTuple):
    """Rows ``lo:hi`` decoded; ``pixels`` stacks the rows whose ``has_image`` is True."""

    lo: int
    hi: int
    has_image: list[bool]
    problems: list[Problem]  # in row order
    pixels: torch.Tensor | None  # [sum(has_image), 3, H, W] float32


class _ImageRows(Dataset):
    """Row i → its image decoded and preprocessed (run in the DataLoader's workers)."""

    def __init__(self, paths: list[str | None], preprocess: Callable[[Any], np.ndarray]) -> None:
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> _Decoded:
        path = self.paths[row]
        if not path:
            return _Decoded(row, None, None)
        try:
            return _Decoded(row, self.preprocess(load_image(path)), None)
        except InputError as exc:
            return _Decoded(row, None, Problem(path, None, None, str(exc).removeprefix(f"{path}: ")))


def _collate(decoded: list[_Decoded]) -> _Batch:
    arrays = [d.pixels for d in decoded if d.pixels is not None]
    return _Batch(
        decoded[0].row,
        decoded[-1].row + 1,
        [d.pixels is not None for d in decoded],
        [d.problem for d in decoded if d.problem is not None],
        torch.from_numpy(np.stack(arrays)) if arrays else None,
    )


def _batches(start: int, n: int, chunk_size: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """Batches that start at multiples of ``chunk_size`` (and never cross one), so a run
    resumed at ``done`` forms the very batches of an uninterrupted run."""
    chunk_start = start
    while chunk_start < n:
        chunk_end = min((chunk_start // chunk_size + 1) * chunk_size, n)
        for b in range(chunk_start, chunk_end, batch_size):
            yield b, min(b + batch_size, chunk_end)
        chunk_start = chunk_end


def _decoded_batches(backbone: Backbone, paths: list[str | None], start: int,
                     config: ImageConfig) -> Iterator[_Batch]:
    """The batches of rows ``start:`` decoded, in row order."""
    spans = [range(lo, hi) for lo, hi in _batches(start, len(paths), config.chunk_size,
                                                   config.batch_size)]
    loader = DataLoader(_ImageRows(paths, backbone.preprocess_array), batch_sampler=spans,
                        collate_fn=_collate, num_workers=max(0, config.decode_workers))
    return iter(loader)


# --- the extraction loop ------------------------------------------------------------------


def _run(
    backbone: Backbone,
    paths: list[str | None],
    meta: CacheMeta,
    out_dir: Path,
    config: ImageConfig,
    progress: bool,
    on_chunk: Callable[[int], None] | None,
) -> ExtractionStats:
    """Extract rows ``meta.done:`` into ``out_dir``, durable at the end of every chunk."""
    stats = ExtractionStats(0, 0, 0.0, 0.0, meta.done, 0)
    if meta.done >= meta.rows:
        return stats
    store = np.memmap(out_dir / PATCHES_FILE, dtype=np.float16, mode="r+", shape=meta.shape)
    batches = _decoded_batches(backbone, paths, meta.done, config)
    bar = tqdm(total=meta.rows, initial=meta.done, unit="img", desc="image features",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    began = time.perf_counter()
    try:
        with torch.inference_mode():
            for batch in batches:
                _store(backbone, batch, store, meta, stats)
                bar.update(batch.hi - batch.lo)
                if batch.hi == meta.rows or batch.hi % config.chunk_size == 0:  # end of a chunk
                    store.flush()
                    meta.done = batch.hi
                    meta.write(out_dir / INDEX_FILE)
                    if on_chunk is not None:
                        on_chunk(batch.hi)
    finally:
        bar.close()
        del batches, store  # stops the decode workers now, not when a traceback is freed
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


def _store(backbone: Backbone, batch: _Batch, store: np.ndarray, meta: CacheMeta,
           stats: ExtractionStats) -> None:
    """The batch's patch vectors (zero rows without an image) into ``store``; its rows'
    image flags and problems into ``meta``; its counts into ``stats``."""
    rows = batch.hi - batch.lo
    block = np.zeros((rows, *meta.shape[1:]), dtype=np.float16)
    if batch.pixels is not None:
        vectors = backbone(batch.pixels.to(backbone.device)).to("cpu", torch.float16).numpy()
        block[np.flatnonzero(batch.has_image)] = vectors
    store[batch.lo:batch.hi] = block
    decoded = sum(batch.has_image)
    meta.has_image[batch.lo:batch.hi] = batch.has_image
    meta.problems.extend(batch.problems)
    meta.counts["failed"] += len(batch.problems)
    meta.counts["no_image"] += rows - decoded - len(batch.problems)
    stats.images += rows
    stats.decoded += decoded
    stats.failed += len(batch.problems)
