"""Hardening (issue 11): each defect found by fuzzing and fault injection as a regression test,
the OpenAPI contract, artifact permissions, the uvicorn limits, and the live server fuzzed
by schemathesis (bounded) with every check."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from index_helpers import HashEncoder, sample_index, synthetic_products, synthetic_queries

from vlsearch.catalog import load_catalog
from vlsearch.cli import main as cli
from vlsearch.config import IndexConfig, ServeConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.serving.app import create_app
from vlsearch.serving.engine import Engine
from vlsearch.validation import TextLimits, json_depth, parse_int


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_catalog_dir):
    return sample_index(tmp_path_factory, sample_catalog_dir)


@pytest.fixture(scope="module")
def client(built):
    with TestClient(create_app(built[0]), raise_server_exceptions=False) as c:
        yield c


def _json_post(client, raw: bytes):
    return client.post("/search", content=raw, headers={"content-type": "application/json"})


# ------------------------------------------------------------------ defects 1-3: the validation layer

DEEP_FILTERS = ["%5B" * 1000 + "%5D" * 1000, "%7B%22a%22%3A" * 1000 + "1" + "%7D" * 1000]


@pytest.mark.parametrize("filters", DEEP_FILTERS, ids=["arrays", "objects"])
def test_deeply_nested_filters_are_400(client, filters):
    r = client.get(f"/search?q=shoes&filters={filters}")
    assert r.status_code == 400 and "nested deeper" in r.json()["error"], r.text


def test_deeply_nested_body_is_400(client):
    r = _json_post(client, b'{"q": "shoes", "filters": ' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert r.status_code == 400 and "nested deeper" in r.json()["error"], r.text


@pytest.mark.parametrize("request_kind", ["get-json", "post"])
def test_lone_surrogate_in_a_filter_value_is_400(client, request_kind):
    if request_kind == "get-json":
        r = client.get("/search?q=shoes&filters=%7B%22brand%22%3A%22%5Cud800%22%7D")
    else:
        r = _json_post(client, b'{"q":"shoes","filters":{"brand":"\\ud800"}}')
    assert r.status_code == 400 and "surrogate" in r.json()["error"], r.text
    assert "\\ud800" in r.json()["error"]  # shown escaped, so the answer is valid UTF-8


@pytest.mark.parametrize("raw", [b'{"q":"\\ud800"}', b'{"q":"red \\udc80 dress"}',
                                 b'{"q":"shoes","filters":{"\\ud800":"Nike"}}'])
def test_lone_surrogate_in_the_query_or_a_field_name_is_400(client, raw):
    r = _json_post(client, raw)
    assert r.status_code == 400 and "surrogate" in r.json()["error"], r.text


def test_the_library_and_the_cli_use_the_same_validation(built, capsys):
    engine = Engine.open(built[0])
    for text in ("\ud800", "red \udc80 dress"):
        with pytest.raises(InputError, match="surrogate"):
            engine.search(text, k=3)
    with pytest.raises(InputError, match="surrogate"):
        engine.search("shoes", k=3, filters={"brand": ["\ud800"]})
    with pytest.raises(InputError, match="nested|values must be text"):
        engine.search("shoes", k=3, filters={"brand": [["Nike"]]})
    # argv with bytes that are not UTF-8 arrives as lone surrogates (surrogateescape)
    assert cli(["search", "--index", str(built[0]), "--query", "red \udc80 dress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "surrogate" in err
    assert cli(["search", "--index", str(built[0]), "--query", "shoes",
                "--filter", "brand=\udcff"]) == 2
    assert "surrogate" in capsys.readouterr().err


def test_validation_units():
    limits = TextLimits()
    assert json_depth('{"a": "[[[[", "b": [[1]]}') == 3
    assert json_depth('["\\"[[[["]') == 1
    assert json_depth(b"[" * 100_000, stop_above=8) == 9
    for good, value in (("5", 5), ("1000", 1000)):
        assert parse_int(good, "k", 1, 1000) == value
    for bad in ("+5", " 5", "5 ", "1_000", "5.0", "\u0665", "-1", "0", "1001", "9" * 40):
        with pytest.raises(InputError, match="k"):
            parse_int(bad, "k", 1, 1000)
    assert limits.max_json_depth == ServeConfig().max_json_depth


@pytest.mark.parametrize("k", ["+5", " 5", "1_000", "5.0"])
def test_k_is_parsed_strictly(client, k):
    r = client.get("/search", params={"q": "shoes", "k": k})
    assert r.status_code == 400 and "k" in r.json()["error"], r.text


def test_k_in_a_body_is_a_json_integer(client):
    assert client.post("/search", json={"q": "shoes", "k": "5"}).status_code == 400
    assert client.post("/search", json={"q": "shoes", "k": 5.5}).status_code == 400
    assert client.post("/search", json={"q": "shoes", "k": True}).status_code == 400
    r = client.post("/search", json={"q": "shoes", "k": 3.0})  # JSON Schema: an integer
    assert r.status_code == 200 and len(r.json()["hits"]) <= 3


def test_cli_k_is_parsed_strictly(built, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["search", "--index", str(built[0]), "--query", "shoes", "--k", "+5"])
    assert exit_.value.code == 2 and "digits" in capsys.readouterr().err


# ------------------------------------------------------------------ defect 4: the CSV reading loop


def test_a_bad_csv_row_in_the_middle_keeps_every_good_row_after_it(sample_catalog_dir, tmp_path):
    shutil.copytree(sample_catalog_dir / "images", tmp_path / "images", symlinks=True)
    lines = (sample_catalog_dir / "styles.csv").read_bytes().splitlines(keepends=True)
    assert len(lines) > 20
    fields = lines[5].split(b",")
    fields[-1] = b"Puma\rMen " + fields[-1]  # a carriage return inside an unquoted title
    lines[5] = b",".join(fields)
    fields = lines[9].split(b",")
    fields[-1] = b"x" * 140_000 + b"\n"  # a field over the csv module's 131,072-char limit
    lines[9] = b",".join(fields)
    (tmp_path / "styles.csv").write_bytes(b"".join(lines))
    original = load_catalog(sample_catalog_dir)
    loaded = load_catalog(tmp_path)
    report = loaded.report
    assert report.rows_read == original.report.rows_read
    assert report.malformed == original.report.malformed + 2, report.summary()
    assert {(p.line, p.field) for p in report.problems if "not valid CSV" in p.message} == {
        (6, None), (10, None)}
    assert all(str(tmp_path / "styles.csv") == p.file for p in report.problems
               if "not valid CSV" in p.message)
    bad_ids = {lines[5].split(b",")[0].decode(), lines[9].split(b",")[0].decode()}
    expected = [p.id for p in original.products if p.id not in bad_ids]
    assert [p.id for p in loaded.products] == expected  # every row after the bad ones is kept


# ------------------------------------------------------------------ defect 5: index-loading errors


def _copy_index(index_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy, symlinks=True)
    return copy, copy / os.readlink(copy / "current")


def _corrupt_vectors(version: Path) -> str:
    os.truncate(version / "vectors.npy", 5000 if (version / "vectors.npy").stat().st_size > 5000 else 100)
    return "vectors.npy"


def _garbage_products(version: Path) -> str:
    (version / "products.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
    return "products.parquet"


def _garbage_lexicon(version: Path) -> str:
    (version / "lexicon.json").write_text('{"phrases": 5}')
    return "lexicon.json"


@pytest.mark.parametrize("corrupt", [_corrupt_vectors, _garbage_products, _garbage_lexicon],
                         ids=["truncated-vectors", "garbage-products", "wrong-lexicon"])
def test_a_corrupt_index_file_is_named_on_one_line(built, tmp_path, capsys, corrupt):
    copy, version = _copy_index(built[0], tmp_path)
    name = corrupt(version)
    with pytest.raises(WorkdirError, match=name):
        Engine.open(copy)
    assert cli(["search", "--index", str(copy), "--query", "shoes"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(version / name) in err, err


# ------------------------------------------------------------------ defect 6: the body cap


def test_a_1mb_body_gets_413(client):
    r = _json_post(client, b'{"q": "' + b"x" * (1 << 20) + b'"}')
    assert r.status_code == 413 and "65536 bytes" in r.json()["error"], r.text
    r = client.post("/search", json={"q": "shoes", "k": 3})
    assert r.status_code == 200  # a normal body still passes


def test_the_body_cap_comes_from_config(built):
    config = ServeConfig(max_body_bytes=100)
    with TestClient(create_app(built[0], config=config), raise_server_exceptions=False) as c:
        assert c.post("/search", json={"q": "x" * 150}).status_code == 413
        assert c.post("/search", json={"q": "shoes"}).status_code == 200


# ------------------------------------------------------------------ defect 7: image confinement


@pytest.fixture
def image_index(built, tmp_path):
    """A copy of the sample index whose first three products' images live in tmp/catalog."""
    copy, version = _copy_index(built[0], tmp_path)
    table = pq.read_table(version / "products.parquet")
    paths = table.column("image_path").to_pylist()
    rows = [i for i, p in enumerate(paths) if p][:3]
    images = tmp_path / "catalog" / "images"
    images.mkdir(parents=True)
    new = [None] * len(paths)
    for row in rows:
        new[row] = str(images / Path(paths[row]).name)
        shutil.copyfile(paths[row], new[row])
    table = table.set_column(table.schema.get_field_index("image_path"), "image_path",
                             pa.array(new, pa.string()))
    pq.write_table(table, version / "products.parquet")
    ids = table.column("id").to_pylist()
    engine = Engine.open(copy)
    with TestClient(create_app(engine=engine), raise_server_exceptions=False) as c:
        yield c, [(ids[r], Path(new[r])) for r in rows]


def test_a_symlinked_image_is_refused(image_index):
    client, products = image_index
    (a, a_path), (b, b_path), (c, c_path) = products
    assert client.get(f"/products/{a}/image").status_code == 200
    a_path.unlink()
    a_path.symlink_to("/etc/passwd")  # replaced after indexing
    r = client.get(f"/products/{a}/image")
    assert r.status_code == 404 and "root:" not in r.text and "error" in r.json()
    b_path.unlink()
    b_path.symlink_to(c_path)  # a link that stays inside the catalog is fine
    r = client.get(f"/products/{b}/image")
    assert r.status_code == 200 and r.content == c_path.read_bytes()
    c_path.unlink()
    c_path.mkdir()  # a directory where the image was
    assert client.get(f"/products/{c}/image").status_code == 404


@pytest.mark.slow
def test_an_image_that_failed_to_decode_at_prepare_time_is_not_served(tmp_path):
    from vlsearch.config import preset
    from vlsearch.index.builder import build_index
    from vlsearch.model import Retriever
    from vlsearch.sample import write_sample_catalog
    from vlsearch.workdir import Workdir, prepare

    write_sample_catalog(tmp_path / "catalog", n_products=60, seed=1)
    victim = min((tmp_path / "catalog" / "images").iterdir())
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated JPEG
    config = preset("tiny")
    config.images.backbone = "random-cnn"
    prepare(tmp_path / "catalog", tmp_path / "work", config, progress=False, log=lambda _: None)
    Retriever.build(config, Workdir.open(tmp_path / "work")).save(tmp_path / "model")
    config.index.kind = "flat"
    build_index(tmp_path / "work", tmp_path / "model", tmp_path / "index", config.index, progress=False)
    with TestClient(create_app(tmp_path / "index"), raise_server_exceptions=False) as c:
        pid = victim.stem
        info = c.get(f"/products/{pid}").json()
        assert info["has_image"] is False and info["image"] is None
        assert c.get(f"/products/{pid}/image").status_code == 404


# ------------------------------------------------------------------ defect 8: uvicorn limits


@contextlib.contextmanager
def live_server(app, config: ServeConfig):
    """The app under uvicorn (with ``serving.server`` options) on a free loopback port."""
    import uvicorn

    from vlsearch.serving.server import uvicorn_options

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           **uvicorn_options(config)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_half_open_connections_are_closed_after_the_head_timeout(built):
    config = ServeConfig(timeout_header=0.5, timeout_keep_alive=1)
    with live_server(create_app(built[0], config=config), config) as (_, port):
        silent = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        assert _closed_within(silent, 5) and _closed_within(partial, 5)
        ok = socket.create_connection(("127.0.0.1", port))
        ok.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        ok.settimeout(10)
        assert ok.recv(4096).startswith(b"HTTP/1.1 200")
        for s in (silent, partial, ok):
            s.close()


def test_uvicorn_options_come_from_config():
    from vlsearch.serving.server import uvicorn_options

    config = ServeConfig(timeout_keep_alive=7, limit_concurrency=9, backlog=11,
                         max_header_bytes=1234, timeout_header=2.5)
    options = uvicorn_options(config)
    assert options["timeout_keep_alive"] == 7 and options["limit_concurrency"] == 9
    assert options["backlog"] == 11 and options["h11_max_incomplete_event_size"] == 1234
    assert options["http"] == "vlsearch.serving.server:HeadTimeoutH11Protocol"
    assert os.environ["VLSEARCH_SERVE_HEAD_TIMEOUT"] == "2.5"


# ------------------------------------------------------------------ the OpenAPI contract


def test_the_openapi_contract_declares_bounds_errors_and_types(client):
    doc = client.get("/openapi.json").json()
    get = doc["paths"]["/search"]["get"]
    params = {p["name"]: p for p in get["parameters"]}
    config = ServeConfig()
    assert params["q"]["schema"]["minLength"] == 1
    assert params["q"]["schema"]["maxLength"] == config.max_query_chars
    assert params["k"]["schema"] == {**params["k"]["schema"], "type": "integer", "minimum": 1,
                                     "maximum": config.max_k}
    assert "application/json" in params["filters"]["content"]
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            assert "422" not in codes, (path, method)
            assert {"200", "405"} <= codes, (path, method)
            for code in codes - {"200"}:
                ref = operation["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (path, method, code)
    assert {"400", "413", "503"} <= set(get["responses"])
    assert "404" in doc["paths"]["/products/{product_id}"]["get"]["responses"]
    schemas = doc["components"]["schemas"]
    assert {"HitOut", "ConstraintOut", "SearchResponse", "ProductOut", "ErrorBody"} <= set(schemas)
    ok = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/SearchResponse")
    assert schemas["SearchRequest"]["additionalProperties"] is False


def test_405_names_every_allowed_method(client):
    r = client.delete("/search")
    assert r.status_code == 405 and r.json()["error"]
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    r = client.post("/health")
    assert r.status_code == 405 and "GET" in r.headers["allow"]


def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text.split("<body>")[0]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = client.get(f"/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000


def test_responses_are_validated_against_their_models(client):
    from vlsearch.serving.schema import HitOut, SearchResponse

    body = client.get("/search", params={"q": "nike shoes", "k": 3}).json()
    assert set(body) == set(SearchResponse.model_fields)  # what the engine sends is declared
    assert set(body["hits"][0]) == set(HitOut.model_fields)
    SearchResponse.model_validate(body)


# ------------------------------------------------------------------ permissions of artifacts


def _unreadable(root: Path) -> list[str]:
    bad = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        need = 0o055 if path.is_dir() else 0o044
        if mode & need != need:
            bad.append(f"{path.relative_to(root)} {oct(mode)}")
    return bad


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_model_checkpoint_and_index_files_are_readable_by_group_and_other(built, tmp_path, umask_022):
    import torch

    from vlsearch.index.builder import build_index_from_parts
    from vlsearch.model import Retriever
    from vlsearch.text import query_id
    from vlsearch.training import save_checkpoint

    model = Retriever.load(built[2])
    model.save(tmp_path / "model")
    assert _unreadable(tmp_path / "model") == []
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == 0o644
    save_checkpoint(tmp_path / "ckpt", 3, {"w": torch.zeros(2)}, {"optimizer": {}}, keep=2)
    assert _unreadable(tmp_path / "ckpt") == []
    legacy = tmp_path / "legacy-model"  # written 0600/0700 by an older vlsearch
    shutil.copytree(tmp_path / "model", legacy)
    for path in [legacy, *legacy.iterdir()]:
        os.chmod(path, 0o700 if path.is_dir() else 0o600)
    products = synthetic_products(60)
    encoder, queries = HashEncoder(), synthetic_queries(products)
    build_index_from_parts(
        tmp_path / "index", products, lambda a, b: encoder.encode_products(products[a:b]),
        encoder.encode_queries, queries, [query_id(q) for q in queries],
        config=IndexConfig(kind="flat"), model_dir=legacy, progress=False)
    assert _unreadable(tmp_path / "index") == []


@pytest.mark.slow
def test_resume_with_every_checkpoint_corrupt_says_so(built, tmp_path, capsys):
    from vlsearch.config import preset
    from vlsearch.training import CheckpointError, list_checkpoints, train

    config = preset("tiny")
    config.images.backbone = "random-cnn"
    for key, value in {"steps": 4, "batch_size": 8, "memory_bank_batches": 2, "eval_every": 0,
                       "eval_at_start": False, "eval_k": 10, "checkpoint_every": 2,
                       "num_threads": 1}.items():
        setattr(config.train, key, value)
    train(built[1], config, tmp_path / "run", steps=4, progress=False)
    checkpoints = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(checkpoints) == 2
    for checkpoint in checkpoints:
        tensors = checkpoint / "tensors.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="all 2 checkpoints are corrupt"):
        train(built[1], config, tmp_path / "run", resume=True, progress=False)


# ------------------------------------------------------------------ schemathesis against the live app


@pytest.mark.slow
def test_schemathesis_finds_nothing_on_the_live_app(built, tmp_path):
    """Every check, 100 examples per operation (coverage, fuzzing and stateful phases): no 5xx,
    no response outside the schema, no undocumented status, no valid request refused."""
    config = ServeConfig()
    with live_server(create_app(built[0], config=config), config) as (url, _):
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
             "--checks", "all", "--max-examples", "100", "--seed", "11", "--workers", "1",
             "--phases", "examples,coverage,fuzzing,stateful", "--generation-database", "none",
             "--no-color", "--request-timeout", "30"],
            check=False, capture_output=True, text=True, timeout=840, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Tested:" in result.stdout and "No issues found" in result.stdout, result.stdout[-3000:]
