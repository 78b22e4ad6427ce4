"""The one filter syntax shared by the command line and the HTTP API.

A filter is ``field=value``; repeat it for more fields (AND across fields), and separate
several values of one field with commas (OR within a field): ``--filter brand=Nike,Puma
--filter gender=Men`` on the command line, ``?filter=brand=Nike,Puma&filter=gender=Men``
over HTTP. Values are trimmed; an empty field or value is an error naming the filter.
"""

from __future__ import annotations

from collections.abc import Iterable

from vlsearch.errors import InputError

FILTER_SEPARATOR = "="  # between the field and its values
VALUE_SEPARATOR = ","  # between several values of one field
FILTER_EXAMPLE = "brand=Nike,Puma"  # shown in error messages and help


def parse_filter(text: str, source: str = "filter", blanks: str | None = None) -> tuple[str, list[str]]:
    """``"brand=Nike,Puma"`` -> ``("brand", ["Nike", "Puma"])``; InputError when malformed.
    ``blanks``: the characters trimmed from the field and values (default: whitespace)."""
    field, sep, rest = str(text).partition(FILTER_SEPARATOR)
    field = field.strip(blanks)
    values = [v.strip(blanks) for v in rest.split(VALUE_SEPARATOR)]
    if not sep or not field or not any(values):
        raise InputError(f"{source} {text!r}: expected FIELD=VALUE[,VALUE...], e.g. {FILTER_EXAMPLE}")
    if not all(values):
        raise InputError(f"{source} {text!r}: empty value between commas")
    return field, values


def parse_filters(items: Iterable[str], source: str = "filter") -> dict[str, list[str]]:
    """Several filters into ``{field: [values]}``; a field given twice keeps every value (OR)."""
    out: dict[str, list[str]] = {}
    for item in items or ():
        field, values = parse_filter(item, source)
        bucket = out.setdefault(field, [])
        bucket.extend(v for v in values if v not in bucket)
    return out


def format_filters(filters: dict[str, list[str]]) -> list[str]:
    """The inverse of :func:`parse_filters`: ``{"brand": ["Nike"]}`` -> ``["brand=Nike"]``."""
    return [f"{field}{FILTER_SEPARATOR}{VALUE_SEPARATOR.join(values)}" for field, values in filters.items()]
