"""One loaded index version: everything the engine reads from a version directory.

``IndexVersion(path, config)`` opens the vector store, the qid table (and its stored query
vectors and short-list fill lists, read from the version's files on either backend), the
lexical channel, the lexicon, the product table (tombstones of live updates masked out),
the constraint bitmaps, the query encoder (ONNX or torch; kept from the
previous version when a live update linked the same model in) and the spelling corrector,
and caches query understanding and constraint masks per request text / constraint set.
Image paths are confined to the directories the version's images were in (``_inside``).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vlsearch.config import ServeConfig
from vlsearch.errors import WorkdirError
from vlsearch.index.builder import QUERY_VECTORS
from vlsearch.index.fill_lists import FillList
from vlsearch.index.lexical import LexicalIndex
from vlsearch.index.masks import ConstraintMasks
from vlsearch.index.qid_table import QidTable
from vlsearch.index.spelling import SPELLING_FILE, SpellCorrector, build_vocabulary
from vlsearch.index.store import FilterPolicy, open_lexical, open_qid_table, open_store
from vlsearch.index.understanding import LEXICON_FILE, Constraint, Lexicon, understand
from vlsearch.io import load_part, read_json
from vlsearch.model import Retriever
from vlsearch.model.onnx_query import load_query_encoder
from vlsearch.model.retriever import WEIGHTS_FILE
from vlsearch.text import normalize_text, query_id


class _Lru:
    """A small thread-safe LRU map (bounded by ``size`` entries; 0 disables it)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def _same_model(a: Path, b: Path) -> bool:
    """Two versions share their model when its weights are one file (hard-linked)."""
    try:
        x, y = (a / "model" / WEIGHTS_FILE).stat(), (b / "model" / WEIGHTS_FILE).stat()
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


PRODUCT_COLUMNS = ("id", "title", "brand", "category", "image_path", "attributes")


def _load_products(path: Path) -> dict[str, list]:
    table = pq.read_table(path).to_pydict()
    missing = [c for c in PRODUCT_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"columns {missing} missing")
    return table


def _image_dirs(paths: Sequence[str | None]) -> frozenset[str]:
    """The (resolved) directories holding the version's catalog images: request-time reads
    are confined to them, whatever is put in place of an image after indexing."""
    return frozenset(os.path.realpath(os.path.dirname(p)) for p in paths if p)


def inside_dirs(path: str, dirs: frozenset[str]) -> bool:
    """``path`` lies in one of ``dirs`` or below (checked ancestor by ancestor)."""
    parent = os.path.dirname(path)
    while parent not in dirs:
        up = os.path.dirname(parent)
        if up == parent:
            return False
        parent = up
    return True


def _table_files(path: Path, qid) -> QidTable | None:
    """The qid table's files in the version: the table itself, or (Milvus backend: the
    collection serves the stored lists) the same table's files, which every build and live
    update writes too; None when there are none (the engine then encodes and searches live)."""
    if isinstance(qid, QidTable):
        return qid
    if not (path / "qid" / "qids.npy").is_file():
        return None
    return load_part(path / "qid", "qid table files", QidTable.load)


def _query_vectors(path: Path, table: QidTable | None, dim: int) -> np.ndarray | None:
    """The qid table's query vectors (row i = entry i), memory-mapped; None when the version
    has none that match its table (an older build)."""
    file = path / QUERY_VECTORS
    if table is None or not file.is_file():
        return None
    vectors = load_part(file, "query vectors", lambda p: np.load(p, mmap_mode="r"))
    return np.asarray(vectors) if vectors.shape == (len(table), dim) else None


class IndexVersion:
    """Everything loaded from one index version."""

    def __init__(self, path: Path, config: ServeConfig, retriever=None, previous: IndexVersion | None = None):
        self.path = path
        self.name = path.name
        manifest = read_json(path / "manifest.json")
        policy = FilterPolicy(config.filter_selective_fraction, config.overfetch_factor,
                              config.filter_widen_search)
        self.store = load_part(path, "vector store", lambda p: open_store(p, manifest, policy))
        self.qid = load_part(path / "qid", "qid table", lambda _: open_qid_table(path, manifest))
        self.lexical = load_part(path / "lexical", "tantivy index",
                                 lambda _: open_lexical(path, manifest, self.store))
        # logged queries' BM25 lists were computed with tantivy: usable when it serves the channel
        self.stored_lexical = isinstance(self.lexical, LexicalIndex) and \
            bool(getattr(self.qid, "has_lexical", False))
        self._table = _table_files(path, self.qid)  # positions of the query vectors, fill lists
        self.query_vectors = _query_vectors(path, self._table, self.store.dim)
        self.fill = self._table.fill if self._table is not None else None  # index.fill_lists
        self.lexicon = load_part(path / LEXICON_FILE, "lexicon",
                                 lambda p: Lexicon.from_json(read_json(p)))
        table = load_part(path / "products.parquet", "product table", _load_products)
        self.ids: list[str] = table["id"]
        self.titles: list[str] = table["title"]
        self.brands: list[str | None] = table["brand"]
        self.categories: list[str | None] = table["category"]
        self.image_paths: list[str | None] = table["image_path"]  # the first image: the thumbnail
        self.all_image_paths: list[list[str]] | None = table.get("image_paths")  # multi-image catalogs
        self.attributes: list[str] = table["attributes"]
        self.image_dirs = _image_dirs(self.image_paths)
        # rows deleted by a live update (index.update) stay as tombstones: rows never move
        self.live = ~np.asarray(table.get("deleted") or [False] * len(self.ids), dtype=bool)
        self.live.setflags(write=False)
        self.row_of = {pid: i for i, pid in enumerate(self.ids) if self.live[i]}
        self.n = len(self.row_of)  # live products
        live = self.live.tolist()
        self.masks = ConstraintMasks.from_columns(  # a tombstone matches no constraint
            [b if ok else None for b, ok in zip(self.brands, live)],
            [c if ok else None for c, ok in zip(self.categories, live)],
            [a if ok else "{}" for a, ok in zip(self.attributes, live)])
        if not (self.n == self.store.count() == self.lexical.n):
            raise WorkdirError(f"{path}: index parts disagree on the number of products")
        if retriever is None and previous is not None and _same_model(previous.path, path):
            # a live update links the same model files in: keep the loaded encoders
            self.retriever, self.encoder = previous.retriever, previous.encoder
        elif retriever is None:
            if not (path / "model").is_dir():
                raise WorkdirError(f"{path}: index version has no model/ to encode queries with")
            retriever = load_part(path / "model", "model", Retriever.load)
            self.encoder = load_query_encoder(retriever, path / "model", config.query_encoder,
                                              config.onnx_threads)
            self.retriever = retriever
        else:
            self.retriever = self.encoder = retriever  # the caller's encoder (tests, benchmarks) as given
        self.speller = None
        if config.spelling:  # a version without spelling.json (an older build): from its live titles
            self.speller = (SpellCorrector.load(path / SPELLING_FILE, config) if (path / SPELLING_FILE).exists()
                            else SpellCorrector(build_vocabulary([t for t, ok in zip(self.titles, live) if ok],
                                                                 self.lexicon.phrases), config))
        self._masks: _Lru = _Lru(config.filter_cache_size)
        self._understood: _Lru = _Lru(config.understanding_cache_size)
        self._attributes: _Lru = _Lru(config.product_cache_size)
        self._synonyms = config.synonyms

    def mask(self, constraints: Sequence[Constraint]) -> np.ndarray:
        """Rows satisfying every constraint, from the precomputed bitmaps (LRU of the last sets)."""
        key = tuple(sorted((c.field, c.values) for c in constraints))
        mask = self._masks.get(key)
        if mask is None:
            mask = self.masks.mask_canonical(key)
            mask.setflags(write=False)
            self._masks.put(key, mask)
        return mask

    def _analysed(self, text: str) -> tuple[tuple[Constraint, ...], tuple[Constraint, ...], int]:
        """(auto constraints, soft preferences, qid) of ``text``, cached per normalised text (LRU)."""
        key = " ".join(normalize_text(text).split())
        found = self._understood.get(key)
        if found is None:
            got = understand(text, self.lexicon, synonyms=self._synonyms)
            found = (tuple(got.constraints), tuple(got.preferences), int(query_id(text)))
            self._understood.put(key, found)
        return found

    def understand(self, text: str) -> list[Constraint]:
        """Query understanding's constraints for ``text``, cached per normalised text."""
        return list(self._analysed(text)[0])

    def preferences(self, text: str) -> list[Constraint]:
        """Query understanding's soft preferences for ``text`` (cached with the constraints)."""
        return list(self._analysed(text)[1])

    def query_id(self, text: str) -> int:
        return self._analysed(text)[2]

    def query_vector(self, qid: int) -> np.ndarray | None:
        """A logged query's embedding as the build encoded it (``query_vectors.npy``), or None."""
        if self.query_vectors is None:
            return None
        pos = self._table.position(qid)
        return None if pos is None else np.asarray(self.query_vectors[pos], np.float32)

    def fill_list(self, qid: int, signature: int) -> FillList | None:
        """The short-list fill's lists stored for ``qid`` under the constraint set with
        ``signature`` (lexical ones only where tantivy, which computed them, serves the
        channel), or None."""
        found = self.fill.find(qid, signature) if self.fill is not None else None
        if found is None or self.stored_lexical or "lexical" not in found.channels:
            return found
        return FillList(found.depth, {"embedding": found.channels["embedding"]})

    def product(self, row: int) -> dict:
        return {"id": self.ids[row], "title": self.titles[row], "brand": self.brands[row],
                "category": self.categories[row], "attributes": dict(self.product_attributes(row)),
                "has_image": bool(self.image_paths[row])}

    def product_attributes(self, row: int) -> dict[str, str]:
        """Row ``row``'s attributes, parsed once (LRU): every hit of every page reads them.
        The dict is shared: read it, do not change it."""
        found = self._attributes.get(row)
        if found is None:
            found = json.loads(self.attributes[row] or "{}")
            self._attributes.put(row, found)
        return found
