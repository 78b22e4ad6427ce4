"""Error types for bad input; every message names the file, line or field and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


class VlsearchError(Exception):
    """Base class of every error vlsearch raises on purpose (the CLI prints these without a traceback)."""


class InputError(VlsearchError, ValueError):
    """Input that cannot be used: the message says where (file, line, field) and what was expected."""


class WorkdirError(VlsearchError):
    """A work, model or index directory is missing, half-written or from another format version."""


@dataclass(frozen=True)
class Problem:
    """One bad row or file, reported (never silently dropped) and skipped."""

    file: str
    line: int | None  # 1-based physical line (CSV/JSONL) or row number (Parquet); None for whole files
    field: str | None  # the column or key at fault, if one
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.field:
            where += f" [{self.field}]"
        return f"{where}: {self.message}"
