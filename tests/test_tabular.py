"""Tests of vlsearch.tabular: rows of CSV / TSV / JSONL / Parquet with their line numbers, the
one bad-byte policy (replace and report file and line) and malformed rows."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlsearch.errors import InputError, Problem
from vlsearch.tabular import (
    MALFORMED,
    NON_UTF8,
    ParquetRows,
    delimited_rows,
    jsonl_rows,
    raise_problem,
    text_lines,
)


class Collect:
    """A reporter that keeps every (problem, kind)."""

    def __init__(self):
        self.seen: list[tuple[Problem, str]] = []

    def __call__(self, problem: Problem, kind: str) -> None:
        self.seen.append((problem, kind))

    def where(self) -> set[tuple[int | None, str | None, str]]:
        return {(p.line, p.field, kind) for p, kind in self.seen}


def test_csv_rows_header_line_numbers_and_multiline_records(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbf\n id , name\n1,a\n\n2,\"two\nlines\"\n3,c,extra\n")
    report = Collect()
    header, rows = delimited_rows(path, ",", report)
    assert header == ["id", "name"]  # the BOM and a leading blank line are dropped, names stripped
    rows = list(rows)
    assert [(r.line, r.record, r.last_line) for r in rows] == [
        (3, ["1", "a"], 3), (5, ["2", "two\nlines"], 6), (7, ["3", "c", "extra"], 7)]
    assert not report.seen and not any(r.bad_bytes for r in rows)


def test_tsv_rows_and_header_names(tmp_path: Path):
    path = tmp_path / "t.tsv"
    path.write_text("Query\tProduct_ID\nred, dress\t7\n")
    header, rows = delimited_rows(path, "\t", Collect(), names=lambda c: c.strip().casefold())
    assert header == ["query", "product_id"]
    assert [(r.line, r.record) for r in rows] == [(2, ["red, dress", "7"])]


def test_csv_bad_byte_is_replaced_and_reported_with_its_column(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,title\n1,caf\xe9\n2,ok\n")
    report = Collect()
    _, rows = delimited_rows(path, ",", report)
    rows = list(rows)
    assert rows[0].record == ["1", "caf\ufffd"] and rows[0].bad_bytes
    assert not rows[1].bad_bytes
    ((problem, kind),) = report.seen
    assert kind == NON_UTF8 and (problem.file, problem.line, problem.field) == (str(path), 2, "title")
    assert "not valid UTF-8" in problem.message and "column 6" in problem.message
    assert str(problem).startswith(f"{path}:2 [title]: expected UTF-8")


def test_csv_malformed_record_is_reported_and_reading_goes_on(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"id,title\n1,a\n2,bad\rtitle\n3,c\n")
    report = Collect()
    _, rows = delimited_rows(path, ",", report)
    rows = list(rows)
    assert [(r.line, r.record) for r in rows] == [(2, ["1", "a"]), (3, None), (4, ["3", "c"])]
    assert report.where() == {(3, None, MALFORMED)}
    assert "not valid CSV" in report.seen[0][0].message


def test_csv_empty_file_and_bad_header(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_text("\n\n")
    header, rows = delimited_rows(path, ",", Collect())
    assert header is None and list(rows) == []
    path.write_bytes(b"id,ti\rtle\n1,a\n")
    with pytest.raises(InputError, match=r"t\.csv:1: header is not valid CSV"):
        delimited_rows(path, ",", Collect())


def test_jsonl_rows(tmp_path: Path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{not json\n[1, 2]\n{"b": "caf\xff"}\n')
    report = Collect()
    rows = list(jsonl_rows(path, report))
    assert [(r.line, r.record) for r in rows] == [
        (1, {"a": 1}), (3, None), (4, None), (5, {"b": "caf\ufffd"})]
    assert [r.bad_bytes for r in rows] == [False, False, False, True]
    assert report.where() == {(3, None, MALFORMED), (4, None, MALFORMED), (5, None, NON_UTF8)}
    messages = {p.line: p.message for p, _ in report.seen}
    assert "invalid JSON" in messages[3] and "expected a JSON object, got list" in messages[4]


def test_text_lines_and_the_strict_reporter(tmp_path: Path):
    path = tmp_path / "q.tsv"
    path.write_bytes(b"a b\r\n\n  \nc\xffd\n")
    report = Collect()
    assert [(r.line, r.record, r.bad_bytes) for r in text_lines(path, report)] == [
        (1, "a b", False), (4, "c\ufffdd", True)]
    assert report.where() == {(4, None, NON_UTF8)}
    with pytest.raises(InputError, match=r"q\.tsv:4: expected UTF-8 text, found b'\\xff'"):
        list(text_lines(path, raise_problem))
    with pytest.raises(InputError, match="missing.tsv: cannot be read"):
        list(text_lines(tmp_path / "missing.tsv", report))


def test_parquet_rows(tmp_path: Path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "title": ["a", None, "c"]}), path)
    parquet = ParquetRows(path)
    assert parquet.names == ["id", "title"] and parquet.num_rows == 3
    rows = list(parquet.rows())
    assert [(r.line, r.record) for r in rows] == [
        (1, {"id": 1, "title": "a"}), (2, {"id": 2, "title": None}), (3, {"id": 3, "title": "c"})]
    assert [r.record for r in parquet.rows(["title"])] == [{"title": "a"}, {"title": None},
                                                           {"title": "c"}]
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="junk.parquet: not a readable Parquet file"):
        ParquetRows(tmp_path / "junk.parquet")
