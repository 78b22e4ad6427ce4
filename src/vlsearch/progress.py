"""Progress lines for stretches without a progress bar (loading a model, opening an index).

``with stage("loading the model"):`` prints ``loading the model ...`` on stderr before the
work and ``loading the model: 3.2 s`` after it, so no stretch longer than a few seconds is
silent. Only when stderr is a terminal (as tqdm's bars are for people; a log or a script
reading stderr keeps errors on one line); ``enabled=False`` (``--quiet``) prints nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def stage(message: str, enabled: bool = True) -> Iterator[None]:
    """Announce ``message`` on stderr, run the block, then report how long it took."""
    if not enabled or not sys.stderr.isatty():
        yield
        return
    print(f"{message} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    yield
    print(f"{message}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
