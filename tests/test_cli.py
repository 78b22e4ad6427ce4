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
