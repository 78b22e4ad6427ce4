"""The qid table: every logged query answered offline into its top-K product rows.

Layout (a directory of numpy ``.npy`` files, memory-mapped on load):
``qids.npy`` uint32 [n] sorted ascending, ``rows.npy`` int32 [n, K] (-1 padded),
``scores.npy`` float32 [n, K], ``signatures.npy`` uint64 [n] (the constraint set each answer
was computed under, see ``understanding.constraint_signature``; 0: none), ``queries.json``
the query text kept for each qid, and optionally the lexical channel's answer under the same
constraints: ``lexical_rows.npy`` int32 [n, K] and ``lexical_scores.npy`` float32 [n, K]
(BM25; -1 padded), so a logged query does no BM25 at request time; and optionally the
lists of its short-list fill (``fill_*.npy``, ``index.fill_lists``; a table without them
loads as before and its fills are searched live).
Lookup is a binary search (``np.searchsorted``) on the sorted qid array: O(log n), a few
microseconds for millions of queries, and no hash table to build at load time.
Two logged queries with the same qid (same sorted terms, or a 32-bit collision) keep the
first one seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlsearch.errors import WorkdirError
from vlsearch.index.fill_lists import FillLists
from vlsearch.io import atomic_write_json, atomic_write_npy, read_json


class QidTable:
    def __init__(self, qids: np.ndarray, rows: np.ndarray, scores: np.ndarray, queries: list[str],
                 signatures: np.ndarray | None = None, lexical_rows: np.ndarray | None = None,
                 lexical_scores: np.ndarray | None = None, fill: FillLists | None = None):
        self.qids, self.rows, self.scores, self.queries = qids, rows, scores, queries
        self.signatures = np.zeros(len(qids), np.uint64) if signatures is None else signatures
        self.lexical_rows, self.lexical_scores = lexical_rows, lexical_scores
        self.fill = fill  # the stored short-list fill lists, or None

    @property
    def has_lexical(self) -> bool:
        return self.lexical_rows is not None

    def __len__(self) -> int:
        return len(self.qids)

    @property
    def top_k(self) -> int:
        return int(self.rows.shape[1]) if self.rows.ndim == 2 else 0

    @classmethod
    def build(
        cls,
        queries: Sequence[str],
        qids: Sequence[int],
        search: Callable[[list[str]], tuple],
        batch_size: int = 256,
        progress: bool = True,
    ) -> QidTable:
        """Answer each distinct qid's first query with ``search(texts)`` returning
        ``(scores, rows)``, ``(scores, rows, signatures)`` or ``(scores, rows, signatures,
        lexical_scores, lexical_rows)``."""
        first: dict[int, str] = {}
        for text, qid in zip(queries, qids):
            first.setdefault(int(qid), text)
        order = sorted(first)
        texts = [first[q] for q in order]
        all_scores, all_rows, all_sigs, lex_scores, lex_rows = [], [], [], [], []
        for start in tqdm(range(0, len(texts), batch_size), desc="qid table", unit="batch",
                          disable=not progress):
            answer = search(texts[start:start + batch_size])
            all_scores.append(np.asarray(answer[0], dtype=np.float32))
            all_rows.append(np.asarray(answer[1], dtype=np.int32))
            all_sigs.append(np.asarray(answer[2] if len(answer) > 2 else [0] * len(answer[1]), np.uint64))
            if len(answer) > 3:
                lex_scores.append(np.asarray(answer[3], dtype=np.float32))
                lex_rows.append(np.asarray(answer[4], dtype=np.int32))
        k = all_rows[0].shape[1] if all_rows else 0
        rows = np.concatenate(all_rows) if all_rows else np.zeros((0, k), np.int32)
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0, k), np.float32)
        sigs = np.concatenate(all_sigs) if all_sigs else np.zeros(0, np.uint64)
        lexical = (np.concatenate(lex_rows), np.concatenate(lex_scores)) if lex_rows else (None, None)
        return cls(np.asarray(order, dtype=np.uint32), rows, scores, texts, sigs, *lexical)

    def position(self, qid: int) -> int | None:
        """The entry index of ``qid`` (row of the version's query vectors), or None."""
        if len(self.qids) == 0:
            return None
        pos = int(np.searchsorted(self.qids, np.uint32(qid)))
        if pos >= len(self.qids) or int(self.qids[pos]) != int(qid):
            return None
        return pos

    @staticmethod
    def _unpadded(rows: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = np.asarray(rows)
        keep = rows >= 0
        return rows[keep].astype(np.int64), np.asarray(scores)[keep]

    def lookup(self, qid: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(rows, scores, constraint signature) stored for ``qid`` (padding removed), or None."""
        pos = self.position(qid)
        if pos is None:
            return None
        return (*self._unpadded(self.rows[pos], self.scores[pos]), int(self.signatures[pos]))

    def lookup_lexical(self, qid: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """The lexical channel's (rows, scores, signature) for ``qid``, or None (not logged,
        or a table built without lexical lists)."""
        pos = self.position(qid) if self.has_lexical else None
        if pos is None:
            return None
        return (*self._unpadded(self.lexical_rows[pos], self.lexical_scores[pos]), int(self.signatures[pos]))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_npy(directory / "qids.npy", self.qids)
        atomic_write_npy(directory / "rows.npy", self.rows)
        atomic_write_npy(directory / "scores.npy", self.scores)
        atomic_write_npy(directory / "signatures.npy", self.signatures)
        if self.has_lexical:
            atomic_write_npy(directory / "lexical_rows.npy", self.lexical_rows)
            atomic_write_npy(directory / "lexical_scores.npy", self.lexical_scores)
        if self.fill is not None:
            self.fill.save(directory)
        else:
            FillLists.remove(directory)
        atomic_write_json(directory / "queries.json", {"queries": self.queries})

    @classmethod
    def load(cls, directory: str | Path) -> QidTable:
        directory = Path(directory)
        try:
            qids = np.load(directory / "qids.npy", mmap_mode="r")
            rows = np.load(directory / "rows.npy", mmap_mode="r")
            scores = np.load(directory / "scores.npy", mmap_mode="r")
            signatures = np.load(directory / "signatures.npy", mmap_mode="r")
            lexical = (np.load(directory / "lexical_rows.npy", mmap_mode="r"),
                       np.load(directory / "lexical_scores.npy", mmap_mode="r")) \
                if (directory / "lexical_rows.npy").exists() else (None, None)
        except (FileNotFoundError, ValueError) as exc:
            raise WorkdirError(f"{directory}: qid table missing or corrupt ({exc})") from None
        queries = read_json(directory / "queries.json")["queries"]
        if not (len(qids) == len(rows) == len(scores) == len(queries) == len(signatures)) or (
                lexical[0] is not None and not len(lexical[0]) == len(lexical[1]) == len(qids)):
            raise WorkdirError(f"{directory}: qid table arrays disagree in length")
        # plain ndarray views of the maps (no copy): numpy's memmap subclass costs microseconds
        # per slice on the request path
        views = [np.asarray(a) for a in (qids, rows, scores, signatures)]
        lexical = tuple(None if a is None else np.asarray(a) for a in lexical)
        return cls(views[0], views[1], views[2], queries, views[3], *lexical, fill=FillLists.load(directory))
