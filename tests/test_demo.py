"""`vlsearch demo` end to end on the sample-catalog fallback: prepare → train → index → search."""

from __future__ import annotations

from vlsearch.demo import run_demo


def test_demo_runs_end_to_end_and_a_second_run_reuses_everything(tmp_path, capsys):
    out = tmp_path / "demo"
    run_demo(shared=tmp_path / "no-shared-here", out=out, limit=120, steps=12, preset_name="tiny")
    first = capsys.readouterr().out
    assert "generated sample catalog" in first
    assert "products         120" in first
    assert "val Recall@" in first  # the short training run reported
    assert "published as current" in first
    assert "> nike shoes" in first and "brand=Nike" in first
    # every printed hit line of the branded query is a Nike product
    block = first.split("> nike shoes", 1)[1].split("\n> ", 1)[0]
    hits = [line for line in block.splitlines()[1:] if line.strip()]
    assert hits and all("Nike" in line for line in hits)

    run_demo(shared=tmp_path / "no-shared-here", out=out, limit=120, steps=12, preset_name="tiny")
    second = capsys.readouterr().out
    assert "nothing (up to date)" in second
    assert "finished model found" in second and "is up to date; skipped" in second
