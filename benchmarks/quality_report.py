"""Quality benchmark, the report: ``quality.json`` (rows aggregated over seeds),
``quality.md`` (Table 1, the ablations, the engine matrix) and ``quality_curves.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import common
import numpy as np
from quality_context import Context
from quality_rows import ENGINE_COLUMNS, TABLE_COLUMNS

from vlsearch.io import atomic_write, atomic_write_text


def _aggregate(records: list[dict]) -> tuple[dict, dict]:
    """Mean of each metric over seeds, and the spread (std, min, max) when there are several."""
    mean: dict[str, dict] = {}
    spread: dict[str, dict] = {}
    for key in records[0]["metrics"]:
        mean[key], spread[key] = {}, {}
        for name in records[0]["metrics"][key]:
            values = [r["metrics"][key][name] for r in records if r["metrics"][key][name] is not None]
            mean[key][name] = float(np.mean(values)) if values else None
            if len(values) > 1:
                spread[key][name] = {"std": float(np.std(values, ddof=1)),
                                     "min": float(min(values)), "max": float(max(values))}
    return mean, (spread if len(records) > 1 else {})


def collect(ctx: Context) -> list[dict]:
    rows = []
    for row in ctx.report_rows:
        records = []
        for seed in ctx.seeds_of(row):
            path = ctx.row_file(row, seed)
            if path.exists():
                record = json.loads(path.read_text())
                if record.get("spec_key") == ctx.spec_key(row, seed):
                    records.append(record)
        entry = {**dataclasses.asdict(row), "seeds": [r["seed"] for r in records],
                 "status": "done" if len(records) == len(ctx.seeds_of(row)) else
                 ("partial" if records else "pending"), "runs": records}
        if records:
            entry["metrics"], entry["spread"] = _aggregate(records)
        rows.append(entry)
    return rows


def write_report(ctx: Context, finished: bool = False) -> None:
    rows = collect(ctx)
    a = ctx.args
    if ctx.current is not None:
        ctx.current.update(elapsed_s=round(time.time() - ctx.current["started_epoch"], 1),
                           finished=finished)
    budget = {
        "catalog": "sample (generated, --smoke)" if a.smoke else f"first {a.products} products",
        "products": len(ctx.workdir.products()), "preset": a.preset, "steps": a.steps,
        "batch_size": a.batch_size, "lr": ctx.base.train.lr, "seeds": ctx.seeds,
        "seed_rows": sorted(a.seed_rows) if a.seed_rows else "every trained row",
        "threads": a.threads, "parallel_rows": a.parallel, "eval_queries_per_split": a.eval_queries, "ks": list(a.ks),
        "search": "exact inner product over the whole subset", "backbone": ctx.base.images.backbone,
        **({"colour_levels": ctx.base.images.colour_levels} if ctx.base.images.colour_levels else {}),
        "engine_queries_per_split": a.engine_queries or "all",
        **({"set": list(a.set)} if a.set else {}),
    }
    report = {
        "benchmark": "quality", "complete": all(r["status"] == "done" for r in rows),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "invocations": ctx.invocations,
        "budget": budget, "workdir": str(ctx.workdir.path), "machine": common.machine_info(),
        "rows": rows,
    }
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    common.write_json(ctx.out_dir / "quality.json", report)
    atomic_write_text(ctx.out_dir / "quality.md", markdown(report))
    plot_curves(rows, ctx.out_dir / "quality_curves.png")


def _cell(row: dict, split: str, metric: str) -> str:
    if row["status"] == "pending":
        return "…"
    value = row["metrics"].get(split, {}).get(metric)
    if value is None:
        return "n/a"
    spread = row.get("spread", {}).get(split, {}).get(metric)
    return f"{value:.4f}" + (f" ± {spread['std']:.4f}" if spread else "")


def _runs(invocations: list[dict]) -> list[str]:
    """One entry per command; interrupted attempts of a command folded into the next run."""
    out: list[str] = []
    interrupted = 0
    for i, run in enumerate(invocations):
        following = invocations[i + 1]["command"] if i + 1 < len(invocations) else None
        if not run["finished"] and following == run["command"]:
            interrupted += 1
            continue
        notes = [f"{run['elapsed_s'] / 60:.0f} min"] + ([] if run["finished"] else ["unfinished"])
        if interrupted:
            notes.append(f"after {interrupted} interrupted attempt{'s' * (interrupted > 1)}")
        out.append(f"`{run['command']}` ({', '.join(notes)})")
        interrupted = 0
    return out


def markdown(report: dict) -> str:
    b = report["budget"]
    header = "| Method | " + " | ".join(c[0] for c in TABLE_COLUMNS) + " | train s |"
    rule = "|---|" + "---:|" * (len(TABLE_COLUMNS) + 1)
    settings = ", ".join(f"`{item}`" for item in b.get("set", ()))
    overrides = f"Every vlsearch row trained with {settings}. " if settings else ""
    lines = [
        "# Quality benchmark",
        "",
        (f"{b['catalog']} ({b['products']} products), preset {b['preset']}, {b['steps']} steps "
         f"at batch {b['batch_size']}, lr {b['lr']}, seeds {b['seeds']} "
         f"({b['seed_rows'] if isinstance(b['seed_rows'], str) else ', '.join(b['seed_rows'])}; "
         f"others the first; ± is the std over seeds), {b['threads']} threads "
         f"({b['parallel_rows']} single-process rows at a time, threads split evenly); "
         f"{b['eval_queries_per_split']} queries per split; {b['search']}. "
         + overrides + "R@K: hit rate of the clicked product; Rel: strict attribute relevance; Cate: category "
         "consistency. Columns 1-7 on the test split; held-out: queries about products never "
         "trained on; colour probe: one query (colour, category, gender) per product whose "
         "title names no colour, so only the image shows it."),
        "",
        (f"Status: {'complete' if report['complete'] else 'INCOMPLETE (pending rows marked …)'}; "
         f"updated {report['updated']}; load average {report['machine']['load_average']}."),
        "",
        "Runs: " + "; ".join(_runs(report["invocations"])) + ".",
    ]
    for table, title in (("table1", "Table 1: methods"), ("ablation", "Ablations of full")):
        lines += ["", f"## {title}", "", header, rule]
        for row in report["rows"]:
            if row["table"] != table and not (table == "ablation" and row["name"] == "full"):
                continue
            walls = [r["train"]["wall_s"] for r in row.get("runs", [])]
            train_s = f"{np.mean(walls):.0f}" if walls else "…"
            cells = " | ".join(_cell(row, split, metric) for _, split, metric in TABLE_COLUMNS)
            lines.append(f"| {row['label']} | {cells} | {train_s} |")
    lines += _engine_table(report["rows"])
    return "\n".join(lines) + "\n"


ENGINE_SETTINGS = (("alone", None), ("+ QU", "embedding+qu"), ("+ BM25", "both"), ("+ BM25 + QU", "both+qu"))


def engine_value(row: dict, setting: str | None, split: str, metric: str) -> float | None:
    """A report row's ``metric`` on ``split`` through the serving engine under ``setting``
    (None: the row's own channel alone), the mean over its seeds; None where not measured.
    The BM25 row has only its lexical channel alone and with query understanding."""
    if setting is None:
        return row["metrics"].get(split, {}).get(metric)
    if row["kind"] == "bm25":
        setting = {"embedding+qu": "lexical+qu"}.get(setting)
    values = [r["engine"][setting][split][metric] for r in row.get("runs", [])
              if setting in r.get("engine", {}) and r["engine"][setting][split].get(metric) is not None]
    return float(np.mean(values)) if values else None


def _engine_table(rows: list[dict]) -> list[str]:
    """The serving engine over each row's vectors: its own channel alone (the main table's
    exact search), with query-understanding constraints (QU), fused with BM25, and both."""
    header = ("| Method | " + " | ".join(f"{h} {name}" for h, _, _ in ENGINE_COLUMNS for name, _ in ENGINE_SETTINGS)
              + " |")
    lines = ["", "## Channels x query-understanding constraints (serving engine, exact search)", "",
             ("Each row's dense channel alone (as above), with the constraints query understanding "
              "derives from the query (QU, with the engine's relaxation), fused with the BM25 "
              "channel, and both; the BM25 row is the lexical channel alone and with QU."), "",
             header, "|---|" + "---:|" * (len(ENGINE_COLUMNS) * len(ENGINE_SETTINGS))]
    for row in rows:
        if not any("engine" in r for r in row.get("runs", [])):
            continue
        values = (engine_value(row, setting, split, metric)
                  for _, split, metric in ENGINE_COLUMNS for _, setting in ENGINE_SETTINGS)
        lines.append(f"| {row['label']} | " + " | ".join("—" if v is None else f"{v:.4f}" for v in values) + " |")
    return lines


def plot_curves(rows: list[dict], path: Path) -> None:
    """Total and QPM training loss against step for the Table-1 rows (first seed)."""
    # matplotlib is heavy to import and only needed here, once per report
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    drawn = 0
    for row in rows:
        runs = row.get("runs") or []
        curve = [p for p in (runs[0]["train"].get("curve") or []) if "loss" in p] if runs else []
        if row["table"] != "table1" or not curve:
            continue
        steps = [p["step"] for p in curve]
        axes[0].plot(steps, [p["loss"] for p in curve], label=row["name"])
        qpm = [(p["step"], p["loss_qpm"]) for p in curve if p.get("loss_qpm") is not None]
        if qpm:
            axes[1].plot(*zip(*qpm), label=row["name"])
        drawn += 1
    for ax, title in zip(axes, ("total loss (weighted objectives)", "QPM (matching) loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        if drawn:
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))

