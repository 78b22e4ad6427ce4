"""The on-disk feature cache: ``patches.f16`` (float16 memmap ``[rows, P, D]``, row i = the
first image of the i-th product id) and ``index.json`` (:class:`CacheMeta`: settings, ids,
progress, problems), which lets a killed extraction resume where it stopped;
:class:`FeatureCache` is its read side.

Products with several images: their further images are appended after the n first-image
rows, product-major, and ``index.json`` records each product's rows (``image_rows``; absent
when no product has more than one image, so such a cache has the bytes it always had).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlsearch.errors import Problem, WorkdirError
from vlsearch.io import atomic_write_json, read_json

FORMAT_VERSION = 1
PATCHES_FILE = "patches.f16"
INDEX_FILE = "index.json"


@dataclass
class ExtractionStats:
    """What one ``extract_features`` call did (``images == 0`` when the cache was already complete)."""

    images: int  # rows processed by this call (with or without an image)
    decoded: int  # images decoded and run through the backbone
    seconds: float
    images_per_second: float  # decoded images per second, decode and CNN together
    resumed_from: int  # rows already done when the call started
    failed: int  # missing or undecodable files in this call


@dataclass
class CacheMeta:
    """``index.json``: what the patches were made with and how far extraction got.

    On disk a JSON object with the keys ``format, backbone, width, height, grid, dim, n,
    done, counts, problems, ids, has_image`` (``n`` = ``len(ids)``; ``problems`` as
    ``{file, line, field, message}`` objects), and ``image_rows`` when a product has several
    images (``image_rows[i]``: product i's rows in image order, ``[i, ...]``; ``has_image`` and
    ``done`` then count rows, not products).
    """

    backbone: str
    width: int
    height: int
    grid: tuple[int, int]  # (rows, cols) of the patch grid
    dim: int
    ids: list[str]  # row i = product ids[i]
    has_image: list[bool]  # False: no path, or a missing or undecodable file (a zero row)
    done: int = 0  # rows extracted and durable (the end of a chunk)
    counts: dict[str, int] = field(default_factory=lambda: {"no_image": 0, "failed": 0})
    problems: list[Problem] = field(default_factory=list)
    format: int = FORMAT_VERSION
    image_rows: list[list[int]] | None = None  # per product its rows; None: one row each
    colour_levels: int = 0  # colour histogram levels appended to each patch (0: none)

    @classmethod
    def start(cls, describe: dict[str, Any], ids: list[str],
              image_rows: list[list[int]] | None = None) -> CacheMeta:
        """Nothing extracted yet, for ``Backbone.describe()``, ``ids`` and (several images
        per product) ``image_rows`` from :func:`image_rows_for`."""
        rows = len(ids) if image_rows is None else sum(len(r) for r in image_rows)
        return cls(describe["backbone"], describe["width"], describe["height"],
                   tuple(describe["grid"]), describe["dim"], list(ids), [False] * rows,
                   image_rows=image_rows, colour_levels=describe.get("colour_levels", 0))

    @classmethod
    def read(cls, path: Path) -> CacheMeta:
        """Read and validate ``path``; :class:`WorkdirError` names what is wrong."""
        raw = read_json(path)
        _validate(raw, path)
        return cls(
            backbone=raw["backbone"], width=raw["width"], height=raw["height"],
            grid=tuple(raw["grid"]), dim=raw["dim"], ids=list(raw["ids"]),
            has_image=[bool(h) for h in raw["has_image"]], done=raw["done"],
            counts=dict(raw["counts"]), format=raw["format"],
            problems=[Problem(p["file"], p.get("line"), p.get("field"), p["message"])
                      for p in raw["problems"]],
            image_rows=raw.get("image_rows"), colour_levels=raw.get("colour_levels", 0),
        )

    def write(self, path: Path) -> None:
        raw = {
            "format": self.format, "backbone": self.backbone, "width": self.width,
            "height": self.height, "grid": list(self.grid), "dim": self.dim, "n": self.n,
            "done": self.done, "counts": self.counts,
            "problems": [asdict(p) for p in self.problems], "ids": self.ids,
            "has_image": self.has_image,
        }
        if self.image_rows is not None:
            raw["image_rows"] = self.image_rows
        if self.colour_levels:  # (absent when off: caches made before the option read the same)
            raw["colour_levels"] = self.colour_levels
        atomic_write_json(path, raw)

    @property
    def n(self) -> int:
        """Products (the first-image rows)."""
        return len(self.ids)

    @property
    def rows(self) -> int:
        """Rows of ``patches.f16``: one per image (``n`` when every product has at most one)."""
        return len(self.has_image)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(rows, P, D)`` of ``patches.f16``."""
        return self.rows, self.grid[0] * self.grid[1], self.dim

    @property
    def patch_bytes(self) -> int:
        return int(np.prod(self.shape)) * 2


class FeatureCache:
    """Read access to an extracted feature directory; row i belongs to the i-th id given."""

    def __init__(self, directory: Path, meta: CacheMeta, patches: np.ndarray) -> None:
        self.directory = directory
        self.meta = meta
        self._patches = patches
        self._has_image = np.asarray(meta.has_image, dtype=bool)
        self.last_run: ExtractionStats | None = None

    @classmethod
    def open(cls, directory: str | Path) -> FeatureCache:
        """Open and validate ``directory``; :class:`WorkdirError` names the file at fault."""
        directory = Path(directory)
        index_path = directory / INDEX_FILE
        patches_path = directory / PATCHES_FILE
        meta = CacheMeta.read(index_path)
        if not patches_path.exists():
            raise WorkdirError(f"{patches_path}: file not found (feature cache is incomplete)")
        actual = patches_path.stat().st_size
        if actual != meta.patch_bytes:
            raise WorkdirError(
                f"{patches_path}: {actual} bytes, expected {meta.patch_bytes} for float16 "
                f"{list(meta.shape)} as recorded in {index_path}"
            )
        if meta.n == 0:
            patches = np.zeros(meta.shape, dtype=np.float16)
        else:
            patches = np.memmap(patches_path, dtype=np.float16, mode="r", shape=meta.shape)
        return cls(directory, meta, patches)

    # --- shape and settings ---------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.meta.n

    @property
    def grid(self) -> tuple[int, int]:
        return self.meta.grid

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def colour_levels(self) -> int:
        """Colour histogram levels appended to each patch vector (0: CNN features only)."""
        return self.meta.colour_levels

    @property
    def size(self) -> tuple[int, int]:
        """Input ``(width, height)`` in pixels the features were extracted at."""
        return self.meta.width, self.meta.height

    @property
    def backbone(self) -> str:
        return self.meta.backbone

    @property
    def done(self) -> int:
        return self.meta.done

    @property
    def rows(self) -> int:
        """Rows of patches, one per image; the first ``n`` are the products' first images."""
        return self.meta.rows

    @property
    def complete(self) -> bool:
        return self.done == self.rows

    @property
    def ids(self) -> list[str]:
        return list(self.meta.ids)

    @property
    def problems(self) -> list[Problem]:
        return list(self.meta.problems)

    @property
    def counts(self) -> dict[str, int]:
        """``no_image`` (no path given) and ``failed`` (missing or undecodable file)."""
        return dict(self.meta.counts)

    # --- rows -------------------------------------------------------------------------------
    def _rows(self, rows: Any, limit: int | None = None) -> np.ndarray | slice:
        """``rows`` checked against ``limit`` (default ``n``: product rows) and ``done``."""
        limit = self.n if limit is None else limit
        if rows is None:
            rows = slice(0, limit)
        if isinstance(rows, slice):
            span = range(*rows.indices(limit))
            if span and max(span) >= self.done:
                raise WorkdirError(
                    f"{self.directory}: row {max(span)} requested, only {self.done} of {self.rows} extracted"
                )
            return rows
        index = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if index.size and (index.min() < -limit or index.max() >= limit):
            raise IndexError(
                f"feature rows out of range [0, {limit}): {index.min()}..{index.max()}"
            )
        index = np.where(index < 0, index + limit, index)
        if index.size and index.max() >= self.done:
            raise WorkdirError(
                f"{self.directory}: row {int(index.max())} requested, only {self.done} of {self.rows} extracted"
            )
        return index

    def image_rows(self, product: int) -> list[int]:
        """The cache rows of product row ``product``'s images, in catalog order."""
        if self.meta.image_rows is None:
            return [int(product)]
        return list(self.meta.image_rows[product])

    def product_images(self, rows: Any, max_images: int) -> tuple[np.ndarray, np.ndarray]:
        """Patches of up to ``max_images`` images of the products ``rows``: with 1, exactly
        ``(patches(rows), has_image(rows))``; otherwise float16 ``[len(rows), N*P, D]`` (zeros
        where a product has fewer images) and bool ``image_mask [len(rows), N]`` (False for an
        absent slot, or an image that did not decode)."""
        if max_images == 1:
            return self.patches(rows), self.has_image(rows)
        products = np.arange(self.n)[self._rows(rows)]
        patches = np.zeros((len(products), max_images, self.num_patches, self.dim), dtype=np.float16)
        mask = np.zeros((len(products), max_images), dtype=bool)
        for i, product in enumerate(products):
            own = self.image_rows(int(product))[:max_images]
            index = self._rows(own, self.rows)
            patches[i, :len(own)] = self._patches[index]
            mask[i, :len(own)] = self._has_image[index]
        return patches.reshape(len(products), max_images * self.num_patches, self.dim), mask

    def patches(self, rows: Any = None) -> np.ndarray:
        """float16 ``[len(rows), P, D]`` (a copy); ``rows``: ints, an int array, a slice or None (all)."""
        return np.array(self._patches[self._rows(rows)], dtype=np.float16)

    def has_image(self, rows: Any = None) -> np.ndarray:
        """bool ``[len(rows)]``: False where the row is all zeros (no image or a bad file)."""
        return self._has_image[self._rows(rows)].copy()

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.directory)!r}, backbone={self.backbone!r}, n={self.n}, "
            f"grid={self.grid}, dim={self.dim}, done={self.done})"
        )


_META_KEYS = {
    "format": int,
    "backbone": str,
    "width": int,
    "height": int,
    "grid": list,
    "dim": int,
    "n": int,
    "done": int,
    "ids": list,
    "has_image": list,
    "counts": dict,
    "problems": list,
}


def _validate(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict):
        raise WorkdirError(f"{path}: expected a JSON object")
    for key, kind in _META_KEYS.items():
        if not isinstance(meta.get(key), kind):
            raise WorkdirError(f"{path}: field {key!r} missing or not a {kind.__name__}")
    if meta["format"] != FORMAT_VERSION:
        raise WorkdirError(
            f"{path}: feature cache format {meta['format']}, expected {FORMAT_VERSION}"
        )
    n = meta["n"]
    if len(meta["grid"]) != 2 or not all(isinstance(g, int) and g > 0 for g in meta["grid"]):
        raise WorkdirError(f"{path}: field 'grid' must be [rows, cols], got {meta['grid']}")
    rows = n if meta.get("image_rows") is None else _validate_image_rows(meta["image_rows"], n, path)
    if len(meta["ids"]) != n or len(meta["has_image"]) != rows:
        layout = "" if rows == n else f" ({rows} image rows)"
        raise WorkdirError(
            f"{path}: n = {n}{layout} but {len(meta['ids'])} ids and "
            f"{len(meta['has_image'])} has_image entries"
        )
    if not 0 <= meta["done"] <= rows:
        raise WorkdirError(f"{path}: done = {meta['done']} outside [0, {rows}]")


def _validate_image_rows(image_rows: Any, n: int, path: Path) -> int:
    """The row count ``image_rows`` describes; :class:`WorkdirError` unless it is the layout
    of :func:`image_rows_for` (product i at row i, further images appended product-major)."""
    if not isinstance(image_rows, list) or len(image_rows) != n:
        raise WorkdirError(f"{path}: field 'image_rows' must be a list of {n} row lists")
    counts = [len(r) if isinstance(r, list) else 0 for r in image_rows]
    if any(c < 1 for c in counts) or image_rows != image_rows_for(counts):
        raise WorkdirError(f"{path}: field 'image_rows' is not the cache's row layout")
    return sum(counts)


def image_rows_for(counts: list[int]) -> list[list[int]] | None:
    """Each product's rows for ``counts[i]`` images (at least one row each): product i's first
    image at row i, its others after all first images, product-major; None when no product
    has more than one image (the single-image layout)."""
    if all(c <= 1 for c in counts):
        return None
    rows, extra = [], len(counts)
    for i, count in enumerate(counts):
        more = max(count, 1) - 1
        rows.append([i, *range(extra, extra + more)])
        extra += more
    return rows


def resumable_meta(
    out_dir: Path, wanted: dict[str, Any], ids: list[str], overwrite: bool,
    image_rows: list[list[int]] | None = None,
) -> CacheMeta | None:
    """The meta of the cache in ``out_dir`` when it can be resumed (or is complete) for
    ``ids`` (with ``image_rows``) and the ``wanted`` backbone/width/height, else None to start fresh; a cache
    made with other settings raises :class:`WorkdirError` unless ``overwrite``."""
    index_path = out_dir / INDEX_FILE
    if not index_path.exists():
        return None
    try:
        meta = CacheMeta.read(index_path)
    except WorkdirError:
        if overwrite:
            return None
        raise
    differences = [
        f"{key} {getattr(meta, key)!r} (wanted {value!r})"
        for key, value in wanted.items()
        if getattr(meta, key) != value
    ]
    if meta.ids != ids:
        differences.append(_ids_difference(meta.ids, ids))
    elif meta.image_rows != image_rows:
        differences.append("the products' image counts differ")
    if differences:
        if overwrite:
            return None
        raise WorkdirError(
            f"{out_dir}: feature cache was made with other settings: {'; '.join(differences)}. "
            f"Use another directory or rebuild it (overwrite=True)"
        )
    patches_path = out_dir / PATCHES_FILE
    if not patches_path.exists() or patches_path.stat().st_size != meta.patch_bytes:
        return None  # index without its data: nothing to resume
    return meta


def create(out_dir: Path, meta: CacheMeta) -> None:
    """A fresh cache in ``out_dir``: an all-zero (sparse) ``patches.f16`` and ``meta``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    patches_path = out_dir / PATCHES_FILE
    patches_path.unlink(missing_ok=True)
    with open(patches_path, "wb") as handle:
        handle.truncate(meta.patch_bytes)
    meta.write(out_dir / INDEX_FILE)


def _ids_difference(old: list[str], new: list[str]) -> str:
    if len(old) != len(new):
        return f"{len(old)} ids (wanted {len(new)})"
    row = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
    return f"ids differ first at row {row}: {old[row]!r} (wanted {new[row]!r})"
