"""Request limits applied before routing (a pure ASGI middleware): the body is read up to
``max_body_bytes`` and refused with 413 beyond it (a declared Content-Length beyond it is
refused unread); a JSON body nested deeper than ``max_json_depth`` is refused with 400
before any parser recurses into it; a path or query string whose percent-decoded bytes are
not UTF-8 is refused with 400. Everything else passes through with its body replayed.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlsearch.errors import InputError
from vlsearch.validation import check_json_depth


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_json_depth: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for what, raw in (("path", scope.get("raw_path") or scope["path"].encode("utf-8", "replace")),
                          ("query string", scope.get("query_string", b""))):
            try:
                unquote_to_bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                await _refuse(scope, receive, send, 400,
                              f"{what}: expected UTF-8 (percent-encoded) text")
                return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            await _refuse(scope, receive, send, 413, self._too_large())
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _refuse(scope, receive, send, 413, self._too_large())
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and b"json" in headers.get(b"content-type", b"").lower():
            try:
                check_json_depth(body, "request body", self.max_json_depth)
            except InputError as exc:
                await _refuse(scope, receive, send, 400, str(exc))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"request body: larger than {self.max_body_bytes} bytes"


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
