"""`prepare` end to end on the sample catalog and a real slice: layout, idempotence, resume, errors."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from vlsearch.config import Config
from vlsearch.errors import WorkdirError
from vlsearch.evaluation import read_beir_queries, read_qrels
from vlsearch.workdir import FORMAT_VERSION, Workdir, prepare


def fast_config(limit: int | None = None) -> Config:
    config = Config()
    config.images.backbone = "random-cnn"
    config.data.limit = limit
    return config


@pytest.fixture(scope="module")
def sample_workdir(sample_catalog_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("wd")
    summary = prepare(sample_catalog_dir, out, fast_config(), progress=False, log=lambda _: None)
    return out, summary


def test_prepare_writes_the_documented_layout(sample_workdir):
    out, summary = sample_workdir
    assert summary.stages_run == ["catalog", "queries", "features"]
    for rel in ["manifest.json", "products.parquet", "brands.json", "prepare_report.json",
                "clicks/train.parquet", "features/index.json"]:
        assert (out / rel).exists(), rel
    wd = Workdir.open(out)
    products = wd.products()
    assert len(products) == summary.products == 300
    table = wd.product_table()
    assert set(table.column("split").to_pylist()) == {"train", "heldout"}
    # Q(p) is a distribution over the training click stream; held-out products get none.
    probs = dict(zip(table.column("id").to_pylist(), table.column("sampling_prob").to_pylist()))
    assert sum(probs.values()) == pytest.approx(1.0)
    heldout = {i for i, s in zip(table.column("id").to_pylist(), table.column("split").to_pylist())
               if s == "heldout"}
    assert heldout and all(probs[i] == 0.0 for i in heldout)
    clicks = wd.clicks()
    assert not heldout & set(clicks.column("product_id").to_pylist())
    # feature rows follow product rows
    feats = wd.features()
    assert feats.n == len(products)


def test_eval_splits_are_beir_and_judged_by_the_relevance_rule(sample_workdir):
    from vlsearch.queries.relevance import relevant

    out, _ = sample_workdir
    wd = Workdir.open(out)
    by_id = {p.id: p for p in wd.products()}
    train_queries = set(wd.clicks().column("query").to_pylist())
    for split in ("valid", "test", "heldout", "colour_probe"):
        queries = read_beir_queries(wd.eval_dir(split) / "queries.jsonl")
        qrels = read_qrels(wd.eval_dir(split) / "qrels.tsv")
        assert queries, split
        for q in queries:
            judged = qrels[q.id]
            assert 2 in judged.values()  # the source product, the "click"
            for pid in judged:
                assert relevant(by_id[pid], q.metadata["attributes"])
        if split in ("valid", "test"):
            assert not {q.text for q in queries} & train_queries
    probe = read_beir_queries(wd.eval_dir("colour_probe") / "queries.jsonl")
    assert all(q.metadata["colour_only_in_image"] for q in probe)


def test_second_prepare_does_no_work(sample_catalog_dir, sample_workdir):
    out, first = sample_workdir
    before = (out / "manifest.json").read_text()
    again = prepare(sample_catalog_dir, out, fast_config(), progress=False, log=lambda _: None)
    assert again.stages_run == []
    assert again.products == first.products
    assert (out / "manifest.json").read_text() == before


def test_fresh_modification_times_keep_the_work_but_changed_contents_redo_it(
        sample_catalog_dir, tmp_path):
    catalog = tmp_path / "catalog"
    shutil.copytree(sample_catalog_dir, catalog)
    out = tmp_path / "wd"
    prepare(catalog, out, fast_config(limit=60), progress=False, log=lambda _: None)
    # A re-mounted or copied catalog gets new times but the same bytes: nothing to redo.
    for path in [catalog / "styles.csv", *sorted((catalog / "images").iterdir())[:5]]:
        os.utime(path, (1, 1))
    same = prepare(catalog, out, fast_config(limit=60), progress=False, log=lambda _: None)
    assert same.stages_run == []
    # One edited byte of the table, or one image more, and the stages run again.
    styles = catalog / "styles.csv"
    styles.write_text(styles.read_text().replace("Shirt", "Shirts", 1))
    edited = prepare(catalog, out, fast_config(limit=60), progress=False, log=lambda _: None)
    assert edited.stages_run == ["catalog", "queries", "features"]
    shutil.copy(next((catalog / "images").iterdir()), catalog / "images" / "999999.jpg")
    added = prepare(catalog, out, fast_config(limit=60), progress=False, log=lambda _: None)
    assert added.stages_run == ["catalog", "queries", "features"]


def test_changed_settings_redo_only_what_depends_on_them(sample_catalog_dir, tmp_path):
    out = tmp_path / "wd"
    prepare(sample_catalog_dir, out, fast_config(limit=120), progress=False, log=lambda _: None)
    config = fast_config(limit=120)
    config.data.typo_rate = 0.2
    # DataConfig is part of the catalog fingerprint: everything downstream is redone.
    redo = prepare(sample_catalog_dir, out, config, progress=False, log=lambda _: None)
    assert redo.stages_run == ["catalog", "queries", "features"]
    assert Workdir.open(out).features().n == 120


def test_open_refuses_missing_and_foreign_workdirs(tmp_path, sample_workdir):
    with pytest.raises(WorkdirError, match="manifest.json"):
        Workdir.open(tmp_path)
    out, _ = sample_workdir
    foreign = tmp_path / "old"
    foreign.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 99
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WorkdirError, match="format version"):
        Workdir.open(foreign)


def test_prepare_reports_bad_rows_and_keeps_good_ones(tmp_path):
    from vlsearch.sample import write_sample_catalog

    catalog = write_sample_catalog(tmp_path / "cat", n_products=60, seed=3)
    styles = catalog / "styles.csv"
    lines = styles.read_bytes().splitlines(keepends=True)
    lines.insert(5, b"not-a-row\n")
    lines.insert(9, b"77777,Men,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,Bad \xff\xfe Title\n")
    styles.write_bytes(b"".join(lines))
    summary = prepare(catalog, tmp_path / "wd", fast_config(), progress=False, log=lambda _: None)
    report = json.loads((tmp_path / "wd" / "prepare_report.json").read_text())
    problems = " ".join(json.dumps(p) for p in report["problems"])
    assert "styles.csv" in problems
    assert summary.products >= 59  # the good rows got through
    assert pq.read_table(tmp_path / "wd" / "products.parquet").num_rows == summary.products


@pytest.mark.real
def test_prepare_on_a_real_slice(fashion_dir, tmp_path):
    summary = prepare(fashion_dir, tmp_path / "wd", fast_config(limit=1500), progress=False,
                      log=lambda _: None)
    assert summary.products == 1500
    assert summary.brands > 50
    names = [name for name, _ in summary.top_brands]
    assert any(" " in name for name in names)  # multi-word brands come out whole
    assert summary.eval_queries["valid"] > 0


def test_prepare_with_a_real_click_log(sample_catalog_dir, tmp_path):
    """A real log: split by query id, held-out products only in the cold-start split, every
    click judged, unknown products and bad lines reported, Q(p) from the log's counts."""
    from vlsearch.catalog import load_catalog

    products = load_catalog(sample_catalog_dir).products
    lines = ["query,product_id,count"]
    for i, p in enumerate(products):
        lines.append(f"{p.category} {p.brand},{p.id},{1 + i % 5}")
        lines.append(f"{p.brand} {p.category},{p.id},2")  # same query id, other word order
    lines += ["ghost shoes,NOPE-1,3", "broken row without count,"]
    log_path = tmp_path / "clicks.csv"
    log_path.write_text("\n".join(lines) + "\n")
    config = fast_config()
    config.data.valid_query_fraction = 0.2
    config.data.test_query_fraction = 0.2
    summary = prepare(sample_catalog_dir, tmp_path / "wd", config, clicks=log_path,
                      progress=False, log=lambda _: None)
    wd = Workdir.open(tmp_path / "wd")
    table = wd.product_table()
    heldout = {i for i, s in zip(table.column("id").to_pylist(), table.column("split").to_pylist())
               if s == "heldout"}
    train = wd.clicks()
    train_pids = set(train.column("product_id").to_pylist())
    assert train_pids and not train_pids & heldout and "NOPE-1" not in train_pids
    train_qids = set(train.column("qid").to_pylist())
    from vlsearch.text import query_id

    for split in ("valid", "test", "heldout"):
        queries = read_beir_queries(wd.eval_dir(split) / "queries.jsonl")
        qrels = read_qrels(wd.eval_dir(split) / "qrels.tsv")
        assert queries and summary.eval_queries[split] == len(queries)
        for q in queries:
            assert set(qrels[q.id].values()) == {2}  # every judged product was clicked
            if split != "heldout":
                assert query_id(q.text) not in train_qids  # no eval query is trained on
            else:
                assert set(qrels[q.id]) <= heldout
    # the colour probe comes from the catalog whatever the click source
    assert summary.eval_queries["colour_probe"] > 0
    manifest = json.loads((tmp_path / "wd" / "manifest.json").read_text())
    notes = " ".join(manifest["click_log_notes"])
    assert "clicks.csv" in notes and "not in the catalog" in notes
    assert "not in the catalog" in summary.format()  # prepare prints what it left out
    probs = dict(zip(table.column("id").to_pylist(), table.column("sampling_prob").to_pylist()))
    assert sum(probs.values()) == pytest.approx(1.0)
