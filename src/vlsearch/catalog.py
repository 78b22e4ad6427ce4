"""Product catalog: ``Product`` records, loaders (Kaggle fashion layout, CSV, JSONL, Parquet)
and validation with file/line problems. Brand mining lives in :mod:`vlsearch.brands`,
image-path checks in :mod:`vlsearch.catalog_images`.

Every bad row becomes a :class:`vlsearch.errors.Problem` in the :class:`LoadReport` and is
skipped (or repaired, when that is safe); only an unusable file as a whole (no rows, no
id/title column, unknown format) raises :class:`vlsearch.errors.InputError`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlsearch.brands import (  # noqa: F401 - GENDER_WORDS, BrandMiner re-exported for callers
    GENDER_WORDS,
    BrandLexicon,
    BrandMiner,
    mine_brands,
)
from vlsearch.catalog_images import ImageResolver, verify_images  # noqa: F401 - verify_images re-exported
from vlsearch.errors import InputError, Problem
from vlsearch.tabular import MALFORMED, ParquetRows, delimited_rows, jsonl_rows
from vlsearch.vocabulary import PRODUCT_ATTRIBUTE_KEYS

# ----------------------------------------------------------------------------- records

#: Column-name spellings (after snake-casing) that mean one of
#: :data:`vlsearch.vocabulary.PRODUCT_ATTRIBUTE_KEYS`.
ATTRIBUTE_ALIASES = {
    "color": "colour", "base_colour": "colour", "base_color": "colour",
    "sex": "gender", "subcategory": "sub_category", "mastercategory": "master_category",
    "articletype": "article_type",
}
#: Values that mean "no value" in optional fields (the Kaggle file writes ``NA``).
EMPTY_VALUES = frozenset({"", "NA"})
_WHITESPACE = re.compile(r"\s+")


@dataclass
class Product:
    """One catalog product."""

    id: str  # catalog id, always a string ("15970")
    title: str
    image_paths: list[str]  # absolute paths that exist and are inside the catalog root
    brand: str | None  # from a brand column, else mined from the title
    category: str | None  # finest category field (articleType for the fashion layout)
    attributes: dict[str, str] = field(default_factory=dict)  # keys from PRODUCT_ATTRIBUTE_KEYS


@dataclass
class ColumnMapping:
    """Which columns of a CSV/JSONL/Parquet file hold what.

    The defaults read a file with columns ``id, title, image, brand, category``; every other
    column whose snake-cased name is an attribute key or alias (``gender``, ``color``,
    ``baseColour``, ``season``, ...) becomes an attribute. Optional columns absent from the
    file are skipped when the mapping is the default, and refused when given explicitly.
    """

    id: str = "id"  # product id column
    title: str = "title"  # product title column
    image: str | None = "image"  # image path or list of paths, relative to the file's directory
    image_template: str | None = None  # used when there is no image column, e.g. "images/{id}.jpg"
    image_separator: str = "|"  # separates several paths in one CSV cell
    brand: str | None = "brand"  # brand column; None (or absent): brands are mined from titles
    category: str | None = "category"  # finest category column
    attributes: dict[str, str] | None = None  # attribute key -> column; None: detect by name
    delimiter: str = ","  # CSV field delimiter
    repair_title_commas: bool = True  # rows with extra fields: join them into the title


#: The Kaggle "Fashion Product Images" layout (``styles.csv`` + ``images/{id}.jpg``).
FASHION_MAPPING = ColumnMapping(
    id="id",
    title="productDisplayName",
    image=None,
    image_template="images/{id}.jpg",
    brand=None,
    category="articleType",
    attributes={
        "gender": "gender", "colour": "baseColour", "usage": "usage", "season": "season",
        "master_category": "masterCategory", "sub_category": "subCategory",
        "article_type": "articleType", "year": "year",
    },
)
FASHION_STYLES_FILE = "styles.csv"


@dataclass
class LoadReport:
    """Counts and problems of one catalog load (JSON via :meth:`to_dict`)."""

    file: str = ""
    rows_read: int = 0  # data rows seen (header excluded)
    loaded: int = 0  # products returned
    malformed: int = 0  # rows skipped: missing id/title, bad field count or types
    repaired: int = 0  # rows with unquoted commas whose extra fields were joined into the title
    duplicate_ids: int = 0  # later rows with an id seen before (skipped)
    missing_images: int = 0  # image paths that do not exist (dropped)
    escaped_paths: int = 0  # image paths outside the catalog directory (refused)
    corrupt_images: int = 0  # images PIL cannot decode (dropped by verify_images)
    non_utf8: int = 0  # rows with bytes that are not UTF-8 (decoded with U+FFFD)
    bad_values: int = 0  # attribute values of the wrong type or form (dropped)
    problems: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem, counter: str | None = None) -> None:
        self.problems.append(problem)
        if counter:
            setattr(self, counter, getattr(self, counter) + 1)

    def counts(self) -> dict[str, int]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self) if f.name not in ("file", "problems")
        }

    def summary(self, max_problems: int = 5) -> str:
        """A few lines: the counts that are not zero, then the first problems."""
        counts = self.counts()
        head = f"{self.file}: {self.loaded} products from {self.rows_read} rows"
        extra = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()
                          if v and k not in ("rows_read", "loaded"))
        lines = [head + (f" ({extra})" if extra else "")]
        for problem in self.problems[:max_problems]:
            lines.append(f"  {problem}")
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more problems")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            **self.counts(),
            "problems": [
                {"file": p.file, "line": p.line, "field": p.field, "message": p.message}
                for p in self.problems
            ],
        }


@dataclass
class LoadedCatalog:
    """What :func:`load_catalog` returns."""

    products: list[Product]
    report: LoadReport
    brands: BrandLexicon


# ----------------------------------------------------------------------------- readers
# Rows come from vlsearch.tabular, which reports bad bytes (replaced with U+FFFD, counted as
# ``non_utf8``) and rows the format refuses (``malformed``) into the load report.


@dataclass
class _Row:
    line: int  # 1-based physical line (CSV/JSONL) or row number (Parquet)
    values: dict[str, Any]
    last_line: int | None = None  # CSV: last physical line of the record


def _snake(name: str) -> str:
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _read_csv(path: Path, mapping: ColumnMapping, report: LoadReport,
              limit: int | None) -> tuple[list[str], Iterator[_Row]]:
    header, records = delimited_rows(path, mapping.delimiter, report.add)
    if header is None:
        raise InputError(f"{path}: empty file; expected a header line and product rows")
    title_at = header.index(mapping.title) if mapping.title in header else None

    def rows() -> Iterator[_Row]:
        seen = 0
        for row in records:
            if limit is not None and seen >= limit:
                break
            seen += 1
            if row.record is None:  # not valid CSV: reported by the reader
                report.rows_read += 1
                continue
            fixed = _fit_fields(row.record, len(header), title_at, mapping, str(path), row.line,
                                report)
            if fixed is not None:
                yield _Row(row.line, dict(zip(header, fixed, strict=True)), row.last_line)
        records.close()

    return header, rows()


def _fit_fields(values: list[str], width: int, title_at: int | None, mapping: ColumnMapping,
                path: str, line: int, report: LoadReport) -> list[str] | None:
    """Repair a row with too many fields when that is unambiguous, else report it."""
    if len(values) == width:
        return values
    extra = len(values) - width
    if extra > 0 and not any(v.strip() for v in values[width:]):
        return values[:width]  # trailing delimiters
    if extra > 0 and title_at is not None and mapping.repair_title_commas:
        joined = mapping.delimiter.join(values[title_at: title_at + extra + 1])
        report.add(Problem(path, line, mapping.title,
                           f"{len(values)} fields instead of {width} (unquoted "
                           f"{mapping.delimiter!r} in the title?); joined them into the title"),
                   "repaired")
        return values[:title_at] + [joined] + values[title_at + extra + 1:]
    report.rows_read += 1
    report.add(Problem(path, line, None, f"expected {width} fields, got {len(values)}"),
               MALFORMED)
    return None


def _read_jsonl(path: Path, report: LoadReport, limit: int | None) -> Iterator[_Row]:
    seen = 0
    for row in jsonl_rows(path, report.add):
        if limit is not None and seen >= limit:
            return
        seen += 1
        if row.record is None:  # not a JSON object: reported by the reader
            report.rows_read += 1
            continue
        yield _Row(row.line, row.record)


def _read_parquet(path: Path, limit: int | None) -> tuple[list[str], Iterator[_Row]]:
    parquet = ParquetRows(path)

    def rows() -> Iterator[_Row]:
        for row in parquet.rows():
            if limit is not None and row.line > limit:
                return
            yield _Row(row.line, row.record)

    return parquet.names, rows()


# ----------------------------------------------------------------------------- loading


def _text(value: Any) -> str | None:
    """Scalar to stripped text (None for empty); raises TypeError for lists/dicts."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(type(value).__name__)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        value = int(value) if value.is_integer() else value
    text = _WHITESPACE.sub(" ", str(value)).strip()
    return text or None


def _attribute_columns(header: list[str], mapping: ColumnMapping) -> dict[str, str]:
    if mapping.attributes is not None:
        return dict(mapping.attributes)
    taken = {mapping.id, mapping.title, mapping.image, mapping.brand}  # category may double
    found: dict[str, str] = {}
    for column in header:
        key = _snake(column)
        key = ATTRIBUTE_ALIASES.get(key, key)
        if column not in taken and key in PRODUCT_ATTRIBUTE_KEYS and key not in found:
            found[key] = column
    return found


def _check_columns(path: Path, header: list[str], mapping: ColumnMapping,
                   explicit: bool) -> ColumnMapping:
    """Refuse a header without id/title; drop absent optional columns of a default mapping."""
    missing = [c for c in (mapping.id, mapping.title) if c not in header]
    if missing:
        raise InputError(f"{path}: missing required column(s) {', '.join(map(repr, missing))}; "
                         f"header has {header}")
    optional = {"image": mapping.image, "brand": mapping.brand, "category": mapping.category}
    optional.update({f"attributes.{k}": c for k, c in (mapping.attributes or {}).items()})
    absent = {name: col for name, col in optional.items() if col is not None and col not in header}
    if absent and explicit:
        raise InputError(f"{path}: column(s) named by the mapping not in the header: "
                         + ", ".join(f"{n}={c!r}" for n, c in absent.items())
                         + f"; header has {header}")
    return dataclasses.replace(
        mapping,
        image=mapping.image if mapping.image in header else None,
        brand=mapping.brand if mapping.brand in header else None,
        category=mapping.category if mapping.category in header else None,
    )


def _image_refs(value: Any, separator: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(separator) if p.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return [p.strip() for p in value if p.strip()]
    raise TypeError(type(value).__name__)


class _RowParser:
    """Turns raw rows into products, recording every problem in the report."""

    def __init__(self, path: Path, mapping: ColumnMapping, attributes: dict[str, str],
                 report: LoadReport):
        self.file = str(path)
        self.mapping = mapping
        self.attributes = attributes
        self.report = report
        self.images = ImageResolver(path.parent)
        self.first_line: dict[str, int] = {}

    def parse(self, row: _Row) -> Product | None:
        m, report = self.mapping, self.report
        report.rows_read += 1
        try:
            pid = _text(row.values.get(m.id))
        except TypeError as exc:
            return self._malformed(row, m.id, f"id must be a string or integer, got {exc}")
        try:
            title = _text(row.values.get(m.title))
        except TypeError as exc:
            return self._malformed(row, m.title, f"title must be text, got {exc}")
        if pid is None:
            return self._malformed(row, m.id, "missing id")
        for column in (m.id, m.title):
            raw = row.values.get(column)
            if isinstance(raw, str) and ("\n" in raw or "\r" in raw):
                return self._malformed(row, column, f"value spans lines {row.line}-{row.last_line} "
                                                    "(an unbalanced quote?)")
        if "\ufffd" in pid:
            return self._malformed(row, m.id, f"id {pid!r} has bytes that are not UTF-8")
        if title is None or title in EMPTY_VALUES:
            return self._malformed(row, m.title, f"product {pid}: missing title")
        if pid in self.first_line:
            report.add(Problem(self.file, row.line, m.id, f"duplicate id {pid!r} (first on line "
                                                          f"{self.first_line[pid]}); row skipped"),
                       "duplicate_ids")
            return None
        self.first_line[pid] = row.line
        brand = self._optional(row, m.brand)
        category = self._optional(row, m.category)
        attributes: dict[str, str] = {}
        for key, column in self.attributes.items():
            value = self._optional(row, column)
            if value is not None and key == "year" and not value.isdigit():
                report.add(Problem(self.file, row.line, column,
                                   f"year must be an integer, got {value!r}; dropped"),
                           "bad_values")
                continue
            if value is not None:
                attributes[key] = value
        return Product(pid, title, self._images(row, pid), brand, category, attributes)

    def _malformed(self, row: _Row, column: str, message: str) -> None:
        problem = Problem(self.file, row.line, column, message + "; row skipped")
        self.report.add(problem, "malformed")

    def _optional(self, row: _Row, column: str | None) -> str | None:
        if column is None:
            return None
        try:
            value = _text(row.values.get(column))
        except TypeError as exc:
            self.report.add(Problem(self.file, row.line, column,
                                    f"expected text or a number, got {exc}; dropped"), "bad_values")
            return None
        return None if value is None or value in EMPTY_VALUES else value

    def _images(self, row: _Row, pid: str) -> list[str]:
        m = self.mapping
        if m.image is not None:
            try:
                refs = _image_refs(row.values.get(m.image), m.image_separator)
            except TypeError as exc:
                self.report.add(Problem(self.file, row.line, m.image,
                                        f"expected a path or a list of paths, got {exc}; "
                                        "product is text-only"), "bad_values")
                return []
        elif m.image_template is not None:
            refs = [m.image_template.format(id=pid)]
        else:
            return []
        paths = []
        for ref in refs:
            path, why = self.images.resolve(ref)
            if why == "escaped":
                self.report.add(Problem(self.file, row.line, m.image or "image",
                                        f"image path {ref!r} is outside the catalog directory "
                                        f"{self.images.root}; refused"), "escaped_paths")
            elif why == "missing":
                self.report.add(Problem(self.file, row.line, m.image or "image",
                                        f"image {ref!r} not found; product is text-only"),
                                "missing_images")
            else:
                paths.append(path)
        return paths


def _open_rows(path: Path, mapping: ColumnMapping, report: LoadReport,
               limit: int | None) -> tuple[list[str] | None, Iterator[_Row]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        return _read_csv(path, mapping, report, limit)
    if suffix in (".jsonl", ".ndjson"):
        return None, _read_jsonl(path, report, limit)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path, limit)
    raise InputError(f"{path}: unknown catalog format {suffix!r}; expected a Kaggle-layout "
                     "directory (styles.csv + images/) or a .csv/.tsv/.jsonl/.parquet file")


def load_catalog(path: str | Path, *, limit: int | None = None,
                 mapping: ColumnMapping | None = None,
                 brand_min_products: int = 2) -> LoadedCatalog:
    """Load a catalog: a Kaggle-layout directory or a CSV/TSV/JSONL/Parquet file.

    Bad rows are reported in ``.report`` and skipped; missing or escaping image paths make
    the product text-only. Without a brand column, brands are mined from the titles.
    Raises InputError for a missing file, an unknown format, no rows or no id/title column.
    """
    path = Path(path)
    explicit = mapping is not None
    if path.is_dir():
        styles = path / FASHION_STYLES_FILE
        if not styles.is_file():
            raise InputError(f"{path}: directory without {FASHION_STYLES_FILE}; expected the "
                             "Kaggle fashion layout (styles.csv + images/{id}.jpg)")
        path, mapping = styles, mapping or FASHION_MAPPING
    elif not path.is_file():
        raise InputError(f"{path}: catalog not found")
    mapping = mapping or ColumnMapping()
    report = LoadReport(file=str(path))
    if path.suffix.lower() == ".tsv" and mapping.delimiter == ",":
        mapping = dataclasses.replace(mapping, delimiter="\t")
    header, rows = _open_rows(path, mapping, report, limit)
    if header is None:  # JSONL has no header: every key seen stands for a column
        materialised = list(rows)
        header = list(dict.fromkeys(k for row in materialised for k in row.values))
        rows = iter(materialised)
        if not materialised:
            raise InputError(f"{path}: no product rows" + (
                f"; none of {report.rows_read} lines is a JSON object\n{report.summary()}"
                if report.rows_read else ""))
    mapping = _check_columns(path, header, mapping, explicit)
    parser = _RowParser(path, mapping, _attribute_columns(header, mapping), report)
    products = [p for p in map(parser.parse, rows) if p is not None]
    if report.rows_read == 0:
        raise InputError(f"{path}: no product rows (header only)")
    if not products:
        raise InputError(f"{path}: none of {report.rows_read} rows could be loaded\n"
                         + report.summary())
    if mapping.brand is None:
        colours = {p.attributes["colour"] for p in products if "colour" in p.attributes}
        brands = mine_brands((p.title for p in products), min_products=brand_min_products,
                             stop_phrases=colours)
        for product in products:
            product.brand = brands.brand_of(product.title)
    else:
        brands = BrandLexicon.from_names(p.brand for p in products if p.brand)
        for product in products:
            if product.brand:
                product.brand = brands.brand_of(product.brand) or product.brand
    report.loaded = len(products)
    return LoadedCatalog(products, report, brands)
