"""`vlsearch eval` on a real index: the standard measures equal trec_eval's (pytrec_eval called
directly), every metric and subset is filled from the index, the table and JSON outputs,
and BEIR's own loader opens the exported split (corpus.jsonl included)."""

from __future__ import annotations

import json

import pytest
from index_helpers import sample_index

from vlsearch.cli import main
from vlsearch.evaluation import (
    evaluate_index,
    read_beir_queries,
    read_qrels,
    recall_at_k,
    standard_metrics,
    top_k,
)

KS = (10, 100)


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_catalog_dir):
    return sample_index(tmp_path_factory, sample_catalog_dir)


@pytest.fixture(scope="module")
def test_split(built):
    _index, workdir, _model = built
    return workdir / "eval" / "test"


@pytest.fixture(scope="module")
def real_run(built, test_split):
    from vlsearch.serving.batch import search_queries_file
    from vlsearch.serving.engine import Engine

    return search_queries_file(Engine.open(built[0]), test_split / "queries.jsonl", k=max(KS))


def test_standard_measures_equal_trec_eval_on_a_real_run(real_run, test_split):
    import pytrec_eval

    qrels = read_qrels(test_split / "qrels.tsv")
    judged = {q: d for q, d in qrels.items() if any(g >= 1 for g in d.values())}
    ours = standard_metrics(real_run, judged, KS)
    for k in KS:
        truncated = {q: {doc: float(k - i) for i, doc in enumerate(top_k(real_run.get(q, []), k))}
                     for q in judged}
        evaluator = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut_{k}", f"recall_{k}", "recip_rank"})
        per_query = evaluator.evaluate({q: docs for q, docs in truncated.items() if docs})
        mean = {m: sum(per_query.get(q, {}).get(m, 0.0) for q in judged) / len(judged)
                for m in (f"ndcg_cut_{k}", f"recall_{k}", "recip_rank")}
        assert ours[f"ndcg@{k}"] == pytest.approx(mean[f"ndcg_cut_{k}"], abs=1e-9)
        assert ours[f"trec_recall@{k}"] == pytest.approx(mean[f"recall_{k}"], abs=1e-9)
        assert ours[f"mrr@{k}"] == pytest.approx(mean["recip_rank"], abs=1e-9)
        # the papers' Recall@K (hit rate of the clicked product) is trec_eval's recall at
        # relevance level 2 when every query has one click, as in the prepared splits
        clicked = pytrec_eval.RelevanceEvaluator(judged, {f"recall_{k}"}, relevance_level=2)
        hits = clicked.evaluate({q: docs for q, docs in truncated.items() if docs})
        hit_rate = sum(hits.get(q, {}).get(f"recall_{k}", 0.0) for q in judged) / len(judged)
        assert recall_at_k(real_run, judged, k) == pytest.approx(hit_rate, abs=1e-9)
    assert 0 < ours["ndcg@10"] < 1


@pytest.mark.parametrize("split", ["test", "heldout"])
def test_evaluate_index_fills_every_metric_and_the_heldout_subset(built, split):
    """Products and the held-out split come from the index: category consistency, strict
    relevance and the heldout subset are filled (the heldout split is all held-out products)."""
    folder = built[1] / "eval" / split
    report = evaluate_index(built[0], folder / "queries.jsonl", folder / "qrels.tsv", ks=KS, progress=False)
    subsets = report["subsets"]
    if split == "heldout":
        assert subsets["heldout"]["queries"] == subsets["all"]["queries"] > 0
    else:
        assert subsets["heldout"]["queries"] == 0  # test queries come from training products
    for name, subset in subsets.items():
        if subset["queries"]:
            missing = [m for m, v in subset["metrics"].items() if v is None]
            assert not missing, (name, missing)
    json.dumps(report, allow_nan=False)


def test_eval_command_prints_a_table_and_json(built, test_split, capsys, tmp_path):
    args = ["eval", "--index", str(built[0]), "--queries", str(test_split / "queries.jsonl"),
            "--qrels", str(test_split / "qrels.tsv"), "--k", "10,100", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "report.json")]) == 0
    table = capsys.readouterr().out
    assert "nDCG (trec_eval, linear gain)" in table and "category consistency" in table
    lines = [line for line in table.splitlines() if line.startswith(("Recall (hit", "strict relevance"))]
    assert len(lines) >= 2 and all(" - " not in line and not line.endswith(" -") for line in lines)
    assert len(table.splitlines()) < 40
    assert main(args + ["--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["subsets"]["all"]["metrics"]["category_consistency@10"] is not None
    assert json.loads((tmp_path / "report.json").read_text())["ks"] == [10, 100]


def test_beir_loader_opens_the_exported_split(test_split):
    from beir.datasets.data_loader import GenericDataLoader

    corpus, queries, qrels = GenericDataLoader(
        corpus_file=str(test_split / "corpus.jsonl"), query_file=str(test_split / "queries.jsonl"),
        qrels_file=str(test_split / "qrels.tsv")).load_custom()
    ours = read_qrels(test_split / "qrels.tsv")
    assert len(queries) == len(read_beir_queries(test_split / "queries.jsonl"))
    assert set(qrels) <= set(queries) and {d for docs in qrels.values() for d in docs} <= set(corpus)
    assert sum(len(d) for d in qrels.values()) == sum(len(d) for d in ours.values())
    some = next(iter(corpus.values()))
    assert some["title"] and "category" in some["text"]
