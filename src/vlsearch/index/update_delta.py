"""``vlsearch update``'s input: the delta catalog file and the delete list, read and
reported by file and line (``load_delta``, ``read_delete_ids``), the model checked against
the index's (``update_from_files``), then applied by ``index.update.update_index``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from vlsearch.catalog import BrandLexicon, ColumnMapping, Product, load_catalog
from vlsearch.config import IndexConfig
from vlsearch.errors import InputError, Problem, WorkdirError
from vlsearch.index.builder import current_version
from vlsearch.index.update import UpdateReport, update_index
from vlsearch.model import Retriever
from vlsearch.model.retriever import WEIGHTS_FILE


def read_delete_ids(path: str | Path) -> tuple[list[str], list[Problem]]:
    """Product ids to delete, one per line (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: delete list not found") from None
    ids, problems, seen = [], [], {}
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if "\ufffd" in text or any(c.isspace() for c in text):
            problems.append(Problem(str(path), number, "id", f"{text!r} is not one product id; skipped"))
        elif text in seen:
            problems.append(Problem(str(path), number, "id", f"id {text!r} repeated (line {seen[text]})"))
        else:
            seen[text] = number
            ids.append(text)
    return ids, problems


def load_delta(path: str | Path, brands: Iterable[str], mapping: ColumnMapping | None = None):
    """The changed and new products of ``path`` (any catalog format ``load_catalog`` reads);
    a title starting with a brand the index knows gets that brand when the file gives none
    or one the index does not know (a delta is too small to mine brands from)."""
    loaded = load_catalog(path, mapping=mapping)
    known = BrandLexicon.from_names(b for b in brands if b)
    for product in loaded.products:
        if product.brand is None or product.brand not in known:
            product.brand = known.brand_of(product.title) or product.brand
    return loaded


def _weights_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    with open(model_dir / WEIGHTS_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def update_from_files(
    index_dir: str | Path,
    catalog: str | Path | None = None,
    delete_file: str | Path | None = None,
    model_dir: str | Path | None = None,
    config: IndexConfig | None = None,
    mapping: ColumnMapping | None = None,
    progress: bool = True,
    workdir: str | Path | None = None,
) -> UpdateReport:
    """``vlsearch update``: the delta catalog file and the delete list, read and reported by
    file and line, then :func:`update_index`. ``model_dir`` must hold the model the index was
    built with (vectors of another model cannot be mixed in); default: the index's copy."""
    if catalog is None and delete_file is None:
        raise InputError("update: give a delta catalog (--catalog), a delete list (--delete), or both")
    base = current_version(index_dir)
    if model_dir is not None:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise WorkdirError(f"{model_dir}: model directory not found")
        if (base / "model").is_dir() and _weights_digest(model_dir) != _weights_digest(base / "model"):
            raise InputError(f"{model_dir}: not the model index version {base.name} was built with; "
                             "its vectors cannot be mixed with the index's: rebuild with `vlsearch index`")
    problems: list[Problem | str] = []
    products: list[Product] = []
    if catalog is not None:
        brands = pq.read_table(base / "products.parquet", columns=["brand"]).column("brand").to_pylist()
        loaded = load_delta(catalog, set(brands), mapping)
        products = loaded.products
        problems += loaded.report.problems
    deletes: list[str] = []
    if delete_file is not None:
        deletes, bad = read_delete_ids(delete_file)
        problems += bad
    encoder = Retriever.load(model_dir or base / "model")
    return update_index(index_dir, products, deletes, encoder, config, problems, progress, workdir)
