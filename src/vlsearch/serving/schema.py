"""The HTTP API's contract: pydantic models of every request and response body, and the error
responses each route documents. ``serving.app`` declares these on its routes, so
``/openapi.json`` describes exactly what the server sends (FastAPI validates responses
against them). A field added to an engine result reaches clients only once it is declared
here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from vlsearch.validation import BLANK_CLASS


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one line saying what was wrong and where."""

    error: str = Field(description="what was wrong (field, value, limit), on one line")


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these status codes, all with an :class:`ErrorBody`."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
            for status in statuses}


ERROR_DESCRIPTIONS = {
    400: "bad input: missing or malformed parameter, unknown filter field, text that is not "
         "valid UTF-8, JSON nested too deeply, out-of-range k",
    404: "no such product, or the product has no servable image",
    405: "method not allowed (the Allow header lists the allowed ones)",
    413: "request body larger than the configured limit",
    503: "the index cannot be read or the server is at its connection limit",
}


def _whole_float(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer; so does the body (5.5 and "5" stay refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class SearchRequest(BaseModel):
    """Body of ``POST /search``."""

    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types as declared: k 5, not "5"

    q: str = Field(description="query text")
    k: Annotated[int | None, BeforeValidator(_whole_float)] = Field(
        default=None, description="number of results (default from config)")
    filters: dict[str, list[str] | str] | None = Field(
        default=None, description='constraints, e.g. {"brand": ["Nike"], "gender": "Men"}')
    channels: list[str] | None = Field(default=None, description="embedding and/or lexical")
    auto: bool = Field(default=True, description="apply query-understanding constraints")
    off: list[str] = Field(default_factory=list, description="auto constraints to switch off, by field")
    offset: Annotated[int, BeforeValidator(_whole_float)] = Field(
        default=0, description="rank of the first result (pagination: next page at offset + k)")
    spell: bool = Field(default=True, description="correct terms unknown to the catalog (corrected_from says so)")
    explain: bool = Field(default=False, description="add each hit's Modal Adaptation weights (modal_weights)")


class ConstraintOut(BaseModel):
    """One active (or relaxed) constraint: from query understanding (auto) or a filter."""

    field: str = Field(description="filter field, e.g. brand, gender, colour")
    values: list[str] = Field(description="accepted values (canonical form; OR)")
    labels: list[str] = Field(description="the values as the catalog spells them")
    source: str = Field(description="auto (query understanding), filter (the caller's) or soft (a preference)")
    terms: list[str] = Field(description="query terms that produced an auto constraint")
    text: str = Field(description="human-readable form")


class HitOut(BaseModel):
    """One result product."""

    product_id: str
    score: float = Field(description="fused reciprocal-rank score")
    channels: list[str] = Field(description="retrieval channels that returned the product")
    title: str
    brand: str | None
    category: str | None
    channel_scores: dict[str, float] = Field(description="raw score per channel")
    relaxed: bool = Field(description="a short-list fill hit: breaks one of fill_relaxed (after every exact hit)")
    image: str = Field(description="URL of the product image route")
    attributes: dict[str, str] = Field(default_factory=dict, description="catalog attributes (gender, colour, ...)")
    modal_weights: dict[str, float] | None = Field(
        default=None, description="Modal Adaptation weights (title / image / fused); with explain=true")


class SearchResponse(BaseModel):
    """Result of ``/search``."""

    query: str = Field(description="the query as searched (outer spaces removed)")
    hits: list[HitOut]
    constraints: list[ConstraintOut] = Field(description="constraints every hit not marked relaxed satisfies")
    relaxed: list[ConstraintOut] = Field(description="auto constraints dropped (nothing matched)")
    qid: int = Field(description="stable 32-bit id of the query's term sequence")
    qid_hit: bool = Field(description="the embedding channel was answered from the qid table")
    timings: dict[str, float] = Field(description="milliseconds per stage")
    channels: list[str]
    version: str = Field(description="index version that answered")
    allowed: int | None = Field(description="products satisfying the constraints (null: none active)")
    embedding_path: str = Field(description="qid | ann | ann+postfilter | ann+selector | exact")
    offset: int = Field(description="rank (0-based) of the first hit in the fused ranking")
    preferences: list[ConstraintOut] = Field(description="soft preferences of ambiguous terms (a boost, no filter)")
    fill_relaxed: list[ConstraintOut] = Field(
        description="constraints the relaxed hits break (fewer products than k matched them all)")
    corrected_from: str | None = Field(default=None, description="the query as typed, when spelling "
                                       "correction changed it (query is then the corrected text)")
    unknown_terms: list[str] = Field(default_factory=list, description="query terms no product mentions")
    facets: dict[str, list[tuple[str, int]]] = Field(
        default_factory=dict, description="per filter field, [value, count] over these hits")


class ProductOut(BaseModel):
    """Metadata of one product."""

    id: str
    title: str
    brand: str | None
    category: str | None
    attributes: dict[str, str]
    has_image: bool
    image: str | None = Field(description="URL of the image route, null without an image")
    modal_weights: dict[str, float] | None = Field(
        default=None, description="Modal Adaptation weights (title / image / fused), computed now")


class HealthOut(BaseModel):
    status: str = Field(description="ok")
    version: str = Field(description="index version served")
    products: int = Field(description="products in that version")
    worker: int = Field(description="process id of the worker that answered")


# ------------------------------------------------------------------------- config-dependent parts

#: A text the engine accepts: some character that is not blank (JSON Schema patterns are
#: unanchored). Lone surrogates cannot be written in a URL or a UTF-8 body; ``vlsearch.validation``
#: refuses them where they can arrive (JSON ``\ud800`` escapes).
TEXT_PATTERN = f"[^{BLANK_CLASS}]"
_BLANK = f"[{BLANK_CLASS}]"


def _alternatives(names) -> str:
    return "(" + "|".join(names) + ")"


def contract(openapi: dict[str, Any], config: Any, filter_fields, channels) -> dict[str, Any]:
    """Declare in the generated OpenAPI document the bounds the engine enforces from
    ``config`` (``ServeConfig``), the filter fields and channels it knows, the JSON content of
    the ``filters`` query parameter, and drop FastAPI's default 422 (this server answers
    every validation failure with 400 and an :class:`ErrorBody`)."""
    text = {"type": "string", "pattern": TEXT_PATTERN}
    query_text = {**text, "minLength": 1, "maxLength": config.max_query_chars}
    value = {**text, "maxLength": config.max_value_chars}

    def filter_object(max_values: int) -> dict[str, Any]:
        return {
            "type": "object",
            "propertyNames": {"enum": list(filter_fields)},
            "maxProperties": config.max_filter_fields,
            "additionalProperties": {"anyOf": [
                value, {"type": "array", "items": value, "minItems": 1, "maxItems": max_values}]},
        }

    half = config.max_filter_values // 2  # GET: filter and filters each give half per field
    k = {"type": "integer", "minimum": 1, "maximum": config.max_k}
    offset = {"type": "integer", "minimum": 0, "maximum": config.max_offset, "default": 0}
    field_enum = {"type": "string", "enum": list(filter_fields)}
    value_char = f"[^,{BLANK_CLASS}]"
    channel_list = {"type": "string", "pattern": (
        rf"^{_BLANK}*{_alternatives(channels)}{_BLANK}*(,{_BLANK}*{_alternatives(channels)}{_BLANK}*)*$")}
    pair = {"type": "string", "maxLength": config.max_value_chars,
            # FIELD=VALUE[,VALUE...] (vlsearch.filters): every value holds a character that is
            # neither blank nor a comma; at most the per-field share of values in one pair
            "pattern": (rf"^{_BLANK}*{_alternatives(filter_fields)}{_BLANK}*="
                        rf"[^,]*{value_char}[^,]*(,[^,]*{value_char}[^,]*){{0,{max(0, half - 1)}}}$")}
    query_params = {
        "q": query_text,
        "k": k,
        "offset": offset,
        "filter": {"type": "array", "items": pair, "maxItems": half},
        "channels": {"type": "array", "items": channel_list},
        "off": {"type": "array", "items": field_enum},
    }
    for path in openapi.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
            for param in operation.get("parameters", []):
                if param.get("in") != "query":
                    continue
                name = param["name"]
                if name == "filters":
                    param.pop("schema", None)
                    param["content"] = {"application/json": {"schema": filter_object(half)}}
                elif name in query_params:
                    param["schema"] = {**query_params[name],
                                       "description": param.get("schema", {}).get("description", "")}
                elif "anyOf" in param.get("schema", {}):  # optional: absent, never null
                    param["schema"] = next(s for s in param["schema"]["anyOf"] if s != {"type": "null"})
    schemas = openapi.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    body = schemas.get("SearchRequest", {}).get("properties", {})
    if body:
        body["q"].update(query_text)
        body["k"] = {"anyOf": [k, {"type": "null"}], "default": None,
                     "description": body["k"].get("description", "")}
        body["filters"] = {"anyOf": [filter_object(config.max_filter_values), {"type": "null"}],
                           "default": None,
                           "description": body["filters"].get("description", "")}
        body["channels"] = {"anyOf": [{"type": "array", "items": {"enum": list(channels)}},
                                      {"type": "null"}], "default": None,
                            "description": body["channels"].get("description", "")}
        body["offset"] = {**offset, "description": body["offset"].get("description", "")}
        body["off"] = {"type": "array", "items": field_enum,
                       "description": body["off"].get("description", "")}
    return openapi
