"""The `vlsearch` command: a thin argparse layer over the library; no logic of its own.

Every subcommand parses its flags, builds a :class:`vlsearch.config.Config` and calls one
library function. Errors that vlsearch raises on purpose (bad input, missing directories)
are printed as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vlsearch.config import Config, ConfigError, preset
from vlsearch.errors import VlsearchError


def _config(args: argparse.Namespace, default_preset: str | None = None) -> Config:
    name = getattr(args, "preset", None) or default_preset
    config = preset(name) if name else Config()
    if getattr(args, "config", None):
        config = Config.load(args.config, base=config)
    return config


def cmd_prepare(args: argparse.Namespace) -> None:
    from vlsearch.workdir import prepare

    config = _config(args)
    if args.limit is not None:
        config.data.limit = args.limit
    if args.backbone:
        config.images.backbone = args.backbone
    summary = prepare(args.catalog, args.out, config, clicks=args.clicks, progress=not args.quiet)
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
    result = train(args.workdir, config, args.out, resume=args.resume, progress=not args.quiet)
    if result.is_main:
        print(result.format())


def cmd_index(args: argparse.Namespace) -> None:
    from vlsearch.index.builder import build_index

    config = _config(args)
    if args.kind:
        config.index.kind = args.kind
    report = build_index(args.workdir, args.model, args.out, config.index)
    print(report.format() if hasattr(report, "format") else report)


def cmd_update(args: argparse.Namespace) -> None:
    from vlsearch.index.update import update_from_files

    config = _config(args).index if args.config else None  # default: the index's own settings
    report = update_from_files(args.index, args.catalog, args.delete, args.model, config,
                               progress=not args.quiet)
    print(report.format())


def _filters(pairs: list[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for pair in pairs or []:
        field, sep, value = pair.partition("=")
        if not sep or not field.strip() or not value.strip():
            raise VlsearchError(f"--filter {pair!r}: expected FIELD=VALUE, e.g. brand=Nike")
        filters.setdefault(field.strip(), []).append(value.strip())
    return filters


def cmd_search(args: argparse.Namespace) -> None:
    from vlsearch.serving.engine import Engine, search_queries_file

    engine = Engine.open(args.index, _config(args).serve)
    filters = _filters(args.filter)
    channels = args.channels.split(",") if args.channels else None
    if args.queries:
        search_queries_file(
            engine, args.queries, k=args.k, filters=filters, channels=channels,
            out=sys.stdout, fmt=args.format,
        )
        return
    result = engine.search(args.query, k=args.k, filters=filters, channels=channels)
    if args.format == "trec":
        from vlsearch.evaluation import write_trec_run

        hits = result.hits
        write_trec_run(sys.stdout, {"q": [h.product_id for h in hits]}, {"q": [h.score for h in hits]})
    else:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))


def cmd_serve(args: argparse.Namespace) -> None:
    from vlsearch.serving.app import serve

    config = _config(args).serve
    if args.workers is not None:
        config.workers = args.workers
    serve(args.index, host=args.host or config.host, port=args.port if args.port is not None
          else config.port, config=config)


def cmd_eval(args: argparse.Namespace) -> None:
    from vlsearch.evaluation import evaluate_files

    ks = tuple(int(k) for k in args.k.split(","))
    if args.run:
        run = args.run
    else:
        from vlsearch.serving.engine import Engine, search_queries_file

        run = search_queries_file(Engine.open(args.index), args.queries, k=max(ks))
    print(json.dumps(evaluate_files(run, args.queries, args.qrels, ks=ks), indent=2))


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlsearch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="catalog + queries + image features into a work directory")
    p.add_argument("--catalog", required=True, help="Kaggle-layout dir, or CSV/JSONL/Parquet file")
    p.add_argument("--out", required=True, help="work directory to create or update")
    p.add_argument("--limit", type=int, help="use only the first N catalog rows")
    p.add_argument("--clicks", help="real click log (query, product_id, count); default: mocked")
    p.add_argument("--backbone", help="image backbone name (default from config)")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="pre-train the retrieval model on a prepared work directory")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="model directory")
    p.add_argument("--preset", default="minilm", help="tiny | minilm | paper")
    p.add_argument("--config", help="TOML config file applied over the preset")
    p.add_argument("--baseline", help="a named configuration from vlsearch.model.BASELINES "
                   "(uni-encoder, dual-encoder, mixed-encoder, make, full, title-only, ...)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("index", help="export product vectors and build the serving index")
    p.add_argument("--workdir", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="index directory (versions are published into it)")
    p.add_argument("--kind", choices=["flat", "ivf", "hnsw"])
    p.add_argument("--config", help="TOML config file")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("update", help="apply new, changed and deleted products to an index (no rebuild)")
    p.add_argument("--index", required=True, help="index directory (a new version is published into it)")
    p.add_argument("--catalog", help="new and changed products (any catalog format `prepare` reads)")
    p.add_argument("--delete", help="file of product ids to delete, one per line")
    p.add_argument("--model", help="the model the index was built with (default: the index's copy)")
    p.add_argument("--config", help="TOML config file ([index] update_* settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("search", help="search an index from the command line")
    p.add_argument("--index", required=True)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--query")
    group.add_argument("--queries", help="BEIR queries.jsonl")
    p.add_argument("--k", type=_count, default=100)
    p.add_argument("--filter", action="append", default=[], help="FIELD=VALUE (repeatable)")
    p.add_argument("--channels", help="comma-separated: embedding,lexical")
    p.add_argument("--format", choices=["json", "trec"], default="json")
    p.add_argument("--config", help="TOML config file ([serve]: limits)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="HTTP service and web page")
    p.add_argument("--index", required=True)
    p.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    p.add_argument("--port", type=_count, help="bind port (default from config: 8000)")
    p.add_argument("--workers", type=_count,
                   help="worker processes (default: [serve] workers, 0 = one per core)")
    p.add_argument("--config", help="TOML config file ([serve]: workers, limits, timeouts)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="score an index (or a TREC run file) on a BEIR query set")
    p.add_argument("--queries", required=True)
    p.add_argument("--qrels", required=True)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--index")
    source.add_argument("--run", help="TREC run file")
    p.add_argument("--k", default="10,100,500", help="comma-separated cut-offs")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="end to end on the real catalog (or the sample one)")
    p.add_argument("--shared", default="../shared", help="the shared folder with data/")
    p.add_argument("--out", default="work/demo")
    p.add_argument("--limit", type=int, help="catalog rows (default: sized for ~10 minutes)")
    p.add_argument("--steps", type=int, help="training steps of the short run")
    p.set_defaults(func=cmd_demo)
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
