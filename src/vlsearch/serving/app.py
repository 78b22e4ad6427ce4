"""HTTP service over the engine (FastAPI) and the web page at ``/`` (static HTML + JS).

Routes (module-level functions over ``request.app.state``: ``engine``, ``config``):
``GET/POST /search`` (hits with attributes and per-channel scores, facet counts over the
hits, spelling correction, ``explain`` for the Modal Adaptation weights), ``GET
/products/{id}`` (with its Modal Adaptation weights), ``GET /products/{id}/image`` (the product's
own catalog image, resolved and confined to the catalog's image directory at request time,
never a client-supplied path), ``GET /health``, OpenAPI at ``/openapi.json`` and Swagger UI
at ``/docs`` (assets served locally: works offline). Bodies are typed (``serving.schema``);
every error answers ``{"error": ...}``: 400 bad input (including non-UTF-8 text and JSON
nested too deeply), 404 unknown product or image, 405 with ``Allow``, 413 body over
``max_body_bytes``, 503 index unreadable; never a traceback. Input goes through
``vlsearch.validation`` (in ``Engine.search``), limits through ``serving.guard``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import os
import stat
from pathlib import Path
from typing import Annotated, Any

import torch
import uvicorn
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from swagger_ui_bundle import swagger_ui_path

from vlsearch.config import ServeConfig, to_dict, update
from vlsearch.errors import InputError, VlsearchError, WorkdirError
from vlsearch.filters import FILTER_EXAMPLE, parse_filter
from vlsearch.index.builder import current_version
from vlsearch.index.lexical import FILTER_FIELDS
from vlsearch.index.store import single_process_store
from vlsearch.serving.engine import CHANNELS, Engine
from vlsearch.serving.guard import RequestGuard
from vlsearch.serving.schema import (
    HealthOut,
    ProductOut,
    SearchRequest,
    SearchResponse,
    contract,
    error_responses,
)
from vlsearch.serving.server import uvicorn_options
from vlsearch.validation import (
    BLANKS,
    TextLimits,
    blank,
    check_filters,
    loads_json,
    parse_digits,
    safe,
)

STATIC_DIR = Path(__file__).with_name("static")
log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_filter_params(pairs: list[str], filters_json: str | None,
                        limits: TextLimits | None = None) -> dict[str, list[str]]:
    """``field=value[,value...]`` repeats (the CLI's syntax, :mod:`vlsearch.filters`) and/or a
    JSON object into ``{field: [values]}`` (validated);
    each of the two may give half of ``limits.max_filter_values`` values per field."""
    limits = limits or TextLimits()
    half = dataclasses.replace(limits, max_filter_values=limits.max_filter_values // 2)
    if len(pairs) > half.max_filter_values:
        raise InputError(f"filter: {len(pairs)} given, at most {half.max_filter_values} allowed")
    given: dict[str, list[str]] = {}
    for pair in pairs:
        try:  # the CLI's syntax (vlsearch.filters): FIELD=VALUE[,VALUE...]
            field, values = parse_filter(pair, "filter", BLANKS)
        except InputError:
            raise InputError(f"filter {safe(pair)!r}: expected FIELD=VALUE[,VALUE...], "
                             f"e.g. {FILTER_EXAMPLE}") from None
        given.setdefault(field, []).extend(values)
    out = check_filters(given, half, "filter")
    if filters_json:
        obj = loads_json(filters_json, "filters", limits.max_json_depth)
        if not isinstance(obj, dict):
            raise InputError("filters: expected a JSON object of field -> value(s)")
        for field, values in check_filters(obj, half).items():
            out.setdefault(field, []).extend(v for v in values if v not in out.get(field, ()))
    return check_filters(out, limits)


def _channels(value: list[str] | None) -> list[str] | None:
    if not value:
        return None
    return [c.strip(BLANKS) for item in value for c in item.split(",") if not blank(c)]


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _config(request: Request) -> ServeConfig:
    return request.app.state.config


def facet_counts(hits: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, list[list[Any]]]:
    """``{field: [[value, count], ...]}`` over ``hits`` (most frequent first, then by value),
    for each filter field: brand and category from the hit, the others from its attributes."""
    counts: dict[str, dict[str, int]] = {name: {} for name in fields}
    for hit in hits:
        attributes = hit.get("attributes") or {}
        for name in fields:
            value = hit.get(name) if name in ("brand", "category") else attributes.get(name)
            if value:
                counts[name][value] = counts[name].get(value, 0) + 1
    return {name: [[v, n] for v, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]
            for name, c in counts.items()}


def run_search(request: Request, q: str, k: int | None, filters: dict, channels, auto: bool,
               off: list[str], offset: int = 0, spell: bool = True, explain: bool = False) -> dict[str, Any]:
    engine = _engine(request)
    result = engine.search(q, k=k, filters=filters, channels=channels,
                           auto_constraints=auto, off=off, offset=offset, spelling=spell)
    out = result.to_dict()
    ids = [h["product_id"] for h in out["hits"]]
    weights = engine.modal_weights(ids) if explain else None
    for i, (hit, attributes) in enumerate(zip(out["hits"], engine.attributes_of(ids))):
        hit["image"] = f"/products/{hit['product_id']}/image"
        hit["attributes"] = attributes
        if weights is not None:
            hit["modal_weights"] = weights[i]
    out["facets"] = facet_counts(out["hits"], FILTER_FIELDS)
    return out


def _digits(value: Any, what: str = "k") -> Any:
    """k (or offset) from a query string: plain ASCII digits only ("+5", " 5", "1_000" are
    refused); the range is the engine's to check."""
    if isinstance(value, str):
        return parse_digits(value, what)
    return value


def _offset_digits(value: Any) -> Any:
    return _digits(value, "offset")


# ------------------------------------------------------------------------------------ routes

router = APIRouter()
SEARCH_ERRORS = error_responses(400, 413, 503)
# The search routes are ``async def``: the engine's CPU-bound search runs on the event loop
# itself. As plain ``def`` routes each request took two thread-pool hops (the endpoint and
# the response validation), measured at ~3 ms of wall time and ~1 ms of CPU per request on
# the 44k index (docs/serving-profile.md). Parallelism comes from worker processes (`serve
# --workers`, one per core), which the GIL would not give threads anyway.


@router.get("/search", summary="Search (query string)", response_model=SearchResponse,
            responses=SEARCH_ERRORS)
async def search_get(
    request: Request,
    q: Annotated[str, Query(description="query text")],
    k: Annotated[int | None, BeforeValidator(_digits),
                 Query(description="number of results (default from config)")] = None,
    filter: Annotated[list[str] | None, Query(
        description=f"FIELD=VALUE[,VALUE...], e.g. {FILTER_EXAMPLE}; repeatable "
                    "(AND across fields, OR within a field)")] = None,
    filters: Annotated[str | None, Query(description='JSON object, e.g. {"brand": ["Nike"]}')] = None,
    channels: Annotated[list[str] | None, Query(
        description="embedding, lexical (repeat or comma-separate)")] = None,
    auto: Annotated[bool, Query(description="apply query-understanding constraints")] = True,
    off: Annotated[list[str] | None, Query(description="auto constraint fields to switch off")] = None,
    offset: Annotated[int, BeforeValidator(_offset_digits), Query(
        description="rank of the first result (next page: offset + k)")] = 0,
    spell: Annotated[bool, Query(description="correct terms unknown to the catalog (corrected_from says so)")] = True,
    explain: Annotated[bool, Query(description="add each hit's Modal Adaptation weights "
                                               "(computed now: runs the image model on the hits)")] = False,
) -> dict[str, Any]:
    limits = _engine(request).limits
    return run_search(request, q, k, parse_filter_params(filter or [], filters, limits),
                      _channels(channels), auto, off or [], offset, spell, explain)


@router.post("/search", summary="Search (JSON body)", response_model=SearchResponse,
             responses=SEARCH_ERRORS)
async def search_post(request: Request, body: SearchRequest) -> dict[str, Any]:
    filters = check_filters(body.filters, _engine(request).limits) if body.filters else {}
    return run_search(request, body.q, body.k, filters, body.channels or None, body.auto, body.off,
                      body.offset, body.spell, body.explain)


@router.get("/products/{product_id}", summary="Product metadata", response_model=ProductOut,
            responses=error_responses(404, 503))
def product(request: Request, product_id: str) -> dict[str, Any]:
    try:
        info = _engine(request).product(product_id)
    except KeyError:
        raise ApiError(404, f"product {safe(product_id)!r}: not in the index") from None
    info["image"] = f"/products/{product_id}/image" if info["has_image"] else None
    info["modal_weights"] = _engine(request).modal_weights([product_id])[0]
    return info


@router.get("/products/{product_id}/image", summary="The product's catalog image",
            response_class=Response,
            responses={200: {"content": {"image/*": {"schema": {"type": "string",
                                                                 "format": "binary"}}},
                             "description": "the image file"},
                       **error_responses(404, 503)})
def product_image(request: Request, product_id: str) -> Response:
    try:
        path = _engine(request).image_path(product_id)
    except KeyError:
        raise ApiError(404, f"product {safe(product_id)!r}: not in the index") from None
    data = None if path is None else _read_regular_file(path, _config(request).max_image_bytes)
    if data is None:
        raise ApiError(404, f"product {safe(product_id)!r}: has no image file")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Response(content=data, media_type=media)


def _read_regular_file(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of ``path`` if it is (still) a regular file, not a link, of at most
    ``max_bytes``; None otherwise (the check and the read use one descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        return handle.read(max_bytes + 1)[:max_bytes]


@router.get("/health", summary="Liveness and the index version served", response_model=HealthOut)
def health(request: Request) -> dict[str, Any]:
    engine = _engine(request)
    engine.reload_if_changed()
    return {"status": "ok", "version": engine.version, "products": engine.n_products,
            "worker": os.getpid()}


@router.get("/", include_in_schema=False)
def page():
    return FileResponse(STATIC_DIR / "index.html")


@router.get("/docs", include_in_schema=False)
def docs() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="/openapi.json", title="vlsearch API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/docs-assets/favicon-32x32.png")


# ------------------------------------------------------------------------------------ errors


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": safe(message)}, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message)

    async def input_error(request: Request, exc: VlsearchError):
        return error(400, str(exc))

    async def index_error(request: Request, exc: WorkdirError):
        return error(503, f"index unavailable: {exc}")

    async def validation(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return error(400, f"bad request: {problems}")

    async def http(request: Request, exc: StarletteHTTPException):
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request, headers.get("Allow"))
        return error(exc.status_code, str(exc.detail), headers or None)

    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error(500, "internal error (logged on the server)")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(WorkdirError, index_error)
    app.add_exception_handler(InputError, input_error)
    app.add_exception_handler(VlsearchError, input_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http)
    app.add_exception_handler(Exception, unexpected)


def _allowed_methods(request: Request, given: str | None) -> str:
    """Every method some route answers on this path (Starlette's 405 names one route's only);
    the static mounts answer GET and HEAD."""
    methods: set[str] = set()
    for route in router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods)) if methods else (given or "GET, HEAD")


def _swagger_assets() -> Path:
    return Path(swagger_ui_path)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the engine's bounds declared (``schema.contract``), built once."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
        app.openapi_schema = contract(document, app.state.config, FILTER_FIELDS, CHANNELS)
    return app.openapi_schema


def create_app(index_dir: str | Path | None = None, engine: Engine | None = None,
               config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over ``engine`` (or ``Engine.open(index_dir)``, which raises
    WorkdirError for a missing or half-written index)."""
    if engine is None:
        if index_dir is None:
            raise ValueError("create_app needs index_dir or engine")
        engine = Engine.open(index_dir, config)
    config = config or engine.config
    app = FastAPI(title="vlsearch", description="Text-to-multimodal product retrieval",
                  version="1", docs_url=None, redoc_url=None,
                  responses=error_responses(405))
    app.state.engine = engine
    app.state.config = config
    _install_error_handlers(app)
    app.include_router(router)
    app.openapi = lambda: _openapi(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(directory=_swagger_assets()), name="docs-assets")
    app.add_middleware(RequestGuard, max_body_bytes=config.max_body_bytes,
                       max_json_depth=config.max_json_depth)
    return app


ENV_INDEX = "VLSEARCH_SERVE_INDEX"  # index directory, for each worker process of `serve --workers`
ENV_CONFIG = "VLSEARCH_SERVE_CONFIG"  # the ServeConfig as JSON, likewise


def _worker_threads(config: ServeConfig) -> None:
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)


def app_from_env() -> FastAPI:
    """The app of one worker process of ``serve --workers N`` (a uvicorn factory): the index
    directory and ServeConfig come from the parent through ``ENV_INDEX`` / ``ENV_CONFIG``.
    Every worker opens the same index version itself (vectors, qid table memory-mapped, so
    the page cache holds one copy) and hot-reloads on its own."""
    config = update(ServeConfig(), json.loads(os.environ.get(ENV_CONFIG, "{}")), source=ENV_CONFIG)
    _worker_threads(config)
    return create_app(index_dir=os.environ[ENV_INDEX], config=config)


def worker_count(config: ServeConfig) -> int:
    """``config.workers``, or the number of CPU cores this process may run on when 0."""
    if config.workers > 0:
        return config.workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          config: ServeConfig | None = None) -> None:
    """Open the index (WorkdirError if missing/half-written) and run the app with uvicorn:
    in this process for one worker, else ``worker_count`` processes sharing the socket;
    timeouts and limits from ``config`` (``serving.server``)."""
    config = config or ServeConfig()
    workers = worker_count(config)
    if workers > 1 and (reason := single_process_store(current_version(index_dir))):
        log.warning("%s: serving with 1 worker instead of %d", reason, workers)
        workers = 1
    options = uvicorn_options(config)
    if workers == 1:
        app = create_app(index_dir=index_dir, config=config)
        _worker_threads(config)
        uvicorn.run(app, host=host, port=port, log_level="info", **options)
        return
    current_version(index_dir)  # a missing or half-written index fails here, before any worker
    os.environ[ENV_INDEX] = str(Path(index_dir).resolve())
    os.environ[ENV_CONFIG] = json.dumps(to_dict(config))
    uvicorn.run("vlsearch.serving.app:app_from_env", factory=True, workers=workers, host=host,
                port=port, log_level="info", **options)
