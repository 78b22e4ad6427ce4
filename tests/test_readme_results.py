"""The README's result tables are the committed benchmark JSON, rendered (benchmarks/readme_results.py)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import readme_results


def test_readme_tables_match_the_committed_results():
    text = (REPO_ROOT / "README.md").read_text()
    names = {m["name"] for m in readme_results.REGION.finditer(text)}
    assert {"quality", "backends", "one-epoch-engine"} <= names
    _, stale = readme_results.render(text)
    assert stale == [], f"stale README tables {stale}: run benchmarks/readme_results.py"


def test_a_changed_result_makes_the_check_fail_and_the_rewrite_fixes_it(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(REPO_ROOT / "benchmarks" / "results", results)
    readme = tmp_path / "README.md"
    shutil.copy(REPO_ROOT / "README.md", readme)
    report = json.loads((results / "backends-44k.json").read_text())
    report["backends"]["faiss-ivf"]["recall_at_100_vs_exact"] = 0.5
    (results / "backends-44k.json").write_text(json.dumps(report))
    args = ["--readme", str(readme), "--results", str(results)]
    assert readme_results.main([*args, "--check"]) == 1
    assert readme_results.main(args) == 0
    assert "| faiss-ivf | " in readme.read_text() and " | 0.500 | " in readme.read_text()
    assert readme_results.main([*args, "--check"]) == 0
