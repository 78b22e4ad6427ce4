"""Smoke runs of the benchmarks (sample catalog, tiny preset, random-cnn backbone): every row,
section and field is written, and the values are sane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from vlsearch.config import ConfigError

BENCHMARKS = REPO_ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import quality
import speed

pytestmark = pytest.mark.slow


def _run(script: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke", "--out", str(out), *extra],
        check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def quality_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quality")
    _run("quality.py", out)
    return out


@pytest.fixture(scope="module")
def speed_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("speed")
    _run("speed.py", out)
    return out


def _in_unit(value) -> bool:
    return value is None or 0.0 <= value <= 1.0


def test_quality_has_every_row_with_metrics(quality_out):
    report = json.loads((quality_out / "quality.json").read_text())
    assert report["complete"] and report["invocations"][-1]["finished"]
    assert [r["name"] for r in report["rows"]] == [r.name for r in quality.ROWS if r.smoke]
    assert report["budget"]["steps"] == quality.DEFAULTS.smoke_steps
    assert report["machine"]["cpus"] >= 1 and "1min" in report["machine"]["load_average"]
    for row in report["rows"]:
        assert row["status"] == "done", row["name"]
        run = row["runs"][0]
        for key in ("config_overrides", "load_average_before", "load_average_after", "wall_s",
                    "eval_wall_s", "queries", "corpus"):
            assert key in run, (row["name"], key)
        assert set(row["metrics"]) == {"test", "colour_only_in_image", "heldout",
                                       "colour_probe", "colour_probe_heldout", "single_attribute"}
        # the serving engine's channels x constraints matrix over the row's vectors
        settings = quality.ENGINE_LEXICAL if row["kind"] == "bm25" else quality.ENGINE_DENSE
        assert ("engine" in run) == (row["name"] in quality.DEFAULTS.smoke_engine_rows)
        for metrics in run.get("engine", {}).values():
            assert set(run["engine"]) == set(settings), row["name"]
            assert _in_unit(metrics["test"]["recall@100"]) and "single_attribute" in metrics
        for split, metrics in row["metrics"].items():
            for k in report["budget"]["ks"]:
                for name in ("recall", "set_recall", "ndcg", "category_consistency",
                             "strict_relevance"):
                    assert f"{name}@{k}" in metrics, (row["name"], split, name)
                    assert _in_unit(metrics[f"{name}@{k}"]), (row["name"], split, name)
        assert row["metrics"]["test"]["recall@10"] <= row["metrics"]["test"]["recall@500"]
        assert run["queries"]["test"] > 0 and run["queries"]["heldout"] > 0
        assert run["queries"]["colour_probe"] > run["queries"]["colour_probe_heldout"] > 0


def test_quality_rows_trained_as_configured(quality_out):
    rows = {r["name"]: r for r in json.loads((quality_out / "quality.json").read_text())["rows"]}
    untrained = ("bm25", "zero-shot-minilm", "st-zero-shot-attrs")
    for name in untrained:
        assert rows[name]["runs"][0]["train"]["steps"] == 0
    for name, row in rows.items():
        run = row["runs"][0]
        assert run["processes"] == quality.ROW_BY_NAME[name].processes
        if name in untrained:
            continue
        train = run["train"]
        assert train["steps"] == quality.DEFAULTS.smoke_steps and train["wall_s"] > 0
        last = [p for p in train["curve"] if "loss" in p][-1]
        assert last["loss"] > 0
        if quality.ROW_BY_NAME[name].kind == "st":  # the sentence-transformers fine-tunes
            assert run["config_overrides"]["sentence_transformers"]["lr"] > 0
            assert train["samples_per_s"] > 0
            continue
        baseline = run["config_overrides"]["baseline"]["train"]
        assert (last["neg_memory"] > 0) == baseline.get("memory_bank", False), name
        assert (last["neg_cross_device"] > 0) == baseline.get("cross_device", False), name
        assert run["batch_per_process"] * run["processes"] == 32
    assert set(rows["make"]["runs"][0]["modal_weights"]) == {"title", "image", "fused"}
    assert set(rows["title-only"]["runs"][0]["modal_weights"]) == {"title"}
    assert rows["make+attrs"]["runs"][0]["config_overrides"]["baseline"]["model"]["product_text"]
    # the fine-tune moved the model: its numbers differ from the zero-shot encoder's
    assert rows["st-finetune-attrs"]["runs"][0]["train"]["curve"][-1]["loss"] > 0


def test_quality_markdown_and_curves(quality_out):
    text = (quality_out / "quality.md").read_text()
    for row in quality.ROWS:
        assert (f"| {row.label} |" in text) == row.smoke
    assert "## Channels x query-understanding constraints" in text
    assert "Status: complete" in text
    assert (quality_out / "quality_curves.png").stat().st_size > 10_000


def test_quality_rerun_reuses_finished_rows_in_parallel_workers(quality_out):
    rows = quality_out / "work" / "quality" / "rows"
    files = [rows / "bm25-seed13.json", rows / "make-seed13.json"]
    before = [f.stat().st_mtime_ns for f in files]
    result = _run("quality.py", quality_out, "--rows", "bm25,make", "--parallel", "2")
    assert result.stderr.count("reusing") == 2
    assert [f.stat().st_mtime_ns for f in files] == before
    report = json.loads((quality_out / "quality.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["bm25", "make"] and report["complete"]


def test_quality_parallel_workers_split_the_seeds_of_one_row(tmp_path):
    result = _run("quality.py", tmp_path, "--rows", "dual-encoder+tia", "--seeds", "2", "--parallel", "2")
    assert "dual-encoder+tia seed 13: start" in result.stderr and "dual-encoder+tia seed 14: start" in result.stderr
    report = json.loads((tmp_path / "quality.json").read_text())
    [row] = report["rows"]
    assert sorted(run["seed"] for run in row["runs"]) == [13, 14] and row["status"] == "done"
    assert all(run["train"]["steps"] > 0 for run in row["runs"])
    curves = [json.loads(line) for line in Path(row["runs"][0]["train"]["metrics_jsonl"]).read_text().splitlines()]
    assert any(c.get("loss_tia") for c in curves)  # the alignment term was trained and logged


def test_quality_fresh_work_dir_restores_finished_rows_from_the_report(quality_out):
    """A run continued on a new machine (work dir gone, committed report kept) reuses the
    report's finished rows instead of training them again (runs after the reuse test)."""
    row_file = quality_out / "work" / "quality" / "rows" / "bm25-seed13.json"
    saved = json.loads(row_file.read_text())
    row_file.unlink()
    result = _run("quality.py", quality_out, "--rows", "bm25,make")
    assert result.stderr.count("reusing") == 2
    assert json.loads(row_file.read_text()) == saved


def test_quality_changed_test_bed_scores_saved_models_again(quality_out):
    """A new cut-off changes the test bed, not the models: trained rows are scored again
    from their saved models, with their training record kept (runs after the reuse test)."""
    before = json.loads((quality_out / "work" / "quality" / "rows" / "make-seed13.json").read_text())
    result = _run("quality.py", quality_out, "--rows", "make", "--ks", "10,50")
    assert "make seed 13: scoring the saved model" in result.stderr
    assert "start (1 process(es))" not in result.stderr
    after = json.loads((quality_out / "work" / "quality" / "rows" / "make-seed13.json").read_text())
    assert after["train"] == before["train"] and after["train_key"] == before["train_key"]
    assert after["spec_key"] != before["spec_key"]
    assert "recall@50" in after["metrics"]["test"] and "recall@500" not in after["metrics"]["test"]
    assert after["metrics"]["test"]["recall@10"] == before["metrics"]["test"]["recall@10"]


def test_speed_has_every_section(speed_out):
    report = json.loads((speed_out / "speed.json").read_text())
    assert report["errors"] == {}
    assert set(report["sections"]) == set(speed.SECTIONS)
    for section in report["sections"].values():
        assert "load_average_before" in section and section["section_wall_s"] >= 0
    assert (speed_out / "speed_nprobe.png").stat().st_size > 10_000


def test_speed_figures_are_sane(speed_out):
    s = json.loads((speed_out / "speed.json").read_text())["sections"]
    assert s["compute"]["gflops"]["1"]["median"] > 0
    t = s["training"]
    assert t["samples_per_s_median"] > 0 and t["flops"]["counted_flops_per_sample"] > 0
    assert t["achieved_gflops_counted"] > 0 and 0 < t["share_of_matmul_peak_counted"]
    e = s["encoding"]
    assert e["sentence_transformers_titles"]["ratio_to_sentence_transformers"] == 1.0
    for name in ("ours_titles_and_cached_patches", "ours_titles_and_images_via_cnn",
                 "ours_titles_only_minilm"):
        assert e[name]["median_per_s"] > 0
    search = s["search"]
    assert search["qid_hit"]["embedding_paths"] == {"qid": search["qid_hit"]["n"]}
    assert set(search["encode_ann"]["embedding_paths"]) == {"ann"}
    assert set(search["encode_ann_brand_filter"]["embedding_paths"]) <= {"ann+selector", "exact"}
    assert set(search["encode_ann_gender_filter"]["embedding_paths"]) <= {"ann+postfilter",
                                                                          "ann+selector", "exact"}
    for case in ("qid_hit", "encode_ann", "engine_default_unlogged"):
        assert 0 < search[case]["p50_ms"] <= search[case]["p99_ms"]
    for figures in (search["ann_vs_exact"], s["synthetic"]):
        assert _in_unit(figures["ann"]["recall_at_k_vs_exact"])
        recalls = [p["recall_at_k"] for p in figures["nprobe_sweep"]]
        assert recalls == sorted(recalls) and recalls[-1] == pytest.approx(1.0)
    assert s["synthetic"]["n"] == speed.SMOKE.synthetic_n
    build = s["build"]
    assert set(build["core_parts"]) <= set(build["bytes_per_product"])
    assert build["bytes_per_product_core"] > build["bytes_per_product"]["vectors"] > 0
    http = s["http"]
    assert http["errors"] == 0 and http["requests"] == speed.SMOKE.http_requests
    stores = s["backends"]["backends"]  # FAISS vs milvus-lite, side by side
    assert any(n.startswith("faiss-") for n in stores) and {"milvus-lite-flat", "milvus-lite-hnsw"} <= set(stores)
    assert stores["milvus-lite-flat"]["recall_at_100_vs_exact"] == pytest.approx(1.0)
    for figures in stores.values():
        for case in ("encode_ann_ms", "encode_ann_brand_ms", "encode_ann_half_ms"):
            assert 0 < figures[case]["p50_ms"] <= figures[case]["p99_ms"]
    share = s["backends"]["filter_share"]
    assert 0 < share["brand"] < 0.1 and 0.3 < share["half"] < 0.7
    assert http["qps"] > 0 and http["latency"]["p50_ms"] <= http["latency"]["p99_ms"]
    serving = s["serving"]
    assert serving["encoder"] == "OnnxQueryEncoder" and serving["parity"]["cosine_min"] >= 0.9999
    assert serving["cases"]["qid_hit_default"]["qid_hit_share"] == 1.0
    assert serving["cases"]["miss"]["embedding_paths"] == {"ann": serving["cases"]["miss"]["n"]}
    assert set(serving["targets"]) == {"qid_hit_default", "miss", "miss_brand_filter", "miss_half_filter",
                                       "encoder_ratio"}
    wrk = s["http_wrk"]
    for name in ("bare_fastapi", "logged", "miss"):
        assert wrk["workloads"][name]["errors"] == 0 and wrk["workloads"][name]["qps"] > 0, name


def test_speed_rerun_of_one_section_keeps_the_others(speed_out):
    before = json.loads((speed_out / "speed.json").read_text())
    _run("speed.py", speed_out, "--sections", "compute", "--keep-sections")
    after = json.loads((speed_out / "speed.json").read_text())
    assert set(after["sections"]) == set(before["sections"]) and after["errors"] == {}
    for name in set(before["sections"]) - {"compute"}:
        assert after["sections"][name] == before["sections"][name]  # kept as measured
    assert after["started"] == before["started"] and after["reruns"][-1]["sections"] == ["compute"]
    assert after["reruns"][-1]["elapsed_s"] >= 0


def test_quality_train_key_follows_model_settings_only(quality_out):
    """Serving and index settings never retrain a row; a training setting does."""
    ctx = quality.build_context(quality.parse_args(["--smoke", "--out", str(quality_out)]), prepare=False)
    row = quality.ROW_BY_NAME["make"]
    before = ctx.train_key(row, 13), ctx.spec_key(row, 13)
    ctx.base.serve.relax_below += 5
    ctx.base.index.nlist = 7
    assert (ctx.train_key(row, 13), ctx.spec_key(row, 13)) == before
    ctx.base.train.weight_decay += 0.1
    assert ctx.train_key(row, 13) != before[0] and ctx.train_key(row, 14) != ctx.train_key(row, 13)


def test_quality_set_reaches_vlsearch_rows_and_their_reuse_key(quality_out):
    """``--set`` changes every vlsearch row's config (after its baseline) and so its train key;
    BM25 and sentence-transformers rows ignore it; a bad override names itself."""
    def context(*extra):
        args = quality.parse_args(["--smoke", "--out", str(quality_out), *extra])
        return quality.build_context(args, prepare=False)
    plain, bf16 = context(), context("--set", "train.cpu_bf16=true", "--set", "train.w_tia=0.25")
    make, bm25 = quality.ROW_BY_NAME["make"], quality.ROW_BY_NAME["bm25"]
    config, overrides = bf16.row_config(make, 13)
    assert config.train.cpu_bf16 and config.train.w_tia == 0.25 and not plain.row_config(make, 13)[0].train.cpu_bf16
    assert config.model.architecture == "make"  # the baseline still applies
    assert overrides["set"] == ["train.cpu_bf16=true", "train.w_tia=0.25"]
    assert bf16.train_key(make, 13) != plain.train_key(make, 13)
    assert bf16.train_key(bm25, 13) == plain.train_key(bm25, 13)
    assert bf16.row_file(make, 13) != plain.row_file(make, 13)  # side by side in one work folder
    with pytest.raises(ConfigError, match="train.no_such_field"):
        context("--set", "train.no_such_field=1").row_config(make, 13)


def test_quality_report_folds_interrupted_attempts_into_the_run_that_finished():
    runs = [("a", 600, True), ("b", 0, False), ("b", 60, False), ("b", 1260, True), ("c", 120, False)]
    invocations = [{"command": c, "elapsed_s": s, "finished": f} for c, s, f in runs]
    assert quality._runs(invocations) == [
        "`a` (10 min)", "`b` (21 min, after 2 interrupted attempts)", "`c` (2 min, unfinished)"]


@pytest.fixture(scope="module")
def smoke_work(tmp_path_factory) -> Path:
    """One work folder for the scale and live-update smoke runs (the sample index is built once)."""
    return tmp_path_factory.mktemp("smoke-work")


def test_scale_smoke_writes_every_stage(tmp_path, smoke_work):
    """benchmarks/scale.py on the sample index: synthetic catalog, exact truth, IVF-Flat sweep,
    end-to-end cases with filters, IVF-PQ."""
    _run("scale.py", tmp_path / "out", "--work", str(smoke_work))
    report = json.loads((tmp_path / "out" / "scale.json").read_text())
    stages = report["stages"]
    assert set(stages) >= {"catalog", "exact", "ivf_flat_build", "ivf_flat_nprobe_sweep", "ivf_flat_end_to_end",
                           "ivf_pq", "milvus"}
    assert stages["catalog"]["n"] == 20_000 and 0 < stages["catalog"]["filter_shares"]["brand"] < 0.05 + 1e-9
    sweep = stages["ivf_flat_nprobe_sweep"]["rows"]
    recalls = [r["recall_at_k"] for r in sweep]
    assert recalls == sorted(recalls) and all(_in_unit(r) for r in recalls)  # more probes, more recall
    for case in ("none", "brand", "gender"):
        e2e = stages["ivf_flat_end_to_end"]["cases"][case]
        assert e2e["encode_plus_ann"]["p99_ms"] >= e2e["encode_plus_ann"]["p50_ms"] > 0
        assert _in_unit(e2e["recall_at_k_vs_exact"])
    assert stages["ivf_pq"]["bytes_per_product"] < stages["ivf_flat_build"]["bytes_per_product"]


def test_live_update_smoke_applies_the_delta_under_a_search_loop(tmp_path, smoke_work):
    _run("live_update.py", tmp_path / "out", "--work", str(smoke_work))
    report = json.loads((tmp_path / "out" / "live_update.json").read_text())
    assert report["search_loop"]["errors"] == 0 and report["search_loop"]["searches"] > 0
    assert report["visible"] == {"changed_with_wrong_title": 0, "changed_not_found_by_new_title": 0,
                                 "deleted_still_returned": 0, "examples": []}
    assert report["version"] != report["base_version"]
    assert report["update"]["products_per_s"] > 0 and report["export_same_products"]["products"] == 30


def test_train_speed_smoke_reports_every_variant_against_the_default(tmp_path):
    import train_speed

    _run("train_speed.py", tmp_path)
    report = json.loads((tmp_path / "train_speed.json").read_text())
    assert set(report["variants"]) == set(train_speed.VARIANTS)
    for name, variant in report["variants"].items():
        assert variant["samples_per_s_median"] > 0 and variant["deterministic"], name
        assert variant["overrides"] == train_speed.VARIANTS[name]
    assert report["variants"]["default"]["ratio_to_default"] == 1.0
