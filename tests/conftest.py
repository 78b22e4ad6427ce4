"""Shared fixtures: paths to ../shared, the real fashion catalog (skipped when absent), the sample
catalog; the deterministic Hypothesis profile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (a failure reproduces; CI cannot flake)
settings.register_profile("vlsearch", derandomize=True, database=None, print_blob=True)
settings.load_profile("vlsearch")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """``$VLSEARCH_SHARED`` or ``../shared`` next to the repository."""
    return Path(os.environ.get("VLSEARCH_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """The real catalog (Kaggle fashion layout); tests that need it skip when it is absent."""
    path = shared_root() / "data" / "fashion-products"
    if not (path / "styles.csv").exists():
        pytest.skip(f"real catalog not found at {path}")
    return path


@pytest.fixture(scope="session")
def sample_catalog_dir(tmp_path_factory) -> Path:
    """A small generated catalog in the Kaggle layout (styles.csv + images/), made once per session."""
    from vlsearch.sample import write_sample_catalog

    out = tmp_path_factory.mktemp("sample-catalog")
    write_sample_catalog(out, n_products=300, seed=0)
    return out
