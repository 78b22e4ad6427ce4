"""Catalog image paths: :class:`ImageResolver` (a row's image references checked against the
catalog directory: missing files, symlinks and ``..`` that escape it) and :func:`verify_images`
(every referenced image decoded once; undecodable ones dropped and reported).

Feature extraction from the images is :mod:`vlsearch.images`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from vlsearch.errors import Problem

if TYPE_CHECKING:  # annotations only: vlsearch.catalog imports this module
    from vlsearch.catalog import LoadReport, Product


class ImageResolver:
    """Checks image paths against the catalog root; one directory listing per directory."""

    def __init__(self, root: Path):
        self.root = os.path.realpath(root)
        self._real_dirs: dict[str, str] = {}
        self._listings: dict[str, dict[str, str]] = {}  # real dir -> {name: file|link|other}

    def _inside(self, path: str) -> bool:
        return path == self.root or path.startswith(self.root + os.sep)

    @staticmethod
    def _kind(entry: os.DirEntry) -> str:
        if entry.is_symlink():
            return "link"
        return "file" if entry.is_file(follow_symlinks=False) else "other"

    def _listing(self, real_dir: str) -> dict[str, str]:
        if real_dir not in self._listings:
            try:
                with os.scandir(real_dir) as entries:
                    self._listings[real_dir] = {e.name: self._kind(e) for e in entries}
            except OSError:
                self._listings[real_dir] = {}
        return self._listings[real_dir]

    def resolve(self, relative: str) -> tuple[str | None, str | None]:
        """(absolute path, None) when usable, else (None, "missing" | "escaped")."""
        joined = os.path.normpath(os.path.join(self.root, relative))
        parent, name = os.path.split(joined)
        if parent not in self._real_dirs:
            self._real_dirs[parent] = os.path.realpath(parent)
        real_parent = self._real_dirs[parent]
        if not self._inside(real_parent):
            return None, "escaped"
        kind = self._listing(real_parent).get(name, "other")
        if kind == "other":
            return None, "missing"  # absent, or a directory / device instead of a file
        path = os.path.join(real_parent, name)
        if kind == "link":
            path = os.path.realpath(path)
            if not self._inside(path):
                return None, "escaped"
            if not os.path.isfile(path):
                return None, "missing"
        return path, None


def verify_images(products: Sequence[Product], report: LoadReport, workers: int | None = None,
                  progress: bool = False) -> int:
    """Decode every image fully with PIL; undecodable ones are dropped (product text-only).

    Each bad image is counted in ``report.corrupt_images`` with a problem naming the file.
    Returns the number of images dropped.
    """
    # PIL is loaded only when images are verified: loading a catalog does not decode images.
    from PIL import Image, ImageFile

    decode_errors = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                     Image.DecompressionBombError)

    def check(path: str) -> str | None:
        try:
            with Image.open(path) as image:
                image.load()
        except decode_errors as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    paths = sorted({p for product in products for p in product.image_paths})
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(check, paths)
            if progress:
                results = tqdm(results, total=len(paths), desc="verify images", unit="img")
            errors = {path: error for path, error in zip(paths, results, strict=True) if error}
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    dropped = 0
    for product in products:
        bad = [p for p in product.image_paths if p in errors]
        dropped += len(bad)
        for path in bad:
            message = (f"product {product.id}: image cannot be decoded ({errors[path]}); "
                       "product is text-only")
            report.add(Problem(path, None, "image", message), "corrupt_images")
        if bad:
            product.image_paths = [p for p in product.image_paths if p not in errors]
    return dropped
