"""Image features a live update reuses instead of running the image backbone again.

``CachedImages`` wraps the work directory's feature cache (written by ``vlsearch prepare``,
one row of patch features per product) and answers, for each product of a delta, the cache
row whose features are those of the product's image: the same product id, a cached image,
and the delta's image file the very file the cache was computed from (the same inode, a hard
link, or the same bytes). Everything else (new products, new or edited images) goes through
the backbone. ``encode_products`` feeds both to the encoder in one call, exactly as an
export feeds the cached patches, so an unchanged image gives the vector a rebuild would.
"""

from __future__ import annotations

import filecmp
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vlsearch.errors import WorkdirError
from vlsearch.workdir import Workdir


class CachedImages:
    """The feature cache of one work directory, looked up by product and image file."""

    def __init__(self, cache, image_of: dict[str, str | None]):
        self.cache = cache
        self.image_of = image_of  # product id -> the image file its cached features came from
        self.row_of = {str(pid): row for row, pid in enumerate(cache.ids)}  # product id -> cache row

    @classmethod
    def open(cls, workdir: str | Path | None) -> CachedImages | None:
        """The cache of ``workdir``; None when there is none (no directory, no features stage)."""
        if not workdir:
            return None
        try:
            wd = Workdir.open(workdir)
            cache = wd.features()
            table = pq.read_table(wd.path / "products.parquet", columns=["id", "image_path"]).to_pydict()
        except (WorkdirError, OSError):
            return None
        return cls(cache, dict(zip(map(str, table["id"]), table["image_path"])))

    def fits(self, encoder) -> bool:
        """The encoder reads images, and its backbone is the one the cache was made with."""
        config = getattr(encoder, "config", None)
        image = getattr(encoder, "image", None)
        if config is None or image is None or not config.model.use_images:
            return False
        if config.model.max_images > 1:  # several images per product: the backbone's
            return False
        return (image.get("backbone") == self.cache.backbone and int(image["dim"]) == self.cache.dim
                and int(np.prod(image["grid"])) == self.cache.num_patches
                and image.get("colour_levels", 0) == self.cache.colour_levels)

    def rows(self, products: Sequence) -> np.ndarray:
        """Cache row per product (-1: encode its image with the backbone)."""
        out = np.full(len(products), -1, np.int64)
        for i, p in enumerate(products):
            was, row = self.image_of.get(str(p.id)), self.row_of.get(str(p.id))
            if was and row is not None and p.image_paths and _same_file(p.image_paths[0], was) \
                    and row < self.cache.done and self.cache.has_image([row])[0]:
                out[i] = row
        return out


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def encode_products(encoder, products: list, cached: CachedImages | None) -> tuple[np.ndarray, int]:
    """Product vectors, images from ``cached`` where it holds them; (vectors, images reused)."""
    if cached is None or not cached.fits(encoder) or not products:
        return np.asarray(encoder.encode_products(products), np.float32), 0
    rows = cached.rows(products)
    hit = np.flatnonzero(rows >= 0)
    miss = [i for i in np.flatnonzero(rows < 0).tolist() if products[i].image_paths]
    patches = np.zeros((len(products), cached.cache.num_patches, cached.cache.dim), np.float32)
    has_image = np.zeros(len(products), bool)
    if len(hit):
        patches[hit] = cached.cache.patches(rows[hit])
        has_image[hit] = True
    if miss:
        patches[miss], has_image[miss] = encoder.extract_patches([products[i] for i in miss])
    vectors = encoder.encode_products(products, patches=patches, has_image=has_image)
    return np.asarray(vectors, np.float32), len(hit)
