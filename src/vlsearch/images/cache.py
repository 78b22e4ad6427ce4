"""The on-disk feature cache: ``patches.f16`` (float16 memmap ``[n, P, D]``, row i = the
i-th product id) and ``index.json`` (settings, ids, progress, problems), which lets a killed
extraction resume where it stopped; :class:`FeatureCache` is its read side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlsearch.errors import Problem, WorkdirError
from vlsearch.io import read_json

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


def _problem_to_dict(problem: Problem) -> dict[str, Any]:
    return asdict(problem)


def _problem_from_dict(raw: dict[str, Any]) -> Problem:
    return Problem(raw["file"], raw.get("line"), raw.get("field"), raw["message"])


class FeatureCache:
    """Read access to an extracted feature directory; row i belongs to the i-th id given."""

    def __init__(self, directory: Path, meta: dict[str, Any], patches: np.ndarray) -> None:
        self.directory = directory
        self.meta = meta
        self._patches = patches
        self._has_image = np.asarray(meta["has_image"], dtype=bool)
        self._row_of: dict[str, int] | None = None
        self.last_run: ExtractionStats | None = None

    @classmethod
    def open(cls, directory: str | Path) -> FeatureCache:
        """Open and validate ``directory``; :class:`WorkdirError` names the file at fault."""
        directory = Path(directory)
        index_path = directory / INDEX_FILE
        patches_path = directory / PATCHES_FILE
        meta = read_json(index_path)
        _validate_meta(meta, index_path)
        shape = (meta["n"], meta["grid"][0] * meta["grid"][1], meta["dim"])
        if not patches_path.exists():
            raise WorkdirError(f"{patches_path}: file not found (feature cache is incomplete)")
        expected = int(np.prod(shape)) * 2
        actual = patches_path.stat().st_size
        if actual != expected:
            raise WorkdirError(
                f"{patches_path}: {actual} bytes, expected {expected} for float16 {list(shape)} "
                f"as recorded in {index_path}"
            )
        if shape[0] == 0:
            patches = np.zeros(shape, dtype=np.float16)
        else:
            patches = np.memmap(patches_path, dtype=np.float16, mode="r", shape=shape)
        return cls(directory, meta, patches)

    # --- shape and settings ---------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.meta["grid"])  # type: ignore[return-value]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def size(self) -> tuple[int, int]:
        """Input ``(width, height)`` in pixels the features were extracted at."""
        return int(self.meta["width"]), int(self.meta["height"])

    @property
    def backbone(self) -> str:
        return str(self.meta["backbone"])

    @property
    def done(self) -> int:
        return int(self.meta["done"])

    @property
    def complete(self) -> bool:
        return self.done == self.n

    @property
    def ids(self) -> list[str]:
        return list(self.meta["ids"])

    @property
    def problems(self) -> list[Problem]:
        return [_problem_from_dict(p) for p in self.meta["problems"]]

    @property
    def counts(self) -> dict[str, int]:
        """``no_image`` (no path given) and ``failed`` (missing or undecodable file)."""
        return dict(self.meta["counts"])

    # --- rows -------------------------------------------------------------------------------
    def _rows(self, rows: Any) -> np.ndarray | slice:
        if rows is None:
            rows = slice(0, self.n)
        if isinstance(rows, slice):
            span = range(*rows.indices(self.n))
            if span and max(span) >= self.done:
                raise WorkdirError(
                    f"{self.directory}: row {max(span)} requested, only {self.done} of {self.n} extracted"
                )
            return rows
        index = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if index.size and (index.min() < -self.n or index.max() >= self.n):
            raise IndexError(
                f"feature rows out of range [0, {self.n}): {index.min()}..{index.max()}"
            )
        index = np.where(index < 0, index + self.n, index)
        if index.size and index.max() >= self.done:
            raise WorkdirError(
                f"{self.directory}: row {int(index.max())} requested, only {self.done} of {self.n} extracted"
            )
        return index

    def patches(self, rows: Any = None) -> np.ndarray:
        """float16 ``[len(rows), P, D]`` (a copy); ``rows``: ints, an int array, a slice or None (all)."""
        return np.array(self._patches[self._rows(rows)], dtype=np.float16)

    def has_image(self, rows: Any = None) -> np.ndarray:
        """bool ``[len(rows)]``: False where the row is all zeros (no image or a bad file)."""
        return self._has_image[self._rows(rows)].copy()

    def rows_for(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``ids``; an unknown id raises KeyError naming it."""
        if self._row_of is None:
            self._row_of = {pid: i for i, pid in enumerate(self.meta["ids"])}
        try:
            return np.asarray([self._row_of[str(pid)] for pid in ids], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(
                f"{self.directory}: product id {exc.args[0]!r} has no feature row"
            ) from None

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


def _validate_meta(meta: Any, path: Path) -> None:
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
    if len(meta["ids"]) != n or len(meta["has_image"]) != n:
        raise WorkdirError(
            f"{path}: n = {n} but {len(meta['ids'])} ids and {len(meta['has_image'])} has_image entries"
        )
    if not 0 <= meta["done"] <= n:
        raise WorkdirError(f"{path}: done = {meta['done']} outside [0, {n}]")


def _existing_meta(
    out_dir: Path, wanted: dict[str, Any], ids: list[str], overwrite: bool
) -> dict[str, Any] | None:
    """The resumable meta of ``out_dir``, None to start fresh; raises on a foreign cache."""
    index_path = out_dir / INDEX_FILE
    if not index_path.exists():
        return None
    try:
        meta = read_json(index_path)
        _validate_meta(meta, index_path)
    except WorkdirError:
        if overwrite:
            return None
        raise
    differences = [
        f"{key} {meta[key]!r} (wanted {value!r})"
        for key, value in wanted.items()
        if meta[key] != value
    ]
    if meta["ids"] != ids:
        differences.append(_ids_difference(meta["ids"], ids))
    if differences:
        if overwrite:
            return None
        raise WorkdirError(
            f"{out_dir}: feature cache was made with other settings: {'; '.join(differences)}. "
            f"Use another directory or rebuild it (overwrite=True)"
        )
    patches_path = out_dir / PATCHES_FILE
    expected = meta["n"] * meta["grid"][0] * meta["grid"][1] * meta["dim"] * 2
    if not patches_path.exists() or patches_path.stat().st_size != expected:
        return None  # index without its data: nothing to resume
    return meta


def _ids_difference(old: list[str], new: list[str]) -> str:
    if len(old) != len(new):
        return f"{len(old)} ids (wanted {len(new)})"
    row = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
    return f"ids differ first at row {row}: {old[row]!r} (wanted {new[row]!r})"
