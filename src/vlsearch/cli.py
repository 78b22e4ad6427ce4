"""The `vlsearch` command line: each subcommand reads its flags into a Config and calls one
library function.

Every subcommand takes ``--config FILE`` (TOML), ``--set SECTION.KEY=VALUE`` (repeatable,
applied after the file) and ``--quiet``; a flag of the subcommand wins over both. Errors that
vlsearch raises on purpose (bad input, missing directories) are printed as one line on
stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from vlsearch.config import Config, ConfigError, apply_overrides, preset
from vlsearch.demo import DemoConfig
from vlsearch.errors import VlsearchError
from vlsearch.evaluation import DEFAULT_KS
from vlsearch.filters import FILTER_EXAMPLE, parse_filters

DESCRIPTION = (
    "Text-to-multimodal product search for e-commerce catalogs: prepare a catalog, train the "
    "retrieval model, build an index, then search, serve or evaluate it."
)
EPILOG = """\
a typical run:
  vlsearch prepare --catalog CATALOG --out work/w
  vlsearch train   --workdir work/w --out work/model
  vlsearch index   --workdir work/w --model work/model --out work/index
  vlsearch search  --index work/index --query "nike shoes"
  vlsearch serve   --index work/index
  vlsearch eval    --index work/index --queries work/w/eval/test/queries.jsonl \\
                   --qrels work/w/eval/test/qrels.tsv

Run `vlsearch COMMAND --help` for the flags of one command."""
HELP_WIDTH = 88  # columns the command descriptions are wrapped to
DEFAULTS = Config()  # shown in help texts as the defaults of flags that fall back to the config


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and appends ``(default: X)`` to flags that have one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or "default:" in text or default in (None, False, [], argparse.SUPPRESS):
            return text
        if action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


def _common() -> argparse.ArgumentParser:
    """Flags every subcommand takes."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration")
    group.add_argument("--config", metavar="FILE",
                       help="TOML file with [data], [images], [model], [train], [index], [serve] sections")
    group.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one setting, e.g. train.steps=300 or serve.default_k=20 (repeatable; "
                            "applied after --config)")
    group.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
    return common


def _config(args: argparse.Namespace, default_preset: str | None = None) -> Config:
    """Preset (if any), then ``--config``, then ``--set``."""
    name = getattr(args, "preset", None) or default_preset
    config = preset(name) if name else Config()
    if getattr(args, "config", None):
        config = Config.load(args.config, base=config)
    return apply_overrides(config, getattr(args, "set", []))


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _open_engine(args: argparse.Namespace, config: Config):
    from vlsearch.progress import stage
    from vlsearch.serving.engine import Engine

    with stage(f"opening index {args.index} (loading the model)", _progress(args)):
        return Engine.open(args.index, config.serve)


# --- commands ---------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> None:
    from vlsearch.workdir import prepare

    config = _config(args)
    if args.limit is not None:
        config.data.limit = args.limit
    if args.backbone:
        config.images.backbone = args.backbone
    summary = prepare(args.catalog, args.out, config, clicks=args.clicks, progress=_progress(args))
    print(summary.format())


def cmd_train(args: argparse.Namespace) -> None:
    from vlsearch.training import train

    config = _config(args, default_preset="minilm")
    if args.baseline:
        from vlsearch.model import apply_baseline

        config = apply_baseline(config, args.baseline)
    if args.steps is not None:
        config.train.steps = args.steps
    if args.batch_size is not None:
        config.train.batch_size = args.batch_size
    result = train(args.workdir, config, args.out, resume=args.resume, progress=_progress(args))
    if result.is_main:
        print(result.format())


def cmd_index(args: argparse.Namespace) -> None:
    from vlsearch.index.builder import build_index

    config = _config(args)
    if args.kind:
        config.index.kind = args.kind
    report = build_index(args.workdir, args.model, args.out, config.index, progress=_progress(args))
    print(report.format() if hasattr(report, "format") else report)


def cmd_update(args: argparse.Namespace) -> None:
    from vlsearch.index.update_delta import update_from_files

    # default: the index's own settings; --config / --set override them
    config = _config(args).index if (args.config or args.set) else None
    report = update_from_files(args.index, args.catalog, args.delete, args.model, config,
                               progress=_progress(args), workdir=args.workdir)
    print(report.format())


def cmd_search(args: argparse.Namespace) -> None:
    from vlsearch.serving.batch import search_queries_file

    config = _config(args)
    filters = parse_filters(args.filter, "--filter")
    channels = args.channels.split(",") if args.channels else None
    k = args.k if args.k is not None else config.serve.default_k
    engine = _open_engine(args, config)
    if args.queries:
        search_queries_file(engine, args.queries, k=k, filters=filters, channels=channels,
                            out=sys.stdout, fmt=args.format)
        return
    result = engine.search(args.query, k=k, filters=filters, channels=channels)
    if args.format == "trec":
        from vlsearch.evaluation import write_trec_run

        hits = result.hits
        write_trec_run(sys.stdout, {"q": [h.product_id for h in hits]}, {"q": [h.score for h in hits]})
    else:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))


def cmd_serve(args: argparse.Namespace) -> None:
    from vlsearch.serving.app import serve

    config = _config(args)
    if args.workers is not None:
        config.serve.workers = args.workers
    host = args.host or config.serve.host
    port = args.port if args.port is not None else config.serve.port
    serve(args.index, host=host, port=port, config=config.serve)


def cmd_eval(args: argparse.Namespace) -> None:
    from vlsearch.evaluation import evaluate_files, evaluate_index, format_report

    config = _config(args)
    try:
        ks = tuple(int(k) for k in args.k.split(","))
    except ValueError:
        raise VlsearchError(f"--k {args.k!r}: expected comma-separated integers, e.g. 10,100") from None
    if args.run:
        report = evaluate_files(args.run, args.queries, args.qrels, ks=ks)
    else:
        report = evaluate_index(args.index, args.queries, args.qrels, ks=ks, config=config.serve,
                                progress=_progress(args))
    if args.out:
        from vlsearch.io import atomic_write_json

        atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2) if args.format == "json" else format_report(report))


def cmd_export(args: argparse.Namespace) -> None:
    from vlsearch.progress import stage

    try:
        from vlsearch.exports import export_model
    except ImportError as exc:
        raise VlsearchError(f"export needs sentence-transformers ({exc}); install it with "
                            "`pip install sentence-transformers`") from None
    with stage(f"exporting the {args.tower} tower of {args.model}", _progress(args)):
        out = export_model(args.model, args.out, args.format, args.tower)
    print(f"wrote {out} (load it with sentence_transformers.SentenceTransformer({str(out)!r}, "
          "trust_remote_code=True))")


def cmd_demo(args: argparse.Namespace) -> None:
    from vlsearch.demo import run_demo

    run_demo(shared=Path(args.shared), out=Path(args.out), limit=args.limit, steps=args.steps)


def _count(text: str) -> int:
    """A whole number in plain digits ("+5", " 5", "1_000" are refused, as over HTTP)."""
    from vlsearch.validation import parse_digits

    try:
        return parse_digits(text, "value")
    except VlsearchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- parser -----------------------------------------------------------------------------


Command = Callable[[str, str, str], argparse.ArgumentParser]  # (name, summary, description) -> subparser
WORKDIR_HELP = "work directory written by `vlsearch prepare`"
MODEL_HELP = "model directory written by `vlsearch train`"
INDEX_HELP = "index directory written by `vlsearch index`"


def _add_prepare(command: Command) -> None:
    d = DEFAULTS
    p = command("prepare", "read a catalog into a work directory (products, queries, image features)",
                "Load the catalog, mine brands, write the training click log (a real one, or queries mocked "
                "from product attributes), the BEIR evaluation splits and the cached image features. "
                "Idempotent and resumable: a second run only does what changed.")
    p.add_argument("--catalog", required=True, metavar="PATH",
                   help="a folder with styles.csv + images/ (Kaggle fashion layout), or a CSV/JSONL/Parquet file")
    p.add_argument("--out", required=True, metavar="DIR", help="work directory to create or update")
    p.add_argument("--limit", type=_count, metavar="N", help="use only the first N catalog rows (default: all)")
    p.add_argument("--clicks", metavar="FILE",
                   help="click log with columns query, product_id, count (default: mock queries from the catalog)")
    p.add_argument("--backbone", metavar="NAME",
                   help=f"image model for the patch features (default: {d.images.backbone})")
    p.set_defaults(func=cmd_prepare)


def _add_train(command: Command) -> None:
    d = DEFAULTS
    p = command("train", "train the retrieval model on a work directory",
                "Pre-train the query and product towers (MAKE + Delving objectives) on the prepared click log. "
                "Writes checkpoints, metrics.jsonl, metrics.png and the final model into --out. "
                "Under `torchrun --nproc-per-node N` the processes share cross-device negatives.")
    p.add_argument("--workdir", required=True, metavar="DIR", help=WORKDIR_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--preset", default="minilm", choices=["tiny", "minilm", "paper"],
                   help="model size: tiny (smoke tests), minilm (CPU), paper (the papers' size, for GPUs)")
    p.add_argument("--baseline", metavar="NAME",
                   help="train a named baseline or ablation instead of the full model (vlsearch.model."
                        "BASELINES: e.g. make, make+cdns, dual-encoder+ma, dual-encoder+tia, title-only, "
                        "no-ke, zero-shot-minilm; an unknown name lists them all)")
    p.add_argument("--steps", type=_count, metavar="N",
                   help=f"optimiser steps (default: {d.train.steps}, or the preset's)")
    p.add_argument("--batch-size", type=_count, metavar="N",
                   help=f"(query, product) pairs per step (default: {d.train.batch_size}, or the preset's)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.set_defaults(func=cmd_train)


def _add_index(command: Command) -> None:
    d = DEFAULTS
    p = command("index", "build the search index from a trained model",
                "Encode every product, build the vector index, the table of answers to logged queries and "
                "the keyword index, then publish the new version atomically (a running server switches to it).")
    p.add_argument("--workdir", required=True, metavar="DIR", help=WORKDIR_HELP)
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="index directory (new versions are published into it)")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"],
                   help=f"vector index: flat (exact), ivf or hnsw (approximate) (default: {d.index.kind})")
    p.set_defaults(func=cmd_index)


def _add_update(command: Command) -> None:
    p = command("update", "apply new, changed and deleted products to an index (no rebuild)",
                "Encode the new and changed products with the index's model, drop the deleted ones and publish "
                "a new index version (a running server switches to it). Index settings default to the ones the "
                "index was built with.")
    p.add_argument("--index", required=True, metavar="DIR", help="index directory (a new version is published into it)")
    p.add_argument("--catalog", metavar="PATH", help="new and changed products (any catalog format `prepare` reads)")
    p.add_argument("--delete", metavar="FILE", help="file of product ids to delete, one per line")
    p.add_argument("--model", metavar="DIR", help="the model the index was built with (default: the index's copy)")
    p.add_argument("--workdir", metavar="DIR", help="work directory whose image feature cache unchanged images "
                   "reuse (default: the one the index was built from)")
    p.set_defaults(func=cmd_update)


def _add_search(command: Command) -> None:
    d = DEFAULTS
    p = command("search", "search an index from the command line",
                "Search one query (--query) or every query of a BEIR queries.jsonl (--queries) and print the "
                "results as JSON or as TREC run lines.")
    p.add_argument("--index", required=True, metavar="DIR", help=INDEX_HELP)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--query", metavar="TEXT", help="one query, e.g. \"nike shoes\"")
    group.add_argument("--queries", metavar="FILE", help="BEIR queries.jsonl: search every query in it")
    p.add_argument("--k", type=_count, metavar="N", help=f"results per query (default: {d.serve.default_k})")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"only products with this attribute, e.g. {FILTER_EXAMPLE} (repeatable: AND across "
                        "fields; commas: OR within a field)")
    p.add_argument("--channels", metavar="LIST",
                   help=f"comma-separated retrieval channels (default: {','.join(d.serve.channels)})")
    p.add_argument("--format", choices=["json", "trec"], default="json", help="output format")
    p.set_defaults(func=cmd_search)


def _add_serve(command: Command) -> None:
    d = DEFAULTS
    p = command("serve", "run the HTTP service and the web page",
                "Serve /search, /products/{id}, /health, the OpenAPI docs at /docs and a web page at /. "
                "Settings of the [serve] config section apply.")
    p.add_argument("--index", required=True, metavar="DIR", help=INDEX_HELP)
    p.add_argument("--host", metavar="ADDR", help=f"bind address (default: {d.serve.host})")
    p.add_argument("--port", type=_count, metavar="N", help=f"bind port (default: {d.serve.port})")
    p.add_argument("--workers", type=_count, metavar="N",
                   help=f"worker processes, each with its own copy of the model (default: {d.serve.workers}; "
                        "0 = one per CPU core)")
    p.set_defaults(func=cmd_serve)


def _add_eval(command: Command) -> None:
    p = command("eval", "score an index (or a TREC run file) on a BEIR query set",
                "Recall@K (the papers' hit rate of the clicked product), the standard trec_eval measures "
                "(recall, nDCG with linear gain, MRR), set recall, category consistency and strict relevance, "
                "overall, on held-out products and on queries whose colour only the image shows.")
    p.add_argument("--queries", required=True, metavar="FILE", help="BEIR queries.jsonl (e.g. W/eval/test/queries.jsonl)")
    p.add_argument("--qrels", required=True, metavar="FILE", help="BEIR qrels.tsv (e.g. W/eval/test/qrels.tsv)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", metavar="DIR", help="search this index (products and held-out split come from it)")
    source.add_argument("--run", metavar="FILE", help="score a TREC run file instead of searching")
    p.add_argument("--k", default=",".join(map(str, DEFAULT_KS)), metavar="LIST", help="comma-separated cut-offs")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    p.add_argument("--out", metavar="FILE", help="also write the full report as JSON to FILE")
    p.set_defaults(func=cmd_eval)


def _add_export(command: Command) -> None:
    p = command("export", "write a trained model in a format other tools load",
                "Write the query tower (or the title encoder of the product tower) as a sentence-transformers "
                "model directory: SentenceTransformer(OUT, trust_remote_code=True).encode(texts) gives the vectors "
                "vlsearch computes, term sorting and keyword enhancement included (the loading side needs "
                "vlsearch installed). "
                "Its BERT folder opens with transformers' AutoModel, AutoConfig and AutoTokenizer.")
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write")
    p.add_argument("--format", default="sentence-transformers", choices=["sentence-transformers"],
                   help="export format")
    p.add_argument("--tower", default="query", choices=["query", "title"],
                   help="query: encodes search queries; title: encodes product titles (the whole product "
                        "vector for a title-only model, the title view before Modal Adaptation otherwise)")
    p.set_defaults(func=cmd_export)


def _add_demo(command: Command) -> None:
    demo = DemoConfig()
    p = command("demo", "prepare, train, index and search end to end",
                "Runs every stage on the real catalog in SHARED/data/fashion-products (a slice sized for about "
                "ten minutes), or on a generated sample catalog when it is absent, then shows example searches.")
    p.add_argument("--shared", default="../shared", metavar="DIR", help="folder holding data/fashion-products")
    p.add_argument("--out", default="work/demo", metavar="DIR", help="where the demo writes its files")
    p.add_argument("--limit", type=_count, metavar="N",
                   help=f"rows of the real catalog (default: {demo.real_limit})")
    p.add_argument("--steps", type=_count, metavar="N", help=f"training steps (default: {demo.steps})")
    p.set_defaults(func=cmd_demo)


COMMANDS = (_add_prepare, _add_train, _add_index, _add_update, _add_search, _add_serve, _add_eval, _add_export, _add_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlsearch", description=textwrap.fill(DESCRIPTION, HELP_WIDTH),
                                     epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=textwrap.fill(description, HELP_WIDTH),
                              parents=[common], formatter_class=HelpFormatter)

    for add in COMMANDS:
        add(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (VlsearchError, ConfigError) as exc:
        print(f"vlsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vlsearch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
