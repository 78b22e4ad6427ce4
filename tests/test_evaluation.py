"""Tests of vlsearch.evaluation: metrics on hand-computed examples, readers, TREC round trip."""

from __future__ import annotations

import io
import json
import math
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlsearch.catalog import Product
from vlsearch.errors import InputError
from vlsearch.evaluation import (
    EvalQuery,
    category_consistency_at_k,
    evaluate,
    evaluate_files,
    mrr_at_k,
    ndcg_at_k,
    ndcg_exp_at_k,
    read_beir_queries,
    read_qrels,
    read_trec_run,
    recall_at_k,
    set_recall_at_k,
    strict_relevance_at_k,
    top_k,
    write_trec_run,
)


def make_product(
    pid: str, category: str | None, brand: str | None = None, **attributes: str
) -> Product:
    return Product(
        id=pid,
        title=f"product {pid}",
        image_paths=[],
        brand=brand,
        category=category,
        attributes=dict(attributes),
    )


# Hand-computed example shared by the recall tests.
QRELS = {
    "q1": {"a": 2, "b": 1, "c": 1},
    "q2": {"d": 2},
    "q3": {"e": 2, "f": 2},  # missing from RUN: an empty result, never skipped
}
RUN = {
    "q1": ["x", "a", "a", "b"],  # duplicate "a" counts once, at position 2
    "q2": ["d"],
    "q9": ["a"],  # not judged: ignored
}


# ---------------------------------------------------------------------------- top_k


def test_top_k_dedups_and_cuts():
    assert top_k(["a", "b", "a", "c", "d"], 3) == ["a", "b", "c"]
    assert top_k(["a"], 10) == ["a"]
    assert top_k([], 5) == []
    with pytest.raises(ValueError):
        top_k(["a"], 0)


# ---------------------------------------------------------------------------- recall


def test_recall_at_k_hand_computed():
    # Clicked pairs: (q1,a) (q2,d) (q3,e) (q3,f) = 4.
    assert recall_at_k(RUN, QRELS, 1) == pytest.approx(1 / 4)  # only d
    assert recall_at_k(RUN, QRELS, 2) == pytest.approx(2 / 4)  # a and d
    assert recall_at_k(RUN, QRELS, 3) == pytest.approx(2 / 4)  # duplicate a does not push b out
    assert recall_at_k(RUN, QRELS, 1000) == pytest.approx(2 / 4)  # k larger than every run
    # min_grade=1: pairs a b c d e f = 6; top 3 of q1 is x a b.
    assert recall_at_k(RUN, QRELS, 3, min_grade=1) == pytest.approx(3 / 6)


def test_recall_duplicates_count_once():
    qrels = {"q": {"a": 2, "b": 2}}
    assert recall_at_k({"q": ["a", "a", "b"]}, qrels, 2) == pytest.approx(1.0)
    assert recall_at_k({"q": ["a", "a", "a"]}, qrels, 3) == pytest.approx(0.5)


def test_recall_empty_run_and_no_pairs():
    assert recall_at_k({}, QRELS, 10) == 0.0
    assert recall_at_k({"q1": []}, {"q1": {"a": 2}}, 10) == 0.0
    assert recall_at_k(RUN, {}, 10) is None
    assert recall_at_k(RUN, {"q1": {"b": 1}}, 10) is None  # no clicked pair


# ---------------------------------------------------------------------------- set recall


def test_set_recall_hand_computed():
    # k=2: q1 top [x,a] -> 1/min(3,2); q2 -> 1/1; q3 -> 0/min(2,2).
    assert set_recall_at_k(RUN, QRELS, 2) == pytest.approx((0.5 + 1 + 0) / 3)
    # k=10: q1 top [x,a,b] -> 2/3; q2 -> 1; q3 -> 0.
    assert set_recall_at_k(RUN, QRELS, 10) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_set_recall_caps_denominator_at_k():
    qrels = {"q": {p: 1 for p in "abcdef"}}
    assert set_recall_at_k({"q": ["a", "b"]}, qrels, 2) == pytest.approx(1.0)
    assert set_recall_at_k({"q": ["a", "z"]}, qrels, 2) == pytest.approx(0.5)


def test_set_recall_skips_queries_without_relevant():
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}, "q3": {}}
    assert set_recall_at_k({"q1": ["a"]}, qrels, 5) == pytest.approx(1.0)
    assert set_recall_at_k({}, {"q2": {"b": 0}}, 5) is None


# ---------------------------------------------------------------------------- nDCG


def test_ndcg_hand_computed():
    assert ndcg_at_k({"q": ["a"]}, {"q": {"a": 1}}) == pytest.approx(1.0)
    assert ndcg_at_k({"q": ["x", "a"]}, {"q": {"a": 1}}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k({"q": ["x", "a"]}, {"q": {"a": 1}}, 1) == 0.0
    # Graded, trec_eval's linear gain: run [b, a] with a=2 (gain 2) and b=1 (gain 1).
    dcg = 1 / math.log2(2) + 2 / math.log2(3)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k({"q": ["b", "a"]}, {"q": {"a": 2, "b": 1}}, 10) == pytest.approx(dcg / ideal)


def test_ndcg_exp_keeps_the_exponential_gain_under_its_own_name():
    # run [b, a] with a=2 (gain 2^2-1 = 3) and b=1 (gain 1).
    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    ideal = 3 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_exp_at_k({"q": ["b", "a"]}, {"q": {"a": 2, "b": 1}}, 10) == pytest.approx(dcg / ideal)
    assert ndcg_exp_at_k({"q": ["a"]}, {"q": {"a": 1}}) == pytest.approx(1.0)
    assert ndcg_exp_at_k({}, {"s": {"d": 0}}, 3) is None


def test_mrr_first_relevant_within_k_missing_query_scores_zero():
    qrels = {"q": {"a": 1}, "r": {"b": 2}, "s": {"c": 1}}
    run = {"q": ["x", "y", "a"], "r": ["b"]}  # s missing -> 0
    assert mrr_at_k(run, qrels, 10) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert mrr_at_k(run, qrels, 2) == pytest.approx((0 + 1 + 0) / 3)


def test_ndcg_duplicates_missing_queries_and_skips():
    qrels = {"q": {"a": 2, "b": 2}, "r": {"c": 1}, "s": {"d": 0}}
    # q: [a, a, b] -> a at 1, b at 2 (duplicate removed) = ideal; r missing -> 0; s skipped.
    assert ndcg_at_k({"q": ["a", "a", "b"]}, qrels, 3) == pytest.approx(0.5)
    # Ideal DCG is cut at k: only one of q's two relevant products fits.
    assert ndcg_at_k({"q": ["a"]}, {"q": {"a": 2, "b": 2}}, 1) == pytest.approx(1.0)
    assert ndcg_at_k({}, {"s": {"d": 0}}, 3) is None


# ---------------------------------------------------------------------------- category consistency


def test_category_consistency_hand_computed():
    intents = {"q1": {"shoes"}, "q2": {"bags"}, "q3": set(), "q4": {"shoes"}}
    categories = {"a": "shoes", "b": "bags", "c": "shoes"}
    run = {"q1": ["a", "b", "c", "a"], "q2": ["b", "x"], "q3": ["a"]}
    # k=2: q1 [a,b] 1/2; q2 [b,x] 1/2 (x has no category); q4 missing -> 0; q3 has no intent.
    assert category_consistency_at_k(run, intents, categories, 2) == pytest.approx(
        (0.5 + 0.5 + 0) / 3
    )
    # k=10: q1 [a,b,c] 2/3 (the duplicate a is dropped); q2 1/2; q4 0.
    assert category_consistency_at_k(run, intents, categories, 10) == pytest.approx(
        (2 / 3 + 0.5) / 3
    )
    assert category_consistency_at_k(run, {"q3": set()}, categories, 10) is None


def test_category_consistency_multiple_intents_and_short_runs():
    intents = {"q": {"shoes", "bags"}}
    categories = {"a": "shoes", "b": "bags", "c": "hats"}
    # Divides by the number retrieved (3), not by k.
    assert category_consistency_at_k(
        {"q": ["a", "b", "c"]}, intents, categories, 100
    ) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- strict relevance


PRODUCTS = {
    "a": make_product("a", "Dress", colour="Red", gender="Women"),
    "b": make_product("b", "Dress", colour="Blue", gender="Women"),
    "c": make_product("c", "Shirt", colour="Red", gender="Men"),
    "d": make_product("d", "Dress", colour="Red", gender="Unisex"),
}


def test_strict_relevance_hand_computed():
    attributes = {"q1": {"colour": "Red"}, "q2": {"colour": "red", "gender": "women"}, "q3": {}}
    run = {"q1": ["a", "b", "c", "a"], "q2": ["c", "a", "unknown", "d"]}
    # k=2: q1 [a,b] 1/2; q2 [c,a] 1/2 (c is Men); q3 has no attributes and is not averaged.
    assert strict_relevance_at_k(run, attributes, PRODUCTS, 2) == pytest.approx(0.5)
    # k=10: q1 [a,b,c] 2/3 (duplicate a dropped); q2 [c,a,unknown,d] 2/4: an unknown product is
    # not relevant, a Unisex product satisfies a Women query (vlsearch.queries.relevant).
    assert strict_relevance_at_k(run, attributes, PRODUCTS, 10) == pytest.approx(
        (2 / 3 + 2 / 4) / 2
    )
    # A query missing from the run scores 0.
    assert strict_relevance_at_k({}, {"q1": {"colour": "Red"}}, PRODUCTS, 10) == 0.0
    assert strict_relevance_at_k(run, {"q3": {}}, PRODUCTS, 10) is None


def test_strict_relevance_custom_rule():
    def only_a(product: Product, attributes: dict[str, str]) -> bool:
        return product.id == "a"

    run = {"q": ["a", "b", "c"]}
    assert strict_relevance_at_k(
        run, {"q": {"colour": "Red"}}, PRODUCTS, 3, rule=only_a
    ) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------- property


@settings(max_examples=200, deadline=None)
@given(
    ranked=st.lists(st.sampled_from("abcdefgh"), max_size=12),
    grades=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 2), max_size=8),
    ks=st.lists(st.integers(1, 15), min_size=2, max_size=5),
)
def test_recall_monotone_and_bounded(ranked, grades, ks):
    run, qrels = {"q": ranked}, {"q": grades, "missing": {"a": 2}}
    values = [recall_at_k(run, qrels, k) for k in sorted(ks)]
    for value in values:
        assert value is not None and 0.0 <= value <= 1.0
    assert all(low <= high for low, high in pairwise(values))


# ---------------------------------------------------------------------------- TREC runs


def test_trec_ties_sorted_by_score_then_rank_then_id(tmp_path: Path):
    path = tmp_path / "run.trec"
    path.write_text(
        "q1 Q0 b 2 1.0 t\nq1 Q0 a 1 1.0 t\nq1 Q0 e 2 1.0 t\nq1 Q0 c 9 5.0 t\n\nq2 0 z 1 -0.5 t\n"
    )
    run, scores = read_trec_run(path)
    assert run == {"q1": ["c", "a", "b", "e"], "q2": ["z"]}
    assert scores == {"q1": [5.0, 1.0, 1.0, 1.0], "q2": [-0.5]}


def test_trec_round_trip_path_and_file_object(tmp_path: Path):
    run = {"q1": ["a", "b", "c"], "q2": ["d"], "q3": []}
    scores = {"q1": [0.1 + 0.2, 0.25, 0.25], "q2": [-3.0], "q3": []}
    path = tmp_path / "out" / "run.trec"
    write_trec_run(path, run, scores, tag="mine")
    lines = path.read_text().splitlines()
    assert lines[0] == f"q1 Q0 a 1 {0.1 + 0.2!r} mine"
    assert len(lines) == 4
    back, back_scores = read_trec_run(path)
    assert back == {"q1": ["a", "b", "c"], "q2": ["d"]}  # an empty list writes no line
    assert back_scores == {"q1": scores["q1"], "q2": scores["q2"]}

    buffer = io.StringIO()
    write_trec_run(buffer, run)  # without scores the order survives
    path2 = tmp_path / "run2.trec"
    path2.write_text(buffer.getvalue())
    assert read_trec_run(path2)[0] == {"q1": ["a", "b", "c"], "q2": ["d"]}


def test_write_trec_run_rejects_bad_input(tmp_path: Path):
    path = tmp_path / "run.trec"
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(path, {"q 1": ["a"]})
    with pytest.raises(ValueError, match="scores"):
        write_trec_run(path, {"q": ["a", "b"]}, {"q": [1.0]})
    with pytest.raises(ValueError, match="increase"):
        write_trec_run(path, {"q": ["a", "b"]}, {"q": [1.0, 2.0]})
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "line", "expected"),
    [
        ("q1 Q0 a 1 1.0 t\nq1 Q0 b 2 1.0\n", 2, "6 whitespace-separated columns"),
        ("q1 Q0 a one 1.0 t\n", 1, "integer rank"),
        ("\nq1 Q0 a 1 high t\n", 2, "a number"),
        ("q1 Q0 a 1 nan t\n", 1, "NaN"),
    ],
)
def test_read_trec_run_malformed(tmp_path: Path, content: str, line: int, expected: str):
    path = tmp_path / "bad.trec"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_trec_run(path)
    assert f"bad.trec:{line}" in str(info.value)
    assert expected in str(info.value)


# ---------------------------------------------------------------------------- qrels


def test_read_qrels_with_and_without_header(tmp_path: Path):
    with_header = tmp_path / "a.tsv"
    with_header.write_text("query-id\tcorpus-id\tscore\nq1\tp1\t2\nq1\tp2\t1\nq2\tp3\t0\n\n")
    without = tmp_path / "b.tsv"
    without.write_text("q1\tp1\t2\r\nq1\tp2\t1\r\nq2\tp3\t0\r\n")
    expected = {"q1": {"p1": 2, "p2": 1}, "q2": {"p3": 0}}
    assert read_qrels(with_header) == expected
    assert read_qrels(without) == expected


def test_read_qrels_empty(tmp_path: Path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    header_only = tmp_path / "header.tsv"
    header_only.write_text("query-id\tcorpus-id\tscore\n")
    assert read_qrels(empty) == {}
    assert read_qrels(header_only) == {}


@pytest.mark.parametrize(
    ("content", "line", "expected"),
    [
        ("query-id\tcorpus-id\tscore\nq1\tp1\n", 2, "3 tab-separated columns"),
        ("q1\tp1\t2\nq1\tp2\t2\t7\n", 2, "3 tab-separated columns"),
        ("q1\tp1\ttwo\n", 1, "integer grade"),
        ("q1\tp1\t1.5\n", 1, "integer grade"),
        ("q1\tp1\t2\nq1\tp1\t1\n", 2, "duplicate"),
    ],
)
def test_read_qrels_malformed(tmp_path: Path, content: str, line: int, expected: str):
    path = tmp_path / "qrels.tsv"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_qrels(path)
    assert f"qrels.tsv:{line}" in str(info.value)
    assert expected in str(info.value)


def test_readers_missing_file(tmp_path: Path):
    for reader in (read_qrels, read_beir_queries, read_trec_run):
        with pytest.raises(InputError, match="nowhere.txt"):
            reader(tmp_path / "nowhere.txt")


def test_read_qrels_non_utf8(tmp_path: Path):
    path = tmp_path / "qrels.tsv"
    path.write_bytes(b"q1\tp1\t2\nq\xff2\tp2\t1\n")
    with pytest.raises(InputError, match=r"qrels.tsv:2: expected UTF-8"):
        read_qrels(path)


# ---------------------------------------------------------------------------- queries


def test_read_beir_queries(tmp_path: Path):
    path = tmp_path / "queries.jsonl"
    rows = [
        {
            "_id": "q1",
            "text": "red dress",
            "metadata": {"category": "Dress", "colour_only_in_image": True},
        },
        {"_id": 7, "text": "shoes"},
    ]
    path.write_text("\ufeff" + "\n".join(json.dumps(row) for row in rows) + "\n\n")
    queries = read_beir_queries(path)
    assert queries == [
        EvalQuery("q1", "red dress", {"category": "Dress", "colour_only_in_image": True}),
        EvalQuery("7", "shoes", {}),
    ]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert read_beir_queries(empty) == []


@pytest.mark.parametrize(
    ("content", "line", "expected"),
    [
        ('{"_id": "q1", "text": "a"}\n{"text": "b"}\n', 2, "_id"),
        ('{"_id": "q1"}\n', 1, "text"),
        ('{"_id": "q1", "text": "a"}\n\n{"_id": "q2", "text": \n', 3, "invalid JSON"),
        ('["q1", "a"]\n', 1, "JSON object"),
        ('{"_id": "q1", "text": "a", "metadata": []}\n', 1, "metadata"),
        ('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n', 2, "duplicate"),
    ],
)
def test_read_beir_queries_malformed(tmp_path: Path, content: str, line: int, expected: str):
    path = tmp_path / "queries.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        read_beir_queries(path)
    assert f"queries.jsonl:{line}" in str(info.value)
    assert expected in str(info.value)


def test_read_beir_queries_non_utf8(tmp_path: Path):
    path = tmp_path / "queries.jsonl"
    path.write_bytes(b'{"_id": "q1", "text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"queries.jsonl:1: expected UTF-8"):
        read_beir_queries(path)


# ---------------------------------------------------------------------------- evaluate


def eval_queries() -> list[EvalQuery]:
    return [
        EvalQuery(
            "q1",
            "red dress",
            {
                "attributes": {"colour": "Red"},
                "category": "Dress",
                "source_product": "a",
                "colour_only_in_image": True,
            },
        ),
        EvalQuery(
            "q2",
            "blue dress",
            {
                "attributes": {"colour": "Blue"},
                "category": "Dress",
                "source_product": "b",
                "colour_only_in_image": False,
            },
        ),
        EvalQuery(
            "q3",
            "men shirt",
            {
                "attributes": {"gender": "Men"},
                "category": "Shirt",
                "source_product": "c",
            },
        ),
    ]


EVAL_QRELS = {"q1": {"a": 2}, "q2": {"b": 2, "a": 0}, "q3": {"c": 2}, "other": {"a": 2}}
EVAL_RUN = {"q1": ["a", "b"], "q2": ["a", "b"], "zz": ["a"]}  # q3 missing


def test_evaluate_subsets_and_counts():
    result = evaluate(EVAL_RUN, EVAL_QRELS, eval_queries(), None, ks=(1, 2), heldout={"c", "b"})
    assert result["ks"] == [1, 2]
    assert result["qrels_queries_not_in_queries"] == 1
    assert result["run_queries_not_in_queries"] == 1
    everything = result["subsets"]["all"]
    assert everything["queries"] == 3
    assert everything["clicked_pairs"] == 3
    assert everything["queries_without_results"] == 1
    assert everything["metrics"]["recall@1"] == pytest.approx(1 / 3)
    assert everything["metrics"]["recall@2"] == pytest.approx(2 / 3)
    assert everything["metrics"]["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3) + 0) / 3)
    assert everything["metrics"]["category_consistency@2"] is None  # needs products
    colour = result["subsets"]["colour_only_in_image"]
    assert colour["queries"] == 1
    assert colour["metrics"]["recall@1"] == pytest.approx(1.0)
    heldout = result["subsets"]["heldout"]
    assert heldout["queries"] == 2  # q2 (b) and q3 (c)
    assert heldout["metrics"]["recall@2"] == pytest.approx(1 / 2)
    json.dumps(result, allow_nan=False)


def test_evaluate_with_products():
    products = {
        "a": make_product("a", "Dress", colour="Red"),
        "b": make_product("b", "Dress", colour="Blue"),
        "c": make_product("c", "Shirt", gender="Men"),
    }
    result = evaluate(EVAL_RUN, EVAL_QRELS, eval_queries(), products, ks=(2,))
    metrics = result["subsets"]["all"]["metrics"]
    # q1 [a,b] both Dress; q2 [a,b] both Dress; q3 missing -> 0.
    assert metrics["category_consistency@2"] == pytest.approx(2 / 3)
    assert result["subsets"]["all"]["queries_with_intent"] == 3
    # q1 (Red) [a,b] 1/2; q2 (Blue) [a,b] 1/2; q3 (Men) missing -> 0.
    assert metrics["strict_relevance@2"] == pytest.approx(1 / 3)
    assert "heldout" not in result["subsets"]


def test_evaluate_zero_queries_is_nan_free():
    result = evaluate({}, {}, [], {}, heldout=set())
    for subset in ("all", "colour_only_in_image", "heldout"):
        assert result["subsets"][subset]["queries"] == 0
        assert all(value is None for value in result["subsets"][subset]["metrics"].values())
    assert set(result["subsets"]["all"]["metrics"]) >= {"recall@10", "ndcg@100", "set_recall@500"}
    json.dumps(result, allow_nan=False)


def test_evaluate_files(tmp_path: Path):
    queries_path = tmp_path / "queries.jsonl"
    queries_path.write_text(
        "".join(
            json.dumps({"_id": q.id, "text": q.text, "metadata": q.metadata}) + "\n"
            for q in eval_queries()
        )
    )
    qrels_path = tmp_path / "qrels.tsv"
    qrels_path.write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(
            f"{qid}\t{doc}\t{grade}\n"
            for qid, judged in EVAL_QRELS.items()
            for doc, grade in judged.items()
        )
    )
    run_path = tmp_path / "run.trec"
    write_trec_run(run_path, EVAL_RUN)
    from_file = evaluate_files(run_path, queries_path, qrels_path, ks=(1, 2))
    from_memory = evaluate_files(EVAL_RUN, queries_path, qrels_path, ks=(1, 2))
    assert from_file["subsets"] == from_memory["subsets"]
    assert from_file["inputs"]["run"] == str(run_path)
    assert from_memory["inputs"]["run"] is None
    assert from_file["subsets"]["all"]["metrics"]["recall@2"] == pytest.approx(2 / 3)
    json.loads(json.dumps(from_file, allow_nan=False))
