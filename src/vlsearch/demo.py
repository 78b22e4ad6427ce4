"""`vlsearch demo`: prepare → short training run → index → example searches, end to end.

Runs on the real catalog in ``<shared>/data/fashion-products`` when it exists (a subset sized
to finish in about ten minutes on a 2-core CPU), else on the generated sample catalog.
A second `make demo` reuses what the first one built: prepare is idempotent, a finished
model is not retrained, and the index is rebuilt only after a (re)training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlsearch.config import preset


@dataclass
class DemoConfig:
    """Sizes of the demo run (chosen so the whole demo takes about ten minutes here)."""

    real_limit: int = 6000  # catalog rows of the real catalog used by the demo
    sample_products: int = 400  # products of the generated sample catalog (fallback)
    steps: int = 150  # training steps of the short run
    batch_size: int = 32  # pairs per training step
    examples: tuple[str, ...] = (
        "nike shoes",
        "red dress for women",
        "men's black watch",
        "puma tshirts men",
        "blue jeans",
    )


def _banner(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


def run_demo(
    shared: Path, out: Path, limit: int | None = None, steps: int | None = None,
    preset_name: str = "minilm",
) -> None:
    from vlsearch.sample import write_sample_catalog
    from vlsearch.workdir import prepare

    demo = DemoConfig()
    config = preset(preset_name)
    real = shared / "data" / "fashion-products"
    if (real / "styles.csv").exists():
        catalog = real
        config.data.limit = limit or demo.real_limit
        _banner(f"prepare: real catalog {catalog} (first {config.data.limit} rows)")
    else:
        catalog = out / "sample-catalog"
        if not (catalog / "styles.csv").exists():  # drawing it again is deterministic but slow
            write_sample_catalog(catalog, n_products=limit or demo.sample_products)
        _banner(f"prepare: {real} not found; using the generated sample catalog {catalog}")
    workdir = out / "workdir"
    summary = prepare(catalog, workdir, config)
    print(summary.format())

    try:
        from vlsearch.index.builder import build_index
        from vlsearch.serving.engine import Engine
        from vlsearch.training import train
    except ImportError as exc:  # stages that later issues add
        print(f"\n(training/indexing not available in this build: {exc})")
        return

    config.train.steps = steps or demo.steps
    config.train.batch_size = demo.batch_size
    model_dir, index_dir = out / "model", out / "index"
    trained = False
    if (model_dir / "config.json").exists():  # written last, when a run has finished
        _banner(f"train: finished model found in {model_dir}; skipped")
    else:
        _banner(f"train: short run ({config.train.steps} steps)")
        result = train(workdir, config, model_dir, resume=(model_dir / "checkpoints").exists())
        print(result.format())
        trained = True

    if trained or not (index_dir / "current").exists():
        _banner("index")
        print(build_index(workdir, model_dir, index_dir, config.index).format())
    else:
        _banner(f"index: {index_dir / 'current'} is up to date; skipped")

    _banner("search")
    engine = Engine.open(index_dir)
    for query in demo.examples:
        res = engine.search(query, k=5)
        constraints = ", ".join(str(c) for c in res.constraints) or "none"
        print(f"\n> {query}    [constraints: {constraints}; qid hit: {res.qid_hit}]")
        for hit in res.hits:
            print(f"   {hit.score:7.3f}  {'+'.join(hit.channels):18s} {hit.product_id:>7s}  {hit.title}")
    print(f"\nStart the web page with `make serve` (vlsearch serve --index {index_dir}), "
          "then open http://127.0.0.1:8000/")
