"""Tests of vlsearch.text: segmentation, term sorting, the stable 32-bit qid, the tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlsearch.errors import InputError
from vlsearch.text import (
    Encoded,
    Tokenizer,
    minilm_dir,
    normalize_query,
    query_id,
    query_ids,
    query_terms,
    segment,
)

# ----------------------------------------------------------------------------- segment


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("Men's T-Shirt, navy-blue!", ["men's", "t", "shirt", "navy", "blue"]),
        ("  RED   dress ", ["red", "dress"]),
        ("boys' shoes", ["boys", "shoes"]),  # trailing apostrophe stripped
        ("Men’s tee", ["men's", "tee"]),  # curly apostrophe folded
        ("'90s rock'n'roll", ["90s", "rock'n'roll"]),
        ("snake_case/slash;semi", ["snake", "case", "slash", "semi"]),
        ("Café NAÏVE", ["café", "naïve"]),
        ("Ｔシャツ ＲＥＤ", ["t", "シャツ", "red"]),  # NFKC: full-width Latin folded
        ("Straße", ["strasse"]),  # casefold
        ("iPhone15 2.5", ["iphone15", "2", "5"]),
        ("हिन्दी शर्ट", ["हिन्दी", "शर्ट"]),  # combining vowel signs stay inside the term
        ("한국 옷", ["한국", "옷"]),
    ],
)
def test_segment_latin_and_other_scripts(text, terms):
    assert segment(text) == terms


def test_segment_cjk_uses_jieba_and_mixed_runs():
    assert segment("红色连衣裙") == ["红色", "连衣裙"]
    assert segment("耐克red连衣裙 女") == ["耐克", "red", "连衣裙", "女"]
    assert segment("ナイキのスニーカー") == ["ナイキ", "の", "スニーカー"]  # katakana runs whole


@pytest.mark.parametrize("text", ["", "   ", "!!! -- ??", "_ _"])
def test_segment_empty(text):
    assert segment(text) == []
    assert normalize_query(text) == ""


def test_segment_without_jieba_falls_back_to_characters(monkeypatch):
    import vlsearch.text as text_mod

    monkeypatch.setattr(text_mod, "_jieba_module", False)
    assert segment("红色dress") == ["红", "色", "dress"]


def test_query_terms_sort_switch():
    assert query_terms("Red Nike dress") == ["dress", "nike", "red"]
    assert query_terms("Red Nike dress", sort=False) == ["red", "nike", "dress"]
    assert normalize_query("Dress  RED!") == "dress red"
    assert normalize_query("red red dress") == "dress red red"  # duplicates are kept


# ----------------------------------------------------------------------------- qid


def test_qid_invariant_to_order_case_punctuation():
    base = query_id("red dress")
    for variant in ["Dress  RED!", "dress red", "RED, dress.", " red\tdress ", "red-dress"]:
        assert query_id(variant) == base
    assert query_id("red dresses") != base
    assert query_id("red red dress") != base
    assert 0 <= base < 2**32
    assert query_id("t-shirt") == query_id("t shirt") != query_id("tshirt")


def test_query_ids_array():
    ids = query_ids(["red dress", "Dress red", "blue jeans"])
    assert ids.dtype == np.uint32 and ids.shape == (3,)
    assert ids[0] == ids[1] != ids[2]
    assert query_ids([]).shape == (0,)


QID_TEXTS = ["red dress", "Men's Navy-Blue T-Shirt", "耐克红色连衣裙 女", "ナイキのスニーカー", ""]


def test_qid_stable_across_processes_and_hash_seeds():
    expected = [query_id(t) for t in QID_TEXTS]
    code = (
        "import json,sys; from vlsearch.text import query_id; "
        "print(json.dumps([query_id(t) for t in json.loads(sys.argv[1])]))"
    )
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(QID_TEXTS)],
            capture_output=True, text=True, env=env, check=True, timeout=120,
        )
        assert json.loads(out.stdout.strip().splitlines()[-1]) == expected
        assert "Building prefix dict" not in out.stderr  # jieba's start-up chatter is silenced


def test_qid_pinned_values():
    # The on-disk qid tables depend on these: a change is a format change.
    assert query_id("red dress") == query_id("dress red") == 270221247


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["red", "dress", "men's", "nike", "t", "shirt", "连衣裙"]),
                max_size=6), st.randoms(use_true_random=False))
def test_qid_property_permutation_invariant(words, rnd):
    shuffled = list(words)
    rnd.shuffle(shuffled)
    upper = " ".join(w.upper() for w in shuffled)
    assert query_id(" ".join(words)) == query_id(upper + " !")


def test_no_qid_collisions_among_distinct_generated_queries():
    from vlsearch.config import DataConfig
    from vlsearch.queries.generator import generate_queries

    products = _many_products(4000)
    queries = generate_queries(products, DataConfig(queries_per_product=6, typo_rate=0.2), seed=3)
    by_terms = {normalize_query(q.text) for q in queries}
    assert len(by_terms) >= 10_000
    ids = {query_id(t) for t in by_terms}
    # 32-bit ids: about n^2 / 2^33 expected collisions, i.e. ~0.01 for 10k distinct queries.
    assert len(by_terms) - len(ids) <= 1


def _many_products(n: int):
    from vlsearch.catalog import Product

    def make_product(pid, category, brand, **attributes):
        return Product(id=pid, title=f"{brand} {category}", image_paths=[], brand=brand,
                       category=category, attributes=attributes)

    categories = ["Tshirts", "Shirts", "Watches", "Kurtas", "Handbags", "Jeans", "Heels", "Caps"]
    colours = ["Black", "Navy Blue", "Grey", "Red", "White", "Off White", "Olive", "Pink"]
    genders = ["Men", "Women", "Boys", "Girls", "Unisex"]
    usages = ["Casual", "Sports", "Formal", "Ethnic", "Party"]
    return [
        make_product(
            str(i), categories[i % 8], brand=f"Brand{i % 401} Co",
            gender=genders[i % 5], colour=colours[(i // 8) % 8], usage=usages[(i // 3) % 5],
        )
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.minilm()


def test_minilm_dir_is_packaged():
    path = minilm_dir()
    assert (path / "tokenizer.json").exists() and (path / "config.json").exists()


def test_tokenizer_special_ids(tok):
    assert tok.vocab_size == 30522
    assert (tok.pad_id, tok.token_to_id("[UNK]"), tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    mask = tok.special_tokens_mask(np.array([[101, 2417, 102, 0]]))
    assert mask.tolist() == [[True, False, True, True]]


def test_encode_single_round_trip_and_padding(tok):
    enc = tok.encode(["Red dress for women", "tshirt"], max_len=16)
    assert isinstance(enc, Encoded)
    ids, mask, types = enc
    assert ids.dtype == mask.dtype == types.dtype == np.int64
    assert ids.shape == mask.shape == types.shape and ids.shape[1] <= 16
    assert ids[:, 0].tolist() == [tok.cls_id, tok.cls_id]
    assert tok.decode(ids[0]) == "red dress for women"
    # padded to the longest in the batch, mask marks real tokens
    longest = int(mask.sum(1).max())
    assert ids.shape[1] == longest
    short = int(mask[1].sum())
    assert (ids[1, short:] == tok.pad_id).all() and ids[1, short - 1] == tok.sep_id
    assert (types == 0).all()


def test_encode_sort_terms(tok):
    ids = tok.encode(["Women Red Dress"], max_len=16, sort_terms=True).input_ids
    assert tok.decode(ids[0]) == "dress red women"
    ids = tok.encode(["Women Red Dress"], max_len=16, sort_terms=False).input_ids
    assert tok.decode(ids[0]) == "women red dress"


def test_encode_pairs_segments_and_truncation(tok):
    enc = tok.encode(["red dress", "a b c d e f g h i j"], max_len=8, pairs=["nike", "x y z"])
    ids, mask, types = enc
    assert ids.shape == (2, 8)
    row = ids[0, : int(mask[0].sum())].tolist()
    assert row[0] == tok.cls_id and row.count(tok.sep_id) == 2
    second = row.index(tok.sep_id) + 1
    assert tok.decode(row[second:]) == "nike"
    assert types[0, :second].tolist() == [0] * second
    assert types[0, second : len(row)].tolist() == [1] * (len(row) - second)
    # truncated longest-first: both segments survive and end with [SEP]
    assert ids[1].tolist().count(tok.sep_id) == 2 and ids[1, -1] == tok.sep_id
    assert (types[1] == 1).any()


def test_encode_edge_cases(tok):
    empty = tok.encode([], max_len=8)
    assert empty.input_ids.shape == (0, 0)
    only_special = tok.encode([""], max_len=8)
    assert only_special.input_ids.tolist() == [[tok.cls_id, tok.sep_id]]
    with pytest.raises(ValueError):
        tok.encode(["a"], max_len=1)
    with pytest.raises(ValueError):
        tok.encode(["a", "b"], max_len=8, pairs=["x"])


def test_encode_10k_titles_is_fast(tok):
    titles = [f"Peter England Men Party Blue Jeans {i}" for i in range(10_000)]
    started = time.perf_counter()
    enc = tok.encode(titles, max_len=40, sort_terms=True)
    elapsed = time.perf_counter() - started
    assert enc.input_ids.shape[0] == 10_000
    assert elapsed < 5.0, elapsed


def test_save_makes_a_self_contained_dir(tok, tmp_path):
    tok.save(tmp_path / "m")
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json", "tokenizer_config.json"):
        assert (tmp_path / "m" / name).exists(), name
    texts = ["Men's navy blue t-shirt", "耐克 连衣裙", "unknownwordxyz"]
    expected = tok.encode(texts, max_len=12, pairs=["kw one", "kw", "x"])
    again = Tokenizer.from_dir(tmp_path / "m").encode(texts, max_len=12, pairs=["kw one", "kw", "x"])
    for a, b in zip(expected, again):
        assert np.array_equal(a, b)


def test_from_dir_errors(tmp_path):
    with pytest.raises(InputError, match="expected tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
