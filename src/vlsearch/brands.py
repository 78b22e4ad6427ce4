"""Brand mining: the brand of each product from its title alone (catalogs without a brand
column), and the :class:`BrandLexicon` that maps a title or a brand spelling to one name.

A brand is the run of title words before the gender phrase ("Gini and Jony Boys Shirt"),
confirmed by how many products share it; spellings that differ only in case, dots or
connectives ("Gini & Jony" / "Gini and Jony") are one brand.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vlsearch.errors import InputError
from vlsearch.vocabulary import GENDER_WORDS

#: Words that name a gender only right after "for" ("Scullers For Her").
GENDER_AFTER_FOR = frozenset({"her", "him"})
#: Words after which a gender word is part of a name ("Mr. Men").
NOT_GENDER_AFTER = frozenset({"mr.", "mr"})
#: Connectives ignored when comparing brand spellings ("Gini & Jony" = "Gini and Jony").
BRAND_CONNECTIVES = frozenset({"and", "&"})
_GLUED_GENDER = re.compile(r"^(.*[a-z.])(Men|Women|Boys|Girls|Kids)$")  # "JonyBoys"
_PUNCT = "()[]{},;:!?\"'"


def _title_words(title: str) -> list[str]:
    """Whitespace tokens of a title, with a glued gender word split off ("JonyBoys")."""
    words: list[str] = []
    for token in title.split():
        glued = _GLUED_GENDER.match(token)
        if glued and len(glued.group(1)) > 1:
            words.extend(glued.groups())
        else:
            words.append(token)
    return words


def _gender_position(lowered: Sequence[str]) -> int | None:
    """Index after the first word where a gender phrase starts ("for" included), or None."""
    for i in range(1, len(lowered)):
        word = lowered[i] if lowered[i] in GENDER_WORDS else lowered[i].strip(_PUNCT + ".")
        previous = lowered[i - 1]
        if previous in NOT_GENDER_AFTER:
            continue
        if word in GENDER_WORDS or (previous == "for" and word in GENDER_AFTER_FOR):
            return i - 1 if previous == "for" else i
    return None


def _compact(key: Sequence[str]) -> str:
    """Spelling-insensitive brand identity: "U.S. Polo Assn" = "U.S.Polo Assn." = "us polo assn"."""
    kept = [w for i, w in enumerate(key) if i == 0 or w not in BRAND_CONNECTIVES]
    return "".join(ch for w in kept for ch in w if ch.isalnum())


class BrandLexicon:
    """Known brands as lower-cased word prefixes of titles; ``brand_of`` takes the longest."""

    def __init__(self, names: dict[tuple[str, ...], str], counts: dict[str, int]):
        self._names = dict(names)  # lower-cased word prefix -> canonical brand name
        self.counts = dict(counts)  # canonical brand name -> titles (or products) with it
        self._max_words = max((len(k) for k in self._names), default=0)
        # other spellings: "U.S.Polo Assn" finds "U.S. Polo Assn.", "Ray Ban" finds "Ray-Ban"
        self._compact: dict[str, str] = {}
        for key in sorted(self._names, key=lambda k: (-self.counts.get(self._names[k], 0), k)):
            self._compact.setdefault(_compact(key), self._names[key])

    @property
    def brands(self) -> list[str]:
        """Canonical brand names, sorted."""
        return sorted(set(self._names.values()))

    def most_common(self, n: int | None = None) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def __len__(self) -> int:
        return len(set(self._names.values()))

    def __contains__(self, name: str) -> bool:
        return tuple(name.lower().split()) in self._names

    def brand_of(self, title: str) -> str | None:
        """The brand whose words start ``title`` (case-insensitive; longest match), or None."""
        found = self._match([w.lower() for w in _title_words(title)])
        return found[0] if found else None

    def _match(self, lowered: Sequence[str]) -> tuple[str, int] | None:
        """(brand, number of title words it spans): exact words first, then other spellings."""
        words = lowered[: self._max_words]
        for k in range(len(words), 0, -1):
            name = self._names.get(tuple(words[:k]))
            if name is not None:
                return name, k
        for k in range(len(words), 0, -1):
            name = self._compact.get(_compact(words[:k]))
            if name is not None:
                return name, k
        return None

    def to_dict(self) -> dict[str, Any]:
        prefixes: dict[str, list[str]] = defaultdict(list)
        for key, name in self._names.items():
            prefixes[name].append(" ".join(key))
        return {
            "format": "vlsearch-brands-1",
            "brands": [
                {"name": name, "count": self.counts.get(name, 0),
                 "prefixes": sorted(prefixes[name])}
                for name in self.brands
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrandLexicon:
        try:
            names = {
                tuple(prefix.split()): entry["name"]
                for entry in data["brands"] for prefix in entry["prefixes"]
            }
            counts = {entry["name"]: int(entry["count"]) for entry in data["brands"]}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError("brand lexicon: expected {'brands': [{name, count, prefixes}, ...]} "
                             f"({exc!r})") from None
        return cls(names, counts)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> BrandLexicon:
        """Lexicon of a brand column: the most common casing of each name is canonical."""
        casings: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for name in names:
            words = name.split()
            if words:
                casings[tuple(w.lower() for w in words)][" ".join(words)] += 1
        canonical = {key: _most_common(c) for key, c in casings.items()}
        counts = {canonical[key]: sum(c.values()) for key, c in casings.items()}
        return cls(canonical, counts)


def _most_common(counter: Counter[str]) -> str:
    """The most frequent spelling; ties go to the one seen first."""
    return max(counter.items(), key=lambda kv: kv[1])[0]


@dataclass
class BrandMiner:
    """Mines brands from titles by prefix statistics.

    1. Titles with a gender word ("Peter England Men Party Blue Jeans"): the words before it
       are a brand candidate. Candidates form a trie; a node that starts ``min_products``
       titles on its own is a brand. Longer candidates below a brand are sub-lines folded into
       it ("Casio Enticer" -> "Casio") unless the path is the brand's only frequent
       continuation and carries at least ``separate_share`` of its titles ("Lee Cooper").
    2. Other titles take the longest known brand prefix ("Nike Soleday Black Backpack").
    3. Titles still without a brand: a 1..``max_free_words`` word prefix shared by at least
       ``min_products`` of them whose next words vary ("Colorbar ...", "Lotus Herbals ...").

    Brands are case-insensitive; the most common casing is the canonical name.
    """

    min_products: int = 2  # a prefix must start this many titles to count as a brand
    max_brand_words: int = 6  # longer prefixes before a gender word are not candidates
    separate_share: float = 0.25  # share of a brand's titles a sub-line needs to stand alone
    max_free_words: int = 3  # longest brand learnt from titles without a gender word
    extend_share: float = 0.9  # step 3 extends a prefix when one next word has this share
    stop_suffix_share: float = 0.5  # "Newhide Brown" -> "Newhide" when at most this share of
    # the titles starting "Newhide" go on with "Brown"
    stop_phrases: frozenset[str] = frozenset()  # lower-cased phrases (colours) that are no brand

    def fit(self, titles: Iterable[str]) -> BrandLexicon:
        split = [_title_words(t) for t in titles]
        lowered = [[w.lower() for w in ws] for ws in split]
        names = self._gendered_brands(lowered)
        lexicon = BrandLexicon({k: "" for k in names}, {})
        unmatched = [ws for ws in lowered if lexicon._match(ws) is None]
        for key in self._free_brands(unmatched):
            names.setdefault(key, "")
        return self._canonical(names, split, lowered)

    def _gendered_brands(self, lowered: list[list[str]]) -> dict[tuple[str, ...], str]:
        direct: Counter[tuple[str, ...]] = Counter()
        support: Counter[tuple[str, ...]] = Counter()
        children: dict[tuple[str, ...], set[str]] = defaultdict(set)
        starts: Counter[tuple[str, ...]] = Counter()  # titles starting with each short prefix
        for words in lowered:
            for k in range(1, min(len(words), self.max_brand_words) + 1):
                starts[tuple(words[:k])] += 1
        for words in lowered:
            g = _gender_position(words)
            if not g or g > self.max_brand_words:
                continue
            key = self._strip_stop_suffix(tuple(words[:g]), starts)
            g = len(key)
            direct[key] += 1
            for k in range(1, g + 1):
                support[key[:k]] += 1
                if k < g:
                    children[key[:k]].add(key[k])
        brands: dict[tuple[str, ...], str] = {}
        # state per node: (brand it belongs to, whether every step below that brand was
        # the only frequent continuation)
        state: dict[tuple[str, ...], tuple[tuple[str, ...] | None, bool]] = {}
        for key in sorted(support, key=lambda k: (len(k), k)):
            parent_brand, chain = state.get(key[:-1], (None, False))
            own = direct[key] >= self.min_products and not self._all_stop(key)
            if parent_brand is None:
                state[key] = (key, True) if own else (None, False)
            else:
                frequent = [w for w in children[key[:-1]]
                            if support[key[:-1] + (w,)] >= self.min_products]
                chain = chain and frequent == [key[-1]]
                separate = support[key] >= self.separate_share * support[parent_brand]
                state[key] = (key, True) if (chain and own and separate) else (parent_brand, chain)
            if state[key][0] == key:
                brands[key] = ""
        return brands

    def _free_brands(self, unmatched: list[list[str]]) -> set[tuple[str, ...]]:
        count: Counter[tuple[str, ...]] = Counter()
        following: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
        for words in unmatched:
            g = _gender_position(words)
            words = words[:g] if g is not None else words
            for k in range(1, min(len(words), self.max_free_words) + 1):
                prefix = tuple(words[:k])
                count[prefix] += 1
                following[prefix][words[k] if k < len(words) else ""] += 1
        found: set[tuple[str, ...]] = set()
        for first in [p for p in count if len(p) == 1]:
            prefix = first
            while len(prefix) < self.max_free_words:
                word, n = following[prefix].most_common(1)[0]
                longer = prefix + (word,)
                dominant = n >= self.extend_share * count[prefix]
                if not word or not dominant or count[longer] < self.min_products:
                    break
                if len(following[longer]) < 2 and not self._all_stop(prefix):
                    break  # identical titles: the longer prefix is not a brand boundary
                prefix = longer
            varied = len(following[prefix]) >= 2
            if (count[prefix] >= self.min_products and varied and not self._all_stop(prefix)
                    and prefix[0] not in GENDER_WORDS):
                found.add(prefix)
        return found

    def _strip_stop_suffix(self, key: tuple[str, ...],
                           starts: Counter[tuple[str, ...]]) -> tuple[str, ...]:
        """Drop a trailing stop phrase ("Newhide Brown" -> "Newhide") when the shorter prefix
        mostly goes on otherwise (so "Do u speak green" keeps its last word)."""
        for k in range(1, len(key)):
            if (" ".join(key[k:]) in self.stop_phrases
                    and starts[key] <= self.stop_suffix_share * starts[key[:k]]):
                return key[:k]
        return key

    def _all_stop(self, key: tuple[str, ...]) -> bool:
        return " ".join(key) in self.stop_phrases or all(w in GENDER_WORDS for w in key)

    def _canonical(self, names: dict[tuple[str, ...], str], split: list[list[str]],
                   lowered: list[list[str]]) -> BrandLexicon:
        """Group spellings of one brand; the most common casing and spelling is its name."""
        draft = BrandLexicon({k: " ".join(k) for k in names}, {})
        surfaces: dict[str, Counter[str]] = defaultdict(Counter)  # compact id -> surfaces
        for words, low in zip(split, lowered, strict=True):
            found = draft._match(low)
            if found is not None:
                surfaces[_compact(found[0].split())][" ".join(words[: found[1]])] += 1
        canonical = {}
        for key in names:
            group = surfaces.get(_compact(key))
            if group:
                canonical[key] = _most_common(group)
        counts = {_most_common(group): sum(group.values()) for group in surfaces.values()}
        return BrandLexicon(canonical, counts)


def mine_brands(titles: Iterable[str], min_products: int = 2, **options: Any) -> BrandLexicon:
    """Brands mined from titles (see :class:`BrandMiner` for the options)."""
    if "stop_phrases" in options:
        phrases = options["stop_phrases"]
        options["stop_phrases"] = frozenset(" ".join(p.lower().split()) for p in phrases)
    return BrandMiner(min_products=min_products, **options).fit(titles)
