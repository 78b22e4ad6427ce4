"""The one tabular-input layer: the rows of a CSV / TSV, JSONL or Parquet file as ``Row``s,
(line number, record) first, with every bad row or byte reported as a ``Problem``.

Used by the catalog loader, the click-log reader and the BEIR/TREC readers; each of them
validates the records it gets and decides what to do with a reported problem (skip and
count the row, or raise). The policies here are the same for every reader:

* **Bad bytes**: text is decoded as UTF-8 line by line; bytes that are not UTF-8 are
  replaced with U+FFFD and reported once per physical line, as ``Problem(file, line,
  column, "expected UTF-8 text, found b'\\xff' at column 3 (not valid UTF-8); replaced
  with U+FFFD")`` (kind ``NON_UTF8``). The column is the CSV header name of the first cell
  holding a replaced byte, when there is a header; otherwise None. The row is still
  yielded, with ``bad_bytes`` set, so the caller can keep it (the catalog) or skip it (a
  click log). A UTF-8 byte-order mark at the start of the file is dropped.
* **Malformed rows** (a CSV record the ``csv`` module refuses, a JSON line that is not
  valid JSON or not an object) are reported (kind ``MALFORMED``) and yielded with record
  ``None``, so the caller can count them as rows read; reading goes on with the next line.
* **Blank lines** are skipped. Line numbers are 1-based physical lines (a CSV record may
  span lines: ``line`` is its first, ``last_line`` its last); Parquet rows are numbered
  from 1.
* A file that cannot be opened raises ``InputError`` naming it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

from vlsearch.errors import InputError, Problem

NON_UTF8 = "non_utf8"  # kind of a Problem: bytes that are not UTF-8 (replaced)
MALFORMED = "malformed"  # kind of a Problem: a row the format refuses (skipped)
UTF8_BOM = b"\xef\xbb\xbf"
REPLACEMENT = "\ufffd"

#: Receives each problem with its kind (``NON_UTF8`` or ``MALFORMED``).
Reporter = Callable[[Problem, str], None]


class Row(NamedTuple):
    """One row: where it is and what it holds."""

    line: int  # first physical line (1-based), or the row number in a Parquet file
    record: Any  # list[str] (CSV/TSV cells), dict (JSONL object, Parquet row), str (a text
    #              line without its line ending), or None for a malformed row
    last_line: int  # last physical line (a quoted CSV cell may span lines)
    bad_bytes: bool = False  # some byte was not UTF-8: replaced with U+FFFD and reported


def raise_problem(problem: Problem, kind: str) -> None:
    """A ``Reporter`` for strict readers: the first problem raises ``InputError``."""
    raise InputError(str(problem))


def _open(path: str | Path) -> IO[bytes]:
    try:
        return open(path, "rb")  # the callers close it
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def decode_line(raw: bytes, number: int) -> tuple[str, str | None]:
    """(text, problem message or None) of one physical line: the bad-byte policy."""
    if number == 1 and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        message = (f"expected UTF-8 text, found {raw[exc.start:exc.end]!r} at column "
                   f"{exc.start + 1} (not valid UTF-8); replaced with U+FFFD")
        return raw.decode("utf-8", errors="replace"), message


def text_lines(path: str | Path, report: Reporter) -> Iterator[Row]:
    """Every non-blank line of a text file, without its line ending (``record`` is a str)."""
    with _open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            text, bad = decode_line(raw, number)
            if bad is not None:
                report(Problem(str(path), number, None, bad), NON_UTF8)
            text = text.rstrip("\r\n")
            if text.strip():
                yield Row(number, text, number, bad is not None)


def jsonl_rows(path: str | Path, report: Reporter) -> Iterator[Row]:
    """Every non-blank line of a JSON-lines file as a dict; other JSON is ``MALFORMED``."""
    for line, text, _, bad in text_lines(path, report):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report(Problem(str(path), line, None,
                           f"expected a JSON object, got invalid JSON (not valid JSON: {exc.msg})"),
                   MALFORMED)
            yield Row(line, None, line, bad)
            continue
        if not isinstance(obj, dict):
            report(Problem(str(path), line, None,
                           f"expected a JSON object, got {type(obj).__name__}"), MALFORMED)
            obj = None
        yield Row(line, obj, line, bad)


class _Decoded:
    """The decoded lines of a binary file for ``csv.reader``, remembering the bad bytes of
    the lines read since the last ``take_bad``."""

    def __init__(self, handle: IO[bytes]):
        self.lines = enumerate(handle, start=1)
        self.bad: list[tuple[int, str]] = []

    def __iter__(self) -> _Decoded:
        return self

    def __next__(self) -> str:
        number, raw = next(self.lines)
        text, bad = decode_line(raw, number)
        if bad is not None:
            self.bad.append((number, bad))
        return text

    def take_bad(self) -> list[tuple[int, str]]:
        bad, self.bad = self.bad, []
        return bad


def _bad_cell(cells: Sequence[str], header: Sequence[str] | None) -> str | None:
    """The header name of the first cell holding a replacement character, if any."""
    if header is None:
        return None
    for name, cell in zip(header, cells):
        if REPLACEMENT in cell:
            return name
    return None


def _csv_records(path: str | Path, delimiter: str, report: Reporter,
                 names: Callable[[str], str]) -> Iterator[Row]:
    """Every record of a delimited file, the first non-blank one (the header) included."""
    file = str(path)
    header: list[str] | None = None
    with _open(path) as handle:
        lines = _Decoded(handle)
        reader = csv.reader(lines, delimiter=delimiter)
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if header is None:
                    raise InputError(f"{file}:{start}: header is not valid CSV ({exc})") from None
                for number, message in lines.take_bad():
                    report(Problem(file, number, None, message), NON_UTF8)
                report(Problem(file, start, None, f"not valid CSV ({exc}); row skipped"), MALFORMED)
                yield Row(start, None, reader.line_num)
                continue
            bad = lines.take_bad()
            for number, message in bad:
                report(Problem(file, number, _bad_cell(cells, header), message), NON_UTF8)
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if header is None:
                header = [names(cell) for cell in cells]
                cells = header
            yield Row(start, cells, reader.line_num, bool(bad))


def delimited_rows(path: str | Path, delimiter: str, report: Reporter,
                   names: Callable[[str], str] = str.strip) -> tuple[list[str] | None, Iterator[Row]]:
    """(header, data rows) of a CSV/TSV file. The header is the first non-blank record, its
    cells turned into column names by ``names`` (default: stripped); None for a file
    without one. Each data row's ``record`` is the list of its cells, as many as the line
    has (the caller checks the width). Raises ``InputError`` when the header is not valid CSV.
    """
    records = _csv_records(path, delimiter, report, names)
    first = next(records, None)
    if first is None:
        return None, iter(())
    return first.record, records


def _parquet_error(path: str | Path, exc: Exception) -> InputError:
    return InputError(f"{path}: not a readable Parquet file ({exc})")


class ParquetRows:
    """The rows of a Parquet file as dicts, numbered from 1 (no bad bytes: Arrow strings are
    UTF-8 by construction)."""

    def __init__(self, path: str | Path):
        import pyarrow as pa  # heavy: only Parquet input needs it
        import pyarrow.parquet as pq

        self.path = path
        self._errors = (OSError, ValueError, pa.ArrowException)
        try:
            self.file = pq.ParquetFile(path)
        except self._errors as exc:
            raise _parquet_error(path, exc) from None
        self.names: list[str] = list(self.file.schema_arrow.names)
        self.num_rows: int = self.file.metadata.num_rows

    def rows(self, columns: Sequence[str] | None = None) -> Iterator[Row]:
        number = 0
        try:
            for batch in self.file.iter_batches(columns=list(columns) if columns else None):
                for values in batch.to_pylist():
                    number += 1
                    yield Row(number, values, number)
        except self._errors as exc:
            raise _parquet_error(self.path, exc) from None


__all__ = [
    "MALFORMED",
    "NON_UTF8",
    "ParquetRows",
    "Problem",
    "Reporter",
    "Row",
    "decode_line",
    "delimited_rows",
    "jsonl_rows",
    "raise_problem",
    "text_lines",
]
