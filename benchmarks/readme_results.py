"""The README's result tables, rendered from the committed benchmark JSON.

Each table sits in the README between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``
and is made only from a file under ``benchmarks/results/``, so the two cannot drift:

    .venv/bin/python benchmarks/readme_results.py            # rewrite the tables in README.md
    .venv/bin/python benchmarks/readme_results.py --check    # exit 1 naming any stale table

The test suite runs ``--check``. Prose around the tables (the verdicts) is written by hand
from the same numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_report import ENGINE_SETTINGS, engine_value
from quality_rows import ENGINE_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (header, split, metric, show the seed spread)
QUALITY_COLUMNS = (
    ("R@10", "test", "recall@10", True),
    ("R@100", "test", "recall@100", True),
    ("set R@100", "test", "set_recall@100", False),
    ("NDCG@10", "test", "ndcg@10", False),
    ("Cate@100", "test", "category_consistency@100", False),
    ("held-out R@100", "heldout", "recall@100", False),
    ("colour probe R@10", "colour_probe", "recall@10", True),
    ("colour probe R@100", "colour_probe", "recall@100", True),
)
BACKEND_FILTERS = (("encode_ann_ms", True), ("encode_ann_brand_ms", False), ("encode_ann_half_ms", False))


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> list[str]:
    rule = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(cells) + " |" for cells in (header, rule, *rows)]


def _number(value: float | None, spread: dict | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" ± {spread['std']:.3f}" if spread else "")


def quality_table(report: dict) -> list[str]:
    """Every finished row of a quality report, the main columns, ± the std over seeds."""
    rows = []
    for row in report["rows"]:
        if row["status"] == "pending":
            continue
        cells = [row["label"]]
        for _, split, metric, with_spread in QUALITY_COLUMNS:
            spread = row.get("spread", {}).get(split, {}).get(metric) if with_spread else None
            cells.append(_number(row["metrics"].get(split, {}).get(metric), spread))
        rows.append(cells)
    return _table(["method", *(c[0] for c in QUALITY_COLUMNS)], rows)


def engine_table(report: dict) -> list[str]:
    """Finished rows of a quality report through the serving engine: test R@100 / colour
    probe R@100 / single-attribute Rel@100 per channel x constraints setting."""
    rows = []
    for row in report["rows"]:
        if row["status"] == "pending" or not any("engine" in r for r in row.get("runs", [])):
            continue
        cells = [row["label"]]
        for _, setting in ENGINE_SETTINGS:
            values = [engine_value(row, setting, split, metric) for _, split, metric in ENGINE_COLUMNS]
            cells.append("—" if all(v is None for v in values) else " / ".join(_number(v) for v in values))
        rows.append(cells)
    return _table(["row", *(name for name, _ in ENGINE_SETTINGS)], rows)


def backends_table(report: dict) -> list[str]:
    rows = []
    for name, b in report["backends"].items():
        cells = [name]
        for key, with_p99 in BACKEND_FILTERS:
            cells.append(f"{b[key]['p50_ms']:.1f}" + (f" / {b[key]['p99_ms']:.1f}" if with_p99 else ""))
        cells += [f"{b['recall_at_100_vs_exact']:.3f}", f"{b['build_s']:.1f}", f"{b['bytes_per_product']:.0f}"]
        rows.append(cells)
    share = report.get("filter_share", {})
    brand = f" ({100 * share['brand']:.1f} %)" if "brand" in share else ""
    return _table(["backend", "encode+ANN p50 / p99 ms", f"+ brand filter{brand} p50", "+ ~50 % filter p50",
                   "recall@100 vs exact", "build s", "bytes/product"], rows)


def train_speed_table(report: dict) -> list[str]:
    rows = [[name, _overrides(v["overrides"]), f"{v['samples_per_s_median']:.2f}", f"{v['ratio_to_default']:.2f}×",
             f"{v['qpm_loss_ratio_to_default']:.3f}"] for name, v in report["variants"].items()]
    return _table(["variant", "overrides", "samples/s (median)", "vs default", "QPM loss vs default"], rows, 2)


def _overrides(sections: dict) -> str:
    return ", ".join(f"{section}.{k} = {v}" for section, values in sections.items() for k, v in values.items()) or "—"


TABLES: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "quality": ("quality.json", quality_table),
    "one-epoch-quality": ("one-epoch/quality.json", quality_table),
    "one-epoch-engine": ("one-epoch/quality.json", engine_table),
    "one-epoch-colour4-quality": ("one-epoch-colour4/quality.json", quality_table),
    "backends": ("backends-44k.json", backends_table),
    "train-speed": ("train_speed.json", train_speed_table),
}
REGION = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)


def render(readme: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """README text with every marked table re-rendered, and the names of those that changed."""
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise SystemExit(f"README: unknown results table {name!r} (known: {', '.join(TABLES)})")
        file, make = TABLES[name]
        body = "\n".join(make(json.loads((results / file).read_text()))) + "\n"
        if body != match["body"]:
            changed.append(f"{name} (from benchmarks/results/{file})")
        return match.group(1) + body + match.group(4)

    return REGION.sub(replace, readme), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report stale tables (exit 1)")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    text = args.readme.read_text()
    new, changed = render(text, args.results)
    if args.check:
        for name in changed:
            print(f"{args.readme}: table {name} is stale; run benchmarks/readme_results.py", file=sys.stderr)
        return 1 if changed else 0
    if changed:
        args.readme.write_text(new)
    print(f"{args.readme}: {len(changed)} table(s) rewritten" + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
