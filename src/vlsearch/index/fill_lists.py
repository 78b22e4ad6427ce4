"""Short-list fill lists stored with the qid table, so a filled logged query does no search.

When a query's constraints allow fewer products than a page asks for, the engine fills the
page (``serving/engine.py``, step 6) from relaxed constraint sets: the auto constraints on
``fill_relax_order``'s fields dropped, one more field at a time (``fill_steps``, shared by
the engine and the build). For every logged query whose own constraints allow fewer than
the table's K products, the build searches those relaxed sets offline (embedding channel
from the query's stored vector, BM25 from its text; ``fill_searches``) and stores each
set's lists keyed by (qid, constraint signature of the set), with the depth they were
searched to. The engine takes a stored list where that depth covers the request's, or
where the list came back shorter than its depth (it holds every match), and searches live
otherwise: the lists are keyed by the constraint set itself, so a request that needs
another set (caller filters, another relax order) never finds one.

Depth of step s: K plus the products the previous set allows (the rows the fill may have
placed before it are among those), so any page of up to K results is covered. Steps stop
after the first whose set allows that depth: its embedding list alone completes the page
(a lexical-only request that needs the next step searches it live).

Files in the qid table's directory (none: no fill lists, every fill is searched live):
``fill_qids.npy`` uint32 [m] (ascending, a qid's steps consecutive), ``fill_signatures.npy``
uint64 [m], ``fill_depths.npy`` int32 [m], and per channel (prefix ``fill_`` for the
embedding lists, ``fill_lexical_`` for BM25) ``offsets.npy`` int64 [m + 1] into
``rows.npy`` int32 and ``scores.npy`` float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlsearch.errors import WorkdirError
from vlsearch.index.understanding import Constraint, constraint_signature, understand
from vlsearch.io import atomic_write_npy

CHANNEL_PREFIX = {"embedding": "fill_", "lexical": "fill_lexical_"}
Lists = tuple[np.ndarray, np.ndarray]  # (scores, rows), best first


def fill_steps(active: Sequence[Constraint], order: Sequence[str]) -> list[tuple[list[Constraint], list[Constraint]]]:
    """The fill's relaxation steps: (kept, dropped) per step, step s dropping the auto
    constraints on ``order[:s + 1]`` (category, brand and caller filters are never in it);
    a step that drops nothing more than the one before is skipped."""
    steps: list[tuple[list[Constraint], list[Constraint]]] = []
    dropped: list[Constraint] = []
    for step in range(len(order)):
        fields_ = set(order[:step + 1])
        kept = [c for c in active if c.source != "auto" or c.field not in fields_]
        if len(kept) == len(active) - len(dropped):
            continue  # nothing more to drop at this step
        dropped = [c for c in active if c not in kept]
        steps.append((kept, dropped))
    return steps


@dataclass(frozen=True)
class FillList:
    """One relaxed constraint set of one logged query: each channel's lists searched to ``depth``."""

    depth: int
    channels: dict[str, Lists]

    def lists(self, channel: str, depth: int) -> Lists | None:
        """``channel``'s (scores, rows) to ``depth``, or None when stored too shallow for it."""
        found = self.channels.get(channel)
        if found is None:
            return None
        scores, rows = found
        if self.depth >= depth or len(rows) < self.depth:  # deep enough, or every match
            return scores[:depth], rows[:depth]
        return None


@dataclass(frozen=True)
class FillRecord:
    """One stored step while building: the logged query, its relaxed set, depth and lists."""

    qid: int
    signature: int
    depth: int
    channels: dict[str, Lists]


class FillLists:
    """The stored fill lists of a qid table (module docstring); ``find(qid, signature)``."""

    def __init__(self, qids: np.ndarray, signatures: np.ndarray, depths: np.ndarray,
                 channels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]):
        self.qids, self.signatures, self.depths = qids, signatures, depths
        self.channels = channels  # channel -> (offsets, rows, scores)

    def __len__(self) -> int:
        return len(self.qids)

    @classmethod
    def from_records(cls, records: Sequence[FillRecord]) -> FillLists:
        records = sorted(records, key=lambda r: r.qid)  # stable: a qid's steps stay in order
        channels = {}
        for name in CHANNEL_PREFIX:
            if records and not all(name in r.channels for r in records):
                continue
            parts = [r.channels[name] for r in records]
            lengths = np.asarray([len(rows) for _, rows in parts], np.int64)
            channels[name] = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                              np.concatenate([np.asarray(r, np.int32) for _, r in parts] or [np.zeros(0, np.int32)]),
                              np.concatenate([np.asarray(s, np.float32) for s, _ in parts]
                                             or [np.zeros(0, np.float32)]))
        return cls(np.asarray([r.qid for r in records], np.uint32),
                   np.asarray([r.signature for r in records], np.uint64),
                   np.asarray([r.depth for r in records], np.int32), channels)

    def record(self, i: int) -> FillRecord:
        """Stored step ``i``."""
        return FillRecord(int(self.qids[i]), int(self.signatures[i]), int(self.depths[i]),
                          {name: self._lists(name, i) for name in self.channels})

    def records(self, keep: np.ndarray | None = None) -> list[FillRecord]:
        """The stored steps (those where ``keep``, a bool per step, holds)."""
        picked = range(len(self)) if keep is None else np.flatnonzero(keep).tolist()
        return [self.record(i) for i in picked]

    def _lists(self, channel: str, i: int) -> Lists:
        offsets, rows, scores = self.channels[channel]
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        return scores[lo:hi], rows[lo:hi].astype(np.int64)

    def find(self, qid: int, signature: int) -> FillList | None:
        """The lists stored for ``qid`` under the constraint set with ``signature``, or None."""
        lo = int(np.searchsorted(self.qids, np.uint32(qid), side="left"))
        hi = int(np.searchsorted(self.qids, np.uint32(qid), side="right"))
        for i in range(lo, hi):
            if int(self.signatures[i]) == signature:
                return FillList(int(self.depths[i]), self.record(i).channels)
        return None

    def save(self, directory: Path) -> None:
        atomic_write_npy(directory / "fill_qids.npy", self.qids)
        atomic_write_npy(directory / "fill_signatures.npy", self.signatures)
        atomic_write_npy(directory / "fill_depths.npy", self.depths)
        for name, (offsets, rows, scores) in self.channels.items():
            prefix = CHANNEL_PREFIX[name]
            atomic_write_npy(directory / f"{prefix}offsets.npy", offsets)
            atomic_write_npy(directory / f"{prefix}rows.npy", rows)
            atomic_write_npy(directory / f"{prefix}scores.npy", scores)

    @staticmethod
    def remove(directory: Path) -> None:
        """Delete the fill files of ``directory`` (a table saved without fill lists)."""
        names = ["fill_qids", "fill_signatures", "fill_depths"] + [
            f"{prefix}{part}" for prefix in CHANNEL_PREFIX.values() for part in ("offsets", "rows", "scores")]
        for name in names:
            (directory / f"{name}.npy").unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path) -> FillLists | None:
        """The fill lists saved in ``directory`` (memory-mapped), or None when it has none."""
        if not (directory / "fill_qids.npy").exists():
            return None

        def read(name: str) -> np.ndarray:
            return np.asarray(np.load(directory / f"{name}.npy", mmap_mode="r"))

        try:
            qids, sigs, depths = read("fill_qids"), read("fill_signatures"), read("fill_depths")
            channels = {name: (read(f"{prefix}offsets"), read(f"{prefix}rows"), read(f"{prefix}scores"))
                        for name, prefix in CHANNEL_PREFIX.items() if (directory / f"{prefix}offsets.npy").exists()}
        except (FileNotFoundError, ValueError) as exc:
            raise WorkdirError(f"{directory}: fill lists missing or corrupt ({exc})") from None
        if not len(qids) == len(sigs) == len(depths) or any(
                len(o) != len(qids) + 1 or len(r) != len(s) or int(o[-1]) != len(r)
                for o, r, s in channels.values()):
            raise WorkdirError(f"{directory}: fill list arrays disagree in length")
        return cls(qids, sigs, depths, channels)


def fill_searches(store, constraint_masks, lexicon, top_k: int, order: Sequence[str],
                  lexical=None) -> Callable[[str, int, np.ndarray], list[FillRecord]]:
    """``search(text, qid, vector) -> [FillRecord]``: the fill steps of one logged query
    (none unless its constraints allow fewer than ``top_k`` products), each searched as the
    engine's fill searches it: the store under the step's constraints (``constraint_masks``:
    ``mask_canonical``), and with ``lexical`` BM25 under the same filter."""
    live = store.count()

    def mask_of(constraints: Sequence[Constraint]) -> np.ndarray:
        return constraint_masks.mask_canonical((c.field, c.values) for c in constraints)

    def search(text: str, qid: int, vector: np.ndarray) -> list[FillRecord]:
        constraints = understand(text, lexicon).constraints
        previous = int(mask_of(constraints).sum()) if constraints else live
        if not constraints or previous >= top_k:
            return []
        records = []
        for kept, _ in fill_steps(constraints, order):
            mask = mask_of(kept) if kept else None
            allowed = int(mask.sum()) if mask is not None else live
            depth = top_k + previous
            filters = {c.field: list(c.values) for c in kept} or None
            _, scores, rows = store.constrained_search(vector, depth, filters, mask, allowed)
            channels = {"embedding": (scores, rows)}
            if lexical is not None:
                channels["lexical"] = lexical.search(text, depth, filters)
            records.append(FillRecord(int(qid), constraint_signature(kept), depth, channels))
            if allowed >= depth:
                break  # the embedding list alone completes any page (module docstring)
            previous = allowed
        return records

    return search


def build_fill_lists(queries: Sequence[str], qids: Sequence[int], vectors: np.ndarray,
                     search: Callable[[str, int, np.ndarray], list[FillRecord]],
                     progress: bool = True) -> FillLists:
    """Every qid-table entry's fill steps (``search`` from ``fill_searches``; entry i is
    ``queries[i]``, ``qids[i]``, ``vectors[i]``)."""
    records: list[FillRecord] = []
    for text, qid, vector in tqdm(zip(queries, np.asarray(qids).tolist(), vectors), total=len(queries),
                                  desc="fill lists", unit="query", disable=not progress):
        records += search(text, qid, np.asarray(vector, np.float32))
    return FillLists.from_records(records)
