"""The `vlsearch` command: subcommands call the library; bad input is one line on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys

from vlsearch.cli import build_parser, main


def test_every_documented_subcommand_exists():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"prepare", "train", "index", "search", "serve", "eval", "demo"} <= set(sub.choices)


def test_prepare_from_the_command_line_is_idempotent(sample_catalog_dir, tmp_path, capsys):
    args = ["prepare", "--catalog", str(sample_catalog_dir), "--out", str(tmp_path / "w"),
            "--limit", "80", "--backbone", "random-cnn", "--quiet"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "products         80" in first and "brands mined" in first
    assert main(args) == 0
    assert "nothing (up to date)" in capsys.readouterr().out


def test_bad_input_is_a_one_line_error_not_a_traceback(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "vlsearch.cli", "prepare", "--catalog", str(empty),
         "--out", str(tmp_path / "w"), "--backbone", "random-cnn", "--quiet"],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "empty.csv" in proc.stderr


def test_missing_workdir_is_reported(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path / "nope"), "--out", str(tmp_path / "m"),
                 "--preset", "tiny", "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err


def test_unknown_config_key_names_the_file(tmp_path, sample_catalog_dir, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[data]\nsede = 3\n")
    assert main(["prepare", "--catalog", str(sample_catalog_dir), "--out", str(tmp_path / "w"),
                 "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "c.toml" in err and "sede" in err


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return parser, sub.choices


def test_help_has_user_facing_text_for_every_command_and_flag():
    import argparse

    parser, commands = _subcommands()
    top = parser.format_help()
    assert "argparse" not in top and "thin" not in top and "library" not in top
    for name, command in commands.items():
        text = command.format_help()
        assert command.description and "argparse" not in text, name
        flags = [a for a in command._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
        assert {"--config", "--set", "--quiet"} <= {s for a in flags for s in a.option_strings}, name
        for action in flags:
            assert action.help and len(action.help) > 8, (name, action.option_strings)
            if action.default not in (None, False, [], argparse.SUPPRESS) and action.nargs != 0:
                assert "default" in command.formatter_class(name)._get_help_string(action), \
                    (name, action.option_strings)
    assert "(default: 100)" in commands["search"].format_help()  # from ServeConfig.default_k


def test_set_overrides_config_and_names_bad_keys(tmp_path):
    from vlsearch.config import Config, ConfigError, apply_overrides

    config = apply_overrides(Config(), ["train.steps=300", "index.kind=hnsw", "serve.lexical_weight=0.5"])
    assert (config.train.steps, config.index.kind, config.serve.lexical_weight) == (300, "hnsw", 0.5)
    for bad, named in (("train.stpes=3", "stpes"), ("steps=3", "SECTION.KEY"), ("train.steps=many", "int")):
        try:
            apply_overrides(Config(), [bad])
        except ConfigError as exc:
            assert named in str(exc)
        else:
            raise AssertionError(bad)


def test_set_on_the_command_line_reaches_the_command(sample_catalog_dir, tmp_path, capsys):
    assert main(["prepare", "--catalog", str(sample_catalog_dir), "--out", str(tmp_path / "w"),
                 "--set", "data.limit=40", "--backbone", "random-cnn", "--quiet"]) == 0
    assert "products         40" in capsys.readouterr().out
    assert main(["prepare", "--catalog", str(sample_catalog_dir), "--out", str(tmp_path / "w"),
                 "--set", "data.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_one_filter_syntax():
    import pytest

    from vlsearch.errors import InputError
    from vlsearch.filters import parse_filters

    assert parse_filters(["brand=Nike,Puma", "gender=Men", "brand=Nike"]) == {
        "brand": ["Nike", "Puma"], "gender": ["Men"]}
    assert parse_filters(["usage = Smart Casual"]) == {"usage": ["Smart Casual"]}
    for bad in ("brand:Nike", "=Nike", "brand=", "brand=Nike,,Puma"):
        with pytest.raises(InputError, match="brand|FIELD"):
            parse_filters([bad])
