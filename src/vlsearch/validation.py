"""Validation of untrusted text and filter values: the one layer the HTTP app, the CLI and the
library (``Engine.search``) all go through before anything reaches tokenizers or tantivy.

Text must be valid Unicode that encodes to UTF-8 (no lone surrogates; bytes must decode
strictly) and fit a length bound; filter objects must be ``{field: value or
[values]}`` of such texts, bounded in fields, values and nesting; JSON from a client is
checked for nesting depth *before* it is parsed (Python's parser recurses); integers from a
query string are plain ASCII digits (no sign, spaces or underscores). Every failure raises
:class:`vlsearch.errors.InputError` naming the field and what was expected; messages show
offending characters escaped (``\\ud800``), so they can always be sent back as UTF-8.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlsearch.errors import InputError

#: Characters stripped around texts: Python's whitespace and U+FEFF (which JavaScript's \s
#: includes), written as a regex class body so the API schema can say the same thing to
#: clients whatever their regex engine (``\s`` differs between Python, ECMA and Rust).
BLANK_CLASS = (r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f"
               r"\u3000\ufeff")
BLANKS = "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + "\ufeff"
_DIGITS = re.compile(r"[0-9]+")
MAX_DIGITS = 18  # longer digit strings are refused before int() (no huge-int parsing)
_JSON_SPECIAL = re.compile(rb'[\[\]{}"\\]')
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


@dataclass(frozen=True)
class TextLimits:
    """Bounds applied to client input (built from ``ServeConfig``)."""

    max_query_chars: int = 256  # query text length
    max_filter_fields: int = 16  # fields in one filter object
    max_filter_values: int = 64  # values of one filter field
    max_value_chars: int = 256  # length of one filter value
    max_json_depth: int = 8  # nesting of [ and { in client JSON (filters, request bodies)

    @classmethod
    def from_config(cls, config: Any) -> TextLimits:
        """Take every field of this class that ``config`` (e.g. ``ServeConfig``) defines."""
        names = cls.__dataclass_fields__
        return cls(**{n: getattr(config, n) for n in names if hasattr(config, n)})


def safe(text: str) -> str:
    """``text`` with anything that cannot be encoded as UTF-8 written as ``\\uXXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_text(value: Any, what: str, max_chars: int, *, allow_empty: bool = False,
               strip: bool = True) -> str:
    """``value`` as a str of valid Unicode (bytes must be UTF-8), stripped of outer blanks
    (kept with ``strip=False``: names that must match exactly)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{what}: byte {exc.start + 1} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise InputError(f"{what}: expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what}: character {exc.start + 1} is a lone surrogate "
                         f"({safe(value[exc.start])!s}); expected valid UTF-8 text") from None
    if len(value) > max_chars:
        raise InputError(f"{what}: {len(value)} characters, at most {max_chars} allowed")
    if not value.strip(BLANKS) and not allow_empty:
        raise InputError(f"{what}: expected a non-empty text")
    return value.strip(BLANKS) if strip else value


def blank(text: str) -> bool:
    return not text.strip(BLANKS)


def check_query(value: Any, limits: TextLimits) -> str:
    """A search query: non-empty valid text of at most ``max_query_chars`` characters."""
    return check_text(value, "query", limits.max_query_chars)


def check_filters(filters: Any, limits: TextLimits, what: str = "filters") -> dict[str, list[str]]:
    """``{field: value | [values]}`` with text fields and values, within the limits
    (``max_filter_values`` values per field); duplicates are dropped.

    Field names are checked for form here; which fields exist is the index's business.
    """
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise InputError(f"{what}: expected an object of field -> value(s), "
                         f"got {type(filters).__name__}")
    if len(filters) > limits.max_filter_fields:
        raise InputError(f"{what}: {len(filters)} fields, at most {limits.max_filter_fields} allowed")
    out: dict[str, list[str]] = {}
    for field, values in filters.items():
        name = check_text(field, f"{what}: field name", limits.max_value_chars, strip=False)
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, (list, tuple, set, frozenset)):
            raise InputError(f"filter field {safe(name)!r}: expected a value or a list of values, "
                             f"got {type(values).__name__}")
        if len(values) > limits.max_filter_values:
            raise InputError(f"filter field {safe(name)!r}: {len(values)} values, at most "
                             f"{limits.max_filter_values} allowed")
        checked = out.setdefault(name, [])
        for value in values:
            if not isinstance(value, str):
                raise InputError(f"filter field {safe(name)!r}: values must be text, "
                                 f"got {type(value).__name__}")
            value = check_text(value, f"filter field {safe(name)!r}", limits.max_value_chars)
            if value not in checked:
                checked.append(value)
        if len(checked) > limits.max_filter_values:  # merged from several sources
            raise InputError(f"filter field {safe(name)!r}: more than {limits.max_filter_values} "
                             "values")
    return out


def json_depth(data: bytes | str, stop_above: int | None = None) -> int:
    """Deepest nesting of arrays/objects in a JSON text (strings skipped), without parsing it;
    one linear pass over the special characters, stopping early above ``stop_above``."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= (stop_above or 0):
        return raw.count(b"[") + raw.count(b"{")  # cannot nest deeper than it has brackets
    depth = deepest = 0
    in_string, escaped_at = False, -1
    for match in _JSON_SPECIAL.finditer(raw):
        pos, char = match.start(), raw[match.start()]
        if pos == escaped_at:
            continue
        if in_string:
            if char == _BACKSLASH:
                escaped_at = pos + 1
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
            if stop_above is not None and deepest > stop_above:
                return deepest
        elif char in _CLOSE:
            depth -= 1
    return deepest


def check_json_depth(data: bytes | str, what: str, max_depth: int) -> None:
    if json_depth(data, stop_above=max_depth) > max_depth:
        raise InputError(f"{what}: JSON nested deeper than {max_depth} levels")


def loads_json(text: str, what: str, max_depth: int) -> Any:
    """Parse client JSON whose nesting is bounded first (never a RecursionError)."""
    check_json_depth(text, what, max_depth)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what}: not valid JSON ({exc.msg})") from None
    except RecursionError:  # unreachable with a sane max_depth; kept as a guard
        raise InputError(f"{what}: JSON nested too deeply") from None


def parse_digits(text: Any, what: str) -> int:
    """A whole number written as plain ASCII digits (no sign, spaces, underscores)."""
    if isinstance(text, str) and _DIGITS.fullmatch(text) and len(text) <= MAX_DIGITS:
        return int(text)
    shown = safe(text) if isinstance(text, str) else text
    raise InputError(f"{what}: expected a whole number written in digits (0-9), got {shown!r}")


def parse_int(text: Any, what: str, low: int, high: int) -> int:
    """A decimal integer in [low, high] written as plain ASCII digits ("+5", " 5", "1_000",
    "5.0" and non-ASCII digits are refused); ints pass through with the range check."""
    if isinstance(text, bool):
        raise InputError(f"{what}: expected an integer from {low} to {high}, got {text!r}")
    if isinstance(text, int):
        value = text
    elif isinstance(text, str) and _DIGITS.fullmatch(text) and len(text) <= MAX_DIGITS:
        value = int(text)
    else:
        shown = safe(text) if isinstance(text, str) else text
        raise InputError(f"{what}: expected an integer from {low} to {high}, got {shown!r}")
    if not low <= value <= high:
        raise InputError(f"{what}: expected an integer from {low} to {high}, got {value}")
    return value
