"""What a search returns: ``Hit`` (one fused result) and ``SearchResult`` (the hits with the
constraints, timings and paths that produced them), and the channel names."""

from __future__ import annotations

from dataclasses import dataclass, field

from vlsearch.index.understanding import Constraint

CHANNELS = ("embedding", "lexical")


@dataclass
class Hit:
    product_id: str
    score: float  # fused score (see the module docstring)
    channels: tuple[str, ...]  # the channels that returned this product
    title: str
    brand: str | None
    category: str | None
    row: int = -1  # product-table row in the index version
    channel_scores: dict[str, float] = field(default_factory=dict)  # raw score per channel
    relaxed: bool = False  # a fill hit: breaks a constraint of SearchResult.fill_relaxed

    def to_dict(self) -> dict:
        return {"product_id": self.product_id, "score": self.score, "channels": list(self.channels),
                "title": self.title, "brand": self.brand, "category": self.category,
                "channel_scores": self.channel_scores, "relaxed": self.relaxed}


@dataclass
class SearchResult:
    query: str
    hits: list[Hit]
    constraints: list[Constraint]  # active constraints (auto and filter)
    qid: int
    qid_hit: bool  # the embedding channel was answered from the qid table
    timings: dict[str, float]  # milliseconds per stage
    channels: tuple[str, ...] = CHANNELS
    version: str = ""
    allowed: int | None = None  # products satisfying the constraints (None: no constraint)
    embedding_path: str = ""  # qid | ann | ann+postfilter | ann+selector | exact ("" if off)
    relaxed: list[Constraint] = field(default_factory=list)  # auto constraints dropped: no match
    offset: int = 0  # rank (0-based) of the first hit in the fused ranking
    preferences: list[Constraint] = field(default_factory=list)  # soft preferences (boosts)
    fill_relaxed: list[Constraint] = field(default_factory=list)  # constraints the relaxed hits break
    corrected_from: str | None = None  # the query as typed, when spelling correction changed it
    unknown_terms: list[str] = field(default_factory=list)  # terms the catalog vocabulary lacks

    def to_dict(self) -> dict:
        return {"query": self.query, "hits": [h.to_dict() for h in self.hits],
                "constraints": [c.to_dict() for c in self.constraints], "qid": self.qid,
                "qid_hit": self.qid_hit, "timings": self.timings, "channels": list(self.channels),
                "version": self.version, "allowed": self.allowed, "embedding_path": self.embedding_path,
                "relaxed": [c.to_dict() for c in self.relaxed], "offset": self.offset,
                "preferences": [c.to_dict() for c in self.preferences],
                "fill_relaxed": [c.to_dict() for c in self.fill_relaxed],
                "corrected_from": self.corrected_from, "unknown_terms": list(self.unknown_terms)}
