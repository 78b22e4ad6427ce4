"""HTTP API (FastAPI TestClient): every route, and a JSON 4xx (never a 500) for each bad input."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from index_helpers import sample_index

from vlsearch.errors import WorkdirError
from vlsearch.serving.app import create_app, serve
from vlsearch.serving.engine import Engine


@pytest.fixture(scope="module")
def client(tmp_path_factory, sample_catalog_dir):
    index_dir = sample_index(tmp_path_factory, sample_catalog_dir)[0]
    with TestClient(create_app(index_dir), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def a_product(client):
    hit = client.get("/search", params={"q": "shoes", "k": 1}).json()["hits"][0]
    return hit["product_id"]


def test_search_get(client):
    r = client.get("/search", params={"q": "nike shoes", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert 0 < len(body["hits"]) <= 5 and body["qid"] > 0 and "total_ms" in body["timings"]
    hit = body["hits"][0]
    assert hit["brand"] == "Nike" and hit["image"] == f"/products/{hit['product_id']}/image"
    assert {c["field"] for c in body["constraints"]} >= {"brand", "category"}
    assert all(c["source"] == "auto" and c["terms"] for c in body["constraints"])


def test_search_get_filters_channels_auto_off(client):
    r = client.get("/search", params=[("q", "shoes"), ("filter", "brand=Puma"), ("filter", "brand=Nike"),
                                      ("channels", "lexical"), ("k", "50")])
    body = r.json()
    assert r.status_code == 200 and body["channels"] == ["lexical"]
    assert {h["brand"] for h in body["hits"]} <= {"Puma", "Nike"} and body["hits"]
    assert all(h["channels"] == ["lexical"] for h in body["hits"])
    same = client.get("/search", params=[("q", "shoes"), ("filter", "brand=Puma,Nike"), ("channels", "lexical"),
                                         ("k", "50")]).json()  # the CLI's syntax: comma for several values
    assert [h["product_id"] for h in same["hits"]] == [h["product_id"] for h in body["hits"]]
    r = client.get("/search", params={"q": "nike shoes", "filters": '{"gender": ["Women"]}', "off": "brand"})
    fields = {c["field"]: c["source"] for c in r.json()["constraints"]}
    assert fields.get("gender") == "filter" and "brand" not in fields
    r = client.get("/search", params={"q": "nike shoes", "auto": "false"})
    assert r.json()["constraints"] == []


def test_search_post(client):
    r = client.post("/search", json={"q": "shoes", "k": 7, "filters": {"brand": "Nike"},
                                     "channels": ["embedding", "lexical"]})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert 0 < len(hits) <= 7 and all(h["brand"] == "Nike" for h in hits)


BAD_GETS = [
    ({}, "q"),
    ({"q": ""}, "non-empty"),
    ({"q": "   "}, "non-empty"),
    ({"q": "x" * 300}, "at most"),
    ({"q": "shoes", "k": "0"}, "k"),
    ({"q": "shoes", "k": "100000"}, "k"),
    ({"q": "shoes", "k": "many"}, "k"),
    ({"q": "shoes", "filter": "size=XL"}, "size"),
    ({"q": "shoes", "filter": "brandNike"}, "FIELD=VALUE"),
    ({"q": "shoes", "filters": "{not json"}, "JSON"),
    ({"q": "shoes", "filters": "[1, 2]"}, "object"),
    ({"q": "shoes", "channels": "collaborative"}, "channels"),
    ({"q": "shoes", "off": "size"}, "off"),
    ({"q": "shoes", "auto": "perhaps"}, "auto"),
]


@pytest.mark.parametrize("params,word", BAD_GETS)
def test_bad_search_input_is_a_json_4xx(client, params, word):
    r = client.get("/search", params=params)
    assert r.status_code == 400, r.text
    assert word.lower() in r.json()["error"].lower()


def test_non_utf8_query_string_and_body(client):
    r = client.get("/search?q=%FF%FEshoes")
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    r = client.post("/search", content=b'{"q": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and "error" in r.json()
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = client.post("/search", json={"k": 3})
    assert r.status_code == 400 and "q" in r.json()["error"]


def test_products_and_images(client, a_product):
    r = client.get(f"/products/{a_product}")
    assert r.status_code == 200 and r.json()["id"] == a_product and r.json()["image"]
    img = client.get(f"/products/{a_product}/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg" and img.content[:2] == b"\xff\xd8"
    for bad in ("no-such-id", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd"):
        for suffix in ("", "/image"):
            r = client.get(f"/products/{bad}{suffix}")
            assert r.status_code == 404 and "error" in r.json(), (bad, suffix, r.text)


def test_health_page_static_and_docs(client):
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["products"] > 0
    page = client.get("/")
    assert page.status_code == 200 and "search-form" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/products/{product_id}", "/products/{product_id}/image", "/health"} <= set(paths)
    assert client.get("/nowhere").json()["error"]


def test_missing_index_is_an_error_not_a_server(tmp_path):
    with pytest.raises(WorkdirError):
        create_app(tmp_path / "missing")
    with pytest.raises(WorkdirError):
        serve(tmp_path / "missing", port=0)
    with pytest.raises(WorkdirError):
        Engine.open(tmp_path)
