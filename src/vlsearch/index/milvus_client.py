"""Reaching Milvus: one cached ``MilvusClient`` per URI and token (``connect``; a failed call
forgets it, so the next one reconnects), calls whose failures become ``StoreUnavailable``
naming the URI (``call_milvus``, ``RemoteCollection``), filter expressions with every value
quoted and escaped (``filter_expression``), collection and alias names per index version,
and dropping the collections of versions that are gone (``sweep_collections``). The token
comes from the environment variable the config names and is never written anywhere.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from vlsearch.config import IndexConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.index.lexical import check_filter
from vlsearch.index.store import Constraints, StoreUnavailable

CURRENT_SUFFIX = "_current"


QID_SUFFIX = "_qid"


def is_server_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://", "tcp://", "unix:"))


def resolved_uri(uri: str) -> str:
    """A server URI as given; a file path (milvus-lite) made absolute."""
    return uri if is_server_uri(uri) else str(Path(uri).expanduser().resolve())


_clients: dict[tuple[str, str], object] = {}


_clients_lock = threading.Lock()


def connect(config: IndexConfig):
    """A MilvusClient for ``config.milvus_uri`` (one per URI and token in this process);
    ``StoreUnavailable`` with a one-line message naming the URI when it cannot be reached
    or refuses the token."""
    from pymilvus import MilvusClient  # optional and heavy: only the Milvus backend needs it

    uri = resolved_uri(config.milvus_uri)
    token = os.environ.get(config.milvus_token_env, "")
    key = (uri, token)
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        if not is_server_uri(uri):
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        try:
            client = MilvusClient(uri=uri, token=token, timeout=config.milvus_timeout_s)
            client.list_collections(timeout=config.milvus_timeout_s)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the server is reported as one
            raise StoreUnavailable(f"Milvus at {uri}: cannot connect ({_one_line(exc)})") from None
        _clients[key] = client
        return client


def forget(config: IndexConfig) -> None:
    """Drop the cached client of ``config`` (after a failure: the next call reconnects)."""
    key = (resolved_uri(config.milvus_uri), os.environ.get(config.milvus_token_env, ""))
    with _clients_lock:
        client = _clients.pop(key, None)
    if client is not None:
        try:
            client.close()
        except Exception:  # noqa: BLE001, S110 - closing a broken channel may fail too; nothing to keep
            pass


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:300]


def call_milvus(uri: str, what: str, fn, *args, **kwargs):
    """Run one Milvus call; a failure becomes ``StoreUnavailable`` naming the URI."""
    try:
        return fn(*args, **kwargs)
    except (InputError, WorkdirError):
        raise
    except Exception as exc:  # noqa: BLE001 - pymilvus raises many types for one outage
        raise StoreUnavailable(f"Milvus at {uri}: {what} failed ({_one_line(exc)})") from None


def quote(value: str) -> str:
    """A Milvus string literal matching ``value`` exactly: double-quoted, backslash and
    quote escaped. Control characters are refused (filter values never hold them)."""
    if not isinstance(value, str):
        raise InputError(f"filter value {value!r}: expected text")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InputError(f"filter value {value!r}: control characters are not allowed")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def filter_expression(constraints: Constraints | None) -> str:
    """``field in ["a", "b"] and other in ["c"]`` for ``{field: values}`` (validated by
    ``check_filter``: known fields only, values normalised); "" for no constraint."""
    if not constraints:
        return ""
    clauses = [f"{field} in [{', '.join(quote(v) for v in values)}]"
               for field, values in sorted(check_filter(constraints).items())]
    return " and ".join(clauses)


def collection_name(prefix: str, version: str) -> str:
    name = f"{prefix}_{version}".replace("-", "_")
    if not name.replace("_", "").isalnum() or not name[0].isalpha():
        raise InputError(f"[index] milvus_prefix {prefix!r}: collection names take letters, digits and _")
    return name


def version_of(prefix: str, collection: str) -> str | None:
    """The version directory name a collection was built for (inverse of collection_name)."""
    head = f"{prefix}_"
    if not collection.startswith(head) or collection.endswith((QID_SUFFIX, CURRENT_SUFFIX)):
        return None
    rest = collection[len(head):]
    return rest.replace("_", "-", 1) if rest.startswith("v") and "_" in rest else None


def alias_name(prefix: str) -> str:
    return f"{prefix}{CURRENT_SUFFIX}"


class RemoteCollection:
    """A collection reached through the cached client: a failed call forgets the client and
    marks the collection for reloading, so the first call after an outage reconnects and
    loads it again (a restarted server starts with collections released)."""

    collection: str
    config: IndexConfig
    uri: str
    _stale: bool = False

    @property
    def client(self):
        return connect(self.config)

    def _call(self, what: str, fn, *args, **kwargs):
        kwargs.setdefault("timeout", self.config.milvus_timeout_s)
        try:
            if self._stale:
                call_milvus(self.uri, f"load_collection on {self.collection}", self.client.load_collection,
                            self.collection, timeout=self.config.milvus_build_timeout_s)
                self._stale = False
            return call_milvus(self.uri, f"{what} on {self.collection}", fn, *args, **kwargs)
        except StoreUnavailable:
            forget(self.config)
            self._stale = True
            raise

    def _build_call(self, what: str, fn, *args, **kwargs):
        return self._call(what, fn, *args, timeout=self.config.milvus_build_timeout_s, **kwargs)


def sweep_collections(config: IndexConfig, versions_on_disk: set[str]) -> list[str]:
    """Drop ``<prefix>_<version>`` collections (and their qid tables) whose version directory
    is gone, never the one the alias names; returns the dropped names."""
    client = connect(config)
    uri = resolved_uri(config.milvus_uri)
    timeout = config.milvus_build_timeout_s
    prefix = config.milvus_prefix
    alias = alias_name(prefix)
    aliases = call_milvus(uri, "list_aliases", client.list_aliases, timeout=timeout).get("aliases", [])
    current = call_milvus(uri, "describe_alias", client.describe_alias, alias,
                          timeout=timeout)["collection_name"] if alias in aliases else None
    dropped = []
    for name in call_milvus(uri, "list_collections", client.list_collections, timeout=timeout):
        base = name.removesuffix(QID_SUFFIX)
        version = version_of(prefix, base)
        if version is None or version in versions_on_disk or base == current:
            continue
        call_milvus(uri, "drop_collection", client.drop_collection, name, timeout=timeout)
        dropped.append(name)
    return dropped
