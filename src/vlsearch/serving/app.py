"""HTTP service over the engine (FastAPI) and the web page at ``/`` (static HTML + JS).

Routes: ``GET/POST /search``, ``GET /products/{id}``, ``GET /products/{id}/image`` (the
product's own catalog image from the index metadata, never a client-supplied path),
``GET /health``, OpenAPI docs at ``/docs``. Bad input answers 4xx with ``{"error": ...}``:
400 for bad queries/filters/k (and non-UTF-8 query strings), 404 for unknown products,
503 when the index cannot be read; never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from vlsearch.config import ServeConfig
from vlsearch.errors import InputError, VlsearchError, WorkdirError
from vlsearch.serving.engine import Engine

STATIC_DIR = Path(__file__).with_name("static")
log = logging.getLogger(__name__)


class SearchRequest(BaseModel):
    """Body of ``POST /search``."""

    q: str = Field(description="query text")
    k: int | None = Field(default=None, description="number of results (default from config)")
    offset: int = Field(default=0, description="rank of the first result (pagination: next page at offset + k)")
    filters: dict[str, list[str] | str] | None = Field(
        default=None, description='constraints, e.g. {"brand": ["Nike"], "gender": "Men"}')
    channels: list[str] | None = Field(default=None, description="embedding and/or lexical")
    auto: bool = Field(default=True, description="apply query-understanding constraints")
    off: list[str] = Field(default_factory=list, description="auto constraints to switch off, by field")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_filter_params(pairs: list[str], filters_json: str | None) -> dict[str, list[str]]:
    """``field:value`` repeats and/or a JSON object into ``{field: [values]}``."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        field, sep, value = pair.partition(":")
        if not sep or not field.strip() or not value.strip():
            raise InputError(f"filter {pair!r}: expected FIELD:VALUE, e.g. brand:Nike")
        out.setdefault(field.strip(), []).append(value.strip())
    if filters_json:
        try:
            obj = json.loads(filters_json)
        except json.JSONDecodeError as exc:
            raise InputError(f"filters: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise InputError("filters: expected a JSON object of field -> value(s)")
        for field, values in obj.items():
            out.setdefault(field, []).extend([values] if isinstance(values, str) else values
                                             if isinstance(values, list) else [values])
    return out


def _channels(value: list[str] | None) -> list[str] | None:
    if not value:
        return None
    return [c.strip() for item in value for c in item.split(",") if c.strip()]


def create_app(index_dir: str | Path | None = None, engine: Engine | None = None,
               config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over ``engine`` (or ``Engine.open(index_dir)``, which raises
    WorkdirError for a missing or half-written index)."""
    if engine is None:
        if index_dir is None:
            raise ValueError("create_app needs index_dir or engine")
        engine = Engine.open(index_dir, config)
    app = FastAPI(title="vlsearch", description="Text-to-multimodal product retrieval",
                  version="1")
    app.state.engine = engine

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": message})

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error(exc.status, exc.message)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError):
        return error(400, str(exc))

    @app.exception_handler(WorkdirError)
    async def _index_error(request: Request, exc: WorkdirError):
        return error(503, f"index unavailable: {exc}")

    @app.exception_handler(VlsearchError)
    async def _other_error(request: Request, exc: VlsearchError):
        return error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'request'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return error(400, f"bad request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error(500, "internal error (logged on the server)")

    @app.middleware("http")
    async def _utf8_query(request: Request, call_next):
        raw = request.scope.get("query_string", b"")
        try:
            unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return error(400, "query string: expected UTF-8 (percent-encoded) text")
        return await call_next(request)

    def run_search(q: str, k: int | None, filters: dict, channels, auto: bool, off: list[str],
                   offset: int = 0) -> dict[str, Any]:
        result = engine.search(q, k=k, filters=filters, channels=channels, auto_constraints=auto, off=off,
                               offset=offset)
        out = result.to_dict()
        for hit in out["hits"]:
            hit["image"] = f"/products/{hit['product_id']}/image"
        return out

    @app.get("/search", summary="Search (query string)")
    def search_get(
        q: Annotated[str, Query(description="query text")],
        k: Annotated[int | None, Query(description="number of results")] = None,
        filter: Annotated[list[str] | None, Query(
            description="FIELD:VALUE, repeatable (OR within a field, AND across)")] = None,
        filters: Annotated[str | None, Query(description='JSON object, e.g. {"brand": ["Nike"]}')] = None,
        channels: Annotated[list[str] | None, Query(
            description="embedding, lexical (repeat or comma-separate)")] = None,
        auto: Annotated[bool, Query(description="apply query-understanding constraints")] = True,
        off: Annotated[list[str] | None, Query(description="auto constraint fields to switch off")] = None,
        offset: Annotated[int, Query(description="rank of the first result (next page: offset + k)")] = 0,
    ) -> dict[str, Any]:
        return run_search(q, k, parse_filter_params(filter or [], filters), _channels(channels), auto, off or [],
                          offset)

    @app.post("/search", summary="Search (JSON body)")
    def search_post(body: SearchRequest) -> dict[str, Any]:
        filters = parse_filter_params([], json.dumps(body.filters)) if body.filters else {}
        return run_search(body.q, body.k, filters, _channels(body.channels), body.auto, body.off, body.offset)

    @app.get("/products/{product_id}", summary="Product metadata")
    def product(product_id: str) -> dict[str, Any]:
        try:
            info = engine.product(product_id)
        except KeyError:
            raise ApiError(404, f"product {product_id!r}: not in the index") from None
        info["image"] = f"/products/{product_id}/image" if info["has_image"] else None
        return info

    @app.get("/products/{product_id}/image", summary="The product's catalog image",
             response_class=FileResponse)
    def product_image(product_id: str):
        try:
            path = engine.image_path(product_id)
        except KeyError:
            raise ApiError(404, f"product {product_id!r}: not in the index") from None
        if path is None:
            raise ApiError(404, f"product {product_id!r}: has no image file")
        return FileResponse(path)

    @app.get("/health", summary="Liveness and the index version served")
    def health() -> dict[str, Any]:
        engine.reload_if_changed()
        return {"status": "ok", "version": engine.version, "products": engine.n_products,
                "worker": os.getpid()}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


ENV_INDEX = "VLSEARCH_SERVE_INDEX"  # index directory, for each worker process of `serve --workers`
ENV_CONFIG = "VLSEARCH_SERVE_CONFIG"  # the ServeConfig as JSON, likewise


def _worker_threads(config: ServeConfig) -> None:
    if config.torch_threads > 0:
        import torch

        torch.set_num_threads(config.torch_threads)


def app_from_env() -> FastAPI:
    """The app of one worker process of ``serve --workers N`` (a uvicorn factory): the index
    directory and ServeConfig come from the parent through ``ENV_INDEX`` / ``ENV_CONFIG``.
    Every worker opens the same index version itself (vectors, qid table memory-mapped, so
    the page cache holds one copy) and hot-reloads on its own."""
    from vlsearch.config import update

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
    in this process for one worker, else ``worker_count`` processes sharing the socket."""
    import uvicorn

    from vlsearch.config import to_dict
    from vlsearch.index.builder import current_version

    config = config or ServeConfig()
    workers = worker_count(config)
    if workers == 1:
        app = create_app(index_dir=index_dir, config=config)
        _worker_threads(config)
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    current_version(index_dir)  # a missing or half-written index fails here, before any worker
    os.environ[ENV_INDEX] = str(Path(index_dir).resolve())
    os.environ[ENV_CONFIG] = json.dumps(to_dict(config))
    uvicorn.run("vlsearch.serving.app:app_from_env", factory=True, workers=workers, host=host,
                port=port, log_level="info")
