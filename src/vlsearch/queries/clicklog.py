"""Click logs: the (query, product_id, count) rows a training stream is made of, read from
CSV/TSV, JSONL or Parquet with every bad row reported as a ``Problem``, and the sampling
probabilities Q(p) of the logQ correction.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from vlsearch.errors import InputError, Problem
from vlsearch.io import atomic_write
from vlsearch.tabular import MALFORMED, ParquetRows, delimited_rows, jsonl_rows
from vlsearch.text import query_ids, segment

if TYPE_CHECKING:  # annotations only: a click log never needs the generator itself
    from vlsearch.queries.generator import MockQuery

class ClickRow(NamedTuple):
    query: str
    product_id: str
    count: int


@dataclass
class ClickLog:
    """(query, product_id, count) rows, column-wise; ``problems`` lists the rows skipped
    while reading (file, line, field, message) and ``rows_read`` counts every data row seen."""

    query: list[str] = field(default_factory=list)
    product_id: list[str] = field(default_factory=list)
    count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    problems: list[Problem] = field(default_factory=list)
    rows_read: int = 0
    source: str | None = None

    def __post_init__(self) -> None:
        self.count = np.asarray(self.count, dtype=np.int64)
        if not (len(self.query) == len(self.product_id) == len(self.count)):
            raise ValueError("ClickLog columns must have the same length")

    def __len__(self) -> int:
        return len(self.query)

    def rows(self) -> Iterator[ClickRow]:
        for q, p, c in zip(self.query, self.product_id, self.count.tolist()):
            yield ClickRow(q, p, c)

    def qids(self) -> np.ndarray:
        """``vlsearch.text.query_id`` of every row (uint32)."""
        return query_ids(self.query)

    def take(self, rows: Sequence[int]) -> ClickLog:
        """The rows at the given positions, in that order."""
        return ClickLog(
            query=[self.query[i] for i in rows],
            product_id=[self.product_id[i] for i in rows],
            count=self.count[np.asarray(rows, dtype=np.int64)],
            source=self.source,
        )

    @property
    def total_clicks(self) -> int:
        return int(self.count.sum())

    @classmethod
    def from_queries(cls, queries: Iterable[MockQuery]) -> ClickLog:
        """One row per distinct (text, product), counts summed."""
        merged: dict[tuple[str, str], int] = {}
        for q in queries:
            key = (q.text, q.product_id)
            merged[key] = merged.get(key, 0) + int(q.count)
        return cls(
            [k[0] for k in merged], [k[1] for k in merged],
            np.fromiter(merged.values(), dtype=np.int64, count=len(merged)),
        )

    def without_products(self, product_ids: Collection[str]) -> ClickLog:
        """The rows whose product is not in ``product_ids`` (e.g. the held-out products)."""
        drop = set(product_ids)
        keep = [i for i, p in enumerate(self.product_id) if p not in drop]
        return ClickLog(
            [self.query[i] for i in keep], [self.product_id[i] for i in keep],
            self.count[keep] if keep else np.zeros(0, dtype=np.int64),
            list(self.problems), self.rows_read, self.source,
        )

    def to_table(self):
        """pyarrow table with columns query, product_id, count (int64), qid (uint32)."""
        import pyarrow as pa  # heavy: only writing a click log needs it

        return pa.table({
            "query": pa.array(self.query, type=pa.string()),
            "product_id": pa.array(self.product_id, type=pa.string()),
            "count": pa.array(self.count, type=pa.int64()),
            "qid": pa.array(self.qids(), type=pa.uint32()),
        })

    def write_parquet(self, path: str | Path) -> None:
        """Write atomically as Parquet (query, product_id, count, qid)."""
        import pyarrow.parquet as pq  # heavy: only writing a click log needs it

        table = self.to_table()
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    def summary(self) -> str:
        lines = [(f"{self.source or 'click log'}: {self.rows_read} rows read, {len(self)} loaded, "
                 f"{len(self.problems)} skipped, {self.total_clicks} clicks")]
        lines += [f"  {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)


_REQUIRED = ("query", "product_id")


def read_click_log(path: str | Path) -> ClickLog:
    """Read a click log from CSV/TSV, JSONL (``.jsonl``/``.ndjson``/``.json``) or Parquet.

    Columns ``query``, ``product_id`` and optionally ``count`` (absent: 1 per row); header
    names are matched case-insensitively. A bad row (empty query or product id, a query
    without any term, a count that is not a positive integer, wrong field count, invalid
    JSON, bytes that are not UTF-8) is skipped and recorded as a ``Problem`` naming file,
    line and field (rows are read by ``vlsearch.tabular``, which reports bad bytes and
    malformed lines). A missing file or column, an unknown extension and a file with no
    rows raise ``InputError`` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: click log not found")
    suffix = path.suffix.lower()
    log = ClickLog(source=str(path))
    if suffix in (".csv", ".tsv", ".txt"):
        _read_csv(path, log, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".jsonl", ".ndjson", ".json"):
        _read_jsonl(path, log)
    elif suffix in (".parquet", ".pq"):
        _read_parquet(path, log)
    else:
        raise InputError(
            f"{path}: unknown click-log format {suffix!r}; expected .csv, .tsv, .jsonl or .parquet"
        )
    log.count = np.asarray(log.count, dtype=np.int64)
    return log


class _Rows:
    """Accumulates validated rows into a ClickLog; every row given counts as read."""

    def __init__(self, log: ClickLog):
        self.log = log
        self.counts: list[int] = []

    def report(self, problem: Problem, kind: str) -> None:
        """The ``vlsearch.tabular`` reporter: the problem is recorded, its row skipped."""
        self.log.problems.append(problem)

    def skip(self) -> None:
        """A row already reported (malformed, or with bytes that are not UTF-8)."""
        self.log.rows_read += 1

    def add(self, line: int, query: Any, product_id: Any, count: Any) -> None:
        log = self.log
        log.rows_read += 1
        problem = _bad_field(query, product_id, count)
        if problem is not None:
            name, message = problem
            log.problems.append(Problem(log.source or "", line, name, message))
            return
        log.query.append(query.strip())
        log.product_id.append(_product_id(product_id))
        self.counts.append(_count(count))

    def finish(self) -> None:
        self.log.count = np.asarray(self.counts, dtype=np.int64)


def _bad_field(query: Any, product_id: Any, count: Any) -> tuple[str, str] | None:
    """(field, message) of the first unusable value of a row, or None."""
    if not isinstance(query, str) or not query.strip():
        return "query", f"expected a non-empty text, got {query!r}"
    if not segment(query):
        return "query", f"no searchable term in {query!r}"
    if _product_id(product_id) is None:
        return "product_id", f"expected a non-empty id, got {product_id!r}"
    if _count(count) is None:
        return "count", f"expected a positive integer, got {count!r}"
    return None


def _product_id(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


_MISSING_COUNT = object()


def _count(value: Any) -> int | None:
    if value is _MISSING_COUNT:
        return 1
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, (int, np.integer)) and value >= 1:
        return int(value)
    return None


def _missing_columns(path: Path, found: Iterable[str], what: str = "column") -> None:
    found = list(found)
    missing = [c for c in _REQUIRED if c not in found]
    if missing:
        raise InputError(
            f"{path}: missing {what}(s) {', '.join(missing)}; expected query, product_id "
            f"and optionally count, found {', '.join(found) or 'none'}"
        )


def _column_name(cell: str) -> str:
    return cell.strip().casefold()


def _read_csv(path: Path, log: ClickLog, delimiter: str) -> None:
    rows = _Rows(log)
    header, records = delimited_rows(path, delimiter, rows.report, names=_column_name)
    if header is None:
        raise InputError(f"{path}: empty file; expected a header with query, product_id[, count]")
    _missing_columns(path, header)
    index = {name: header.index(name) for name in (*_REQUIRED, "count") if name in header}
    for row in records:
        if row.record is not None and all(not cell.strip() for cell in row.record):
            continue  # only delimiters: a blank line
        if row.record is None or row.bad_bytes:
            rows.skip()
        elif len(row.record) != len(header):
            rows.skip()
            rows.report(Problem(str(path), row.line, None,
                                f"expected {len(header)} fields, got {len(row.record)}"), MALFORMED)
        else:
            cells = row.record
            count = cells[index["count"]] if "count" in index else _MISSING_COUNT
            rows.add(row.line, cells[index["query"]], cells[index["product_id"]], count)
    if log.rows_read == 0:
        raise InputError(f"{path}: no rows after the header")
    rows.finish()


def _read_jsonl(path: Path, log: ClickLog) -> None:
    rows = _Rows(log)
    seen_keys: set[str] = set()
    nonblank = 0
    for row in jsonl_rows(path, rows.report):
        nonblank += 1
        if row.record is None or row.bad_bytes:
            rows.skip()
            continue
        obj = {str(k).casefold(): v for k, v in row.record.items()}
        seen_keys.update(obj)
        missing = [k for k in _REQUIRED if k not in obj]
        if missing:
            rows.skip()
            rows.report(Problem(str(path), row.line, missing[0], "missing key"), MALFORMED)
            continue
        rows.add(row.line, obj["query"], obj["product_id"], obj.get("count", _MISSING_COUNT))
    if nonblank == 0:
        raise InputError(f"{path}: empty file; expected JSON lines with query, product_id[, count]")
    if not set(_REQUIRED) <= seen_keys and seen_keys:
        _missing_columns(path, sorted(seen_keys), what="key")
    rows.finish()


def _read_parquet(path: Path, log: ClickLog) -> None:
    parquet = ParquetRows(path)
    names = {name.casefold(): name for name in parquet.names}
    _missing_columns(path, names)
    if parquet.num_rows == 0:
        raise InputError(f"{path}: no rows")
    wanted = {c: names[c] for c in (*_REQUIRED, "count") if c in names}
    rows = _Rows(log)
    for row in parquet.rows(list(wanted.values())):
        values = row.record
        count = values[wanted["count"]] if "count" in wanted else _MISSING_COUNT
        rows.add(row.line, values[wanted["query"]], values[wanted["product_id"]], count)
    rows.finish()


# --- sampling probabilities ----------------------------------------------------------------------


def sampling_probabilities(clicks: ClickLog | Iterable[MockQuery]) -> dict[str, float]:
    """Q(p): each product's share of the click mass of the training stream (sums to 1).

    Products without clicks are absent. This is the logQ correction's sampling probability:
    a training pair is drawn in proportion to its count.
    """
    if not isinstance(clicks, ClickLog):
        clicks = ClickLog.from_queries(clicks)
    mass: dict[str, int] = {}
    for pid, count in zip(clicks.product_id, clicks.count.tolist()):
        mass[pid] = mass.get(pid, 0) + count
    total = sum(mass.values())
    if total <= 0:
        return {}
    return {pid: m / total for pid, m in mass.items()}

