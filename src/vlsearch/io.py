"""Atomic file writes: readers see the old file or the new one, never a half-written one.

Every artifact gets normal permissions: files ``0666``, directories ``0777``, less the umask
(``tempfile`` makes ``0600``/``0700``, and safetensors writes ``0600``), so a server running
as another user of the group (systemd, a container) can read what training and indexing wrote.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlsearch.errors import WorkdirError


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new artifact file: 0666 less the umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permissions of a new artifact directory: 0777 less the umask."""
    return 0o777 & ~_umask()


def temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new temporary directory in ``parent`` (to be renamed into place) with normal
    permissions, not mkdtemp's 0700."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    os.chmod(path, dir_mode())
    return path


def normalize_modes(root: str | Path) -> None:
    """Give ``root`` and everything under it normal permissions (e.g. after copying files
    another tool wrote 0600); symbolic links are left alone."""
    root = Path(root)
    files, dirs = file_mode(), dir_mode()
    os.chmod(root, dirs if root.is_dir() else files)
    for base, subdirs, names in os.walk(root):
        for name in subdirs:
            if not os.path.islink(os.path.join(base, name)):
                os.chmod(os.path.join(base, name), dirs)
        for name in names:
            if not os.path.islink(os.path.join(base, name)):
                os.chmod(os.path.join(base, name), files)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file over ``path``.

    The temporary file lives in the same directory (same filesystem, so the rename is
    atomic) and is removed if ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp (and e.g. safetensors) make 0600
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npy(path: str | Path, array: Any) -> None:
    """``numpy.save`` of ``array`` to ``path`` through :func:`atomic_write`."""
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def load_part(path: str | Path, what: str, loader: Callable[[Path], Any]) -> Any:
    """``loader(path)``, with any failure turned into one WorkdirError naming the file: the
    one loading step every part of an index version goes through (numpy, pyarrow, FAISS,
    tantivy and JSON each raise their own exception types for a truncated or garbage file)."""
    path = Path(path)
    try:
        return loader(path)
    except WorkdirError:
        raise
    except FileNotFoundError:
        raise WorkdirError(f"{path}: {what} missing") from None
    except Exception as exc:  # noqa: BLE001 - every library's error means the same: corrupt
        raise WorkdirError(f"{path}: {what} is corrupt or unreadable "
                           f"({type(exc).__name__}: {exc})") from None


def read_json(path: str | Path) -> Any:
    """Read JSON; a missing or corrupt file raises with the path named."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkdirError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkdirError(f"{path}: not valid JSON ({exc})") from None
