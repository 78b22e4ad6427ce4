"""How the HTTP service runs under uvicorn: its limits and timeouts from ``ServeConfig``, and a
request-head timeout uvicorn lacks (it times out idle keep-alive connections only after a
first response, so a client that connects and never finishes its headers held a
connection for ever).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from vlsearch.config import ServeConfig

ENV_HEAD_TIMEOUT = "VLSEARCH_SERVE_HEAD_TIMEOUT"  # seconds; read by every worker process
PROTOCOL = "vlsearch.serving.server:HeadTimeoutH11Protocol"  # importable: workers are spawned


class HeadTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head (request line and
    headers) is not complete ``timeout_head`` seconds after the connection opened or the
    previous response ended (``ENV_HEAD_TIMEOUT``, set by :func:`uvicorn_options`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_head = float(os.environ.get(ENV_HEAD_TIMEOUT, ServeConfig.timeout_header))
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _arm_head_timer(self) -> None:
        if not self._waiting_for_head():
            self._cancel_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.timeout_head, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._waiting_for_head():
            self.transport.close()


def uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` from ``config`` (the head
    timeout travels to worker processes in ``ENV_HEAD_TIMEOUT``)."""
    os.environ[ENV_HEAD_TIMEOUT] = str(config.timeout_header)
    return {
        "http": PROTOCOL,
        "timeout_keep_alive": config.timeout_keep_alive,
        "limit_concurrency": config.limit_concurrency,
        "backlog": config.backlog,
        "h11_max_incomplete_event_size": config.max_header_bytes,
        "timeout_graceful_shutdown": config.timeout_graceful_shutdown,
    }
