"""vlsearch.images: image loading, backbones, feature extraction, the resumable feature cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vlsearch import images
from vlsearch.config import ConfigError, ImageConfig
from vlsearch.errors import InputError, WorkdirError
from vlsearch.images import (
    Backbone,
    FeatureCache,
    backbones,
    extract_features,
    extract_product_features,
    features,
    get_backbone,
    load_image,
    register_backbone,
)

RANDOM = ImageConfig(
    backbone="random-cnn", batch_size=3, chunk_size=6, num_threads=1, decode_workers=1
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _draw(path: Path, seed: int, size=(60, 80), mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, size[0] - 10)), int(rng.integers(0, size[1] - 10))
        box = (x0, y0, x0 + int(rng.integers(5, 30)), y0 + int(rng.integers(5, 40)))
        draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    image.convert(mode).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict[str, Path]:
    """12 drawn JPEGs plus a truncated JPEG, a text file named .jpg and a missing path."""
    root = tmp_path_factory.mktemp("drawn")
    files = {f"p{i}": _draw(root / f"p{i}.jpg", i) for i in range(12)}
    whole = (root / "p0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "text.jpg").write_text("not an image", encoding="utf-8")
    files["truncated"] = root / "truncated.jpg"
    files["text"] = root / "text.jpg"
    files["missing"] = root / "missing.jpg"
    return files


@pytest.fixture(scope="module")
def real_paths(fashion_dir) -> list[str]:
    return [str(p) for p in sorted((fashion_dir / "images").glob("*.jpg"))[:8]]


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return get_backbone("efficientnet-lite0", ImageConfig())


# --- loading ------------------------------------------------------------------------------


def test_load_image_converts_to_rgb(tmp_path):
    gray = _draw(tmp_path / "g.png", 1, mode="L")
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red → white
    rgba.save(tmp_path / "a.png")
    assert load_image(gray).mode == "RGB"
    loaded = load_image(tmp_path / "a.png")
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "name, words",
    [("missing", "not found"), ("truncated", "cannot decode"), ("text", "cannot decode")],
)
def test_load_image_errors_name_the_file(drawn, name, words):
    with pytest.raises(InputError, match=words) as info:
        load_image(drawn[name])
    assert str(drawn[name]) in str(info.value)


# --- backbones ----------------------------------------------------------------------------


def test_registry(monkeypatch):
    assert {"efficientnet-lite0", "random-cnn"} <= set(images.backbone_names())
    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        get_backbone("nope")
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    register_backbone("rc-small")(images.RandomCNNBackbone)
    small = get_backbone("rc-small", ImageConfig(width=64, height=32))
    assert small.name == "rc-small" and small.grid == (1, 2) and small.dim == 64
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("random-cnn")(lambda config: None)


def test_random_cnn_is_seeded_and_frozen():
    a, b = get_backbone("random-cnn", RANDOM), get_backbone("random-cnn", RANDOM)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training and a.grid == (4, 3) and a.dim == 64


def test_lite0_shapes_and_preprocessing(lite0, real_paths):
    assert lite0.grid == (4, 3) and lite0.dim == 1280 and lite0.num_patches == 12
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())
    pixels = lite0.preprocess(load_image(real_paths[0]))
    assert pixels.shape == (3, 128, 96) and pixels.dtype == torch.float32
    assert -127 / 128 - 1e-6 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    batch = torch.stack([lite0.preprocess(load_image(p)) for p in real_paths[:4]])
    out = lite0(batch)
    assert out.shape == (4, 12, 1280) and out.dtype == torch.float32 and not out.requires_grad
    with pytest.raises(ValueError, match=r"expected input \[B, 3, 128, 96\]"):
        lite0(torch.zeros(1, 3, 96, 128))


def test_lite0_features_separate_images(lite0, real_paths):
    batch = torch.stack([lite0.preprocess(load_image(p)) for p in [*real_paths[:3], real_paths[0]]])
    out = lite0(batch).flatten(1)
    assert torch.equal(out[0], out[3])  # same image, same vector
    assert torch.allclose(lite0(batch[:1]).flatten(1)[0], out[0], atol=1e-4)  # batch-independent
    unit = torch.nn.functional.normalize(out[:3], dim=1)
    cosine = unit @ unit.T
    assert float(cosine[0, 1]) < 0.95 and float(cosine[0, 2]) < 0.95 and float(cosine[1, 2]) < 0.95


# --- extraction ---------------------------------------------------------------------------


def _ids_paths(drawn, names):
    return names, [None if n == "none" else [str(drawn[n])] for n in names]


def test_bad_files_become_problems(drawn, tmp_path):
    ids, paths = _ids_paths(drawn, ["p0", "truncated", "p1", "missing", "none", "text", "p2"])
    cache = extract_features(ids, paths, tmp_path / "f", RANDOM, progress=False)
    assert cache.complete and cache.n == 7 and cache.grid == (4, 3) and cache.dim == 64
    assert cache.has_image().tolist() == [True, False, True, False, False, False, True]
    assert cache.counts == {"no_image": 1, "failed": 3}
    assert sorted(p.file for p in cache.problems) == sorted(
        str(drawn[n]) for n in ["truncated", "missing", "text"]
    )
    assert all(p.line is None and p.field is None and p.message for p in cache.problems)
    patches = cache.patches()
    assert patches.dtype == np.float16 and patches.shape == (7, 12, 64)
    assert not patches[[1, 3, 4, 5]].any() and all(patches[i].any() for i in [0, 2, 6])
    assert cache.last_run.decoded == 3 and cache.last_run.images_per_second > 0
    np.testing.assert_array_equal(cache.patches([6, 0]), patches[[6, 0]])


def test_identical_images_identical_rows(drawn, tmp_path):
    ids = ["a", "b", "c"]
    paths = [str(drawn["p3"]), str(drawn["p4"]), str(drawn["p3"])]
    patches = extract_features(ids, paths, tmp_path / "f", RANDOM, progress=False).patches()
    assert np.array_equal(patches[0], patches[2]) and not np.array_equal(patches[0], patches[1])


class _Stop(Exception):
    pass


def _raise_after_first_chunk(done: int) -> None:
    raise _Stop(done)


def _files(directory: Path) -> tuple[bytes, dict]:
    meta = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    return (directory / "patches.f16").read_bytes(), meta


def test_resume_after_interrupt_is_byte_identical(drawn, tmp_path):
    good = [f"p{i}" for i in range(12)]
    names = good[:5] + ["truncated"] + good[5:11] + ["missing"] + good[11:]  # bad rows in 2 chunks
    ids, paths = _ids_paths(drawn, names)
    whole = extract_features(ids, paths, tmp_path / "whole", RANDOM, progress=False)
    assert whole.complete

    # killed by a hook after the first durable chunk
    with pytest.raises(_Stop):
        extract_features(
            ids, paths, tmp_path / "hook", RANDOM, progress=False, on_chunk=_raise_after_first_chunk
        )
    partial = FeatureCache.open(tmp_path / "hook")
    assert partial.done == RANDOM.chunk_size and not partial.complete
    with pytest.raises(WorkdirError, match="only 6 of 14 extracted"):
        partial.patches([7])
    resumed = extract_features(ids, paths, tmp_path / "hook", RANDOM, progress=False)
    assert resumed.last_run.resumed_from == 6 and resumed.last_run.images == 8
    assert _files(tmp_path / "hook") == _files(tmp_path / "whole")


def test_resume_after_crash_inside_a_chunk(drawn, tmp_path, monkeypatch):
    names = [f"p{i}" for i in range(12)] + ["missing"]
    ids, paths = _ids_paths(drawn, names)
    extract_features(ids, paths, tmp_path / "whole", RANDOM, progress=False)

    real_load, calls = features.load_image, []

    def crash_at_image_9(path):
        calls.append(path)
        if len(calls) == 9:
            raise RuntimeError("killed")
        return real_load(path)

    monkeypatch.setattr(features, "load_image", crash_at_image_9)
    with pytest.raises(RuntimeError, match="killed"):
        extract_features(ids, paths, tmp_path / "crash", RANDOM, progress=False)
    monkeypatch.setattr(features, "load_image", real_load)
    assert FeatureCache.open(tmp_path / "crash").done == 6
    extract_features(ids, paths, tmp_path / "crash", RANDOM, progress=False)
    assert _files(tmp_path / "crash") == _files(tmp_path / "whole")


def test_resume_with_real_backbone(lite0, real_paths, tmp_path):
    config = ImageConfig(batch_size=2, chunk_size=4, num_threads=1)
    ids = [Path(p).stem for p in real_paths[:6]]
    extract_features(
        ids, real_paths[:6], tmp_path / "whole", config, progress=False, backbone=lite0
    )
    with pytest.raises(_Stop):
        extract_features(
            ids,
            real_paths[:6],
            tmp_path / "cut",
            config,
            progress=False,
            backbone=lite0,
            on_chunk=_raise_after_first_chunk,
        )
    cache = extract_features(
        ids, real_paths[:6], tmp_path / "cut", config, progress=False, backbone=lite0
    )
    assert cache.last_run.resumed_from == 4 and cache.has_image().all()
    assert _files(tmp_path / "cut") == _files(tmp_path / "whole")


def test_decode_workers_do_not_change_bytes(drawn, tmp_path):
    ids, paths = _ids_paths(drawn, [f"p{i}" for i in range(8)] + ["text"])
    for workers in (0, 3):
        config = ImageConfig(**{**RANDOM.__dict__, "decode_workers": workers})
        extract_features(ids, paths, tmp_path / str(workers), config, progress=False)
    assert _files(tmp_path / "0") == _files(tmp_path / "3")


def test_second_call_does_no_work(drawn, tmp_path, monkeypatch):
    ids, paths = _ids_paths(drawn, ["p0", "p1", "missing"])
    first = extract_features(ids, paths, tmp_path / "f", RANDOM, progress=False)

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward pass or backbone load happened")

    monkeypatch.setattr(Backbone, "forward", no_forward)
    monkeypatch.setattr(features, "get_backbone", no_forward)
    again = extract_features(ids, paths, tmp_path / "f", RANDOM, progress=False, overwrite=True)
    assert again.last_run.images == 0 and again.complete
    np.testing.assert_array_equal(again.patches(), first.patches())
    assert [str(p) for p in again.problems] == [str(p) for p in first.problems]


def test_other_settings_or_ids_are_refused(drawn, tmp_path):
    ids, paths = _ids_paths(drawn, ["p0", "p1"])
    extract_features(ids, paths, tmp_path / "f", RANDOM, progress=False)
    wider = ImageConfig(**{**RANDOM.__dict__, "width": 128})
    with pytest.raises(WorkdirError, match=r"width 96 \(wanted 128\).*overwrite=True"):
        extract_features(ids, paths, tmp_path / "f", wider, progress=False)
    with pytest.raises(WorkdirError, match="ids differ first at row 1: 'p1' \\(wanted 'x'\\)"):
        extract_features(["p0", "x"], paths, tmp_path / "f", RANDOM, progress=False)
    rebuilt = extract_features(ids, paths, tmp_path / "f", wider, progress=False, overwrite=True)
    assert rebuilt.grid == (4, 4) and rebuilt.last_run.images == 2


def test_bad_arguments(drawn, tmp_path):
    with pytest.raises(InputError, match="2 ids but 1 image path"):
        extract_features(["a", "b"], [None], tmp_path / "f", RANDOM, progress=False)
    with pytest.raises(InputError, match="'a' at rows 0 and 1"):
        extract_features(["a", "a"], [None, None], tmp_path / "f", RANDOM, progress=False)


def test_products_and_thread_count_restored(drawn, tmp_path):
    @dataclass
    class Item:
        id: str
        image_paths: list[str]

    items = [Item("7", [str(drawn["p5"]), str(drawn["p6"])]), Item("8", [])]
    threads = torch.get_num_threads()
    cache = extract_product_features(
        items, tmp_path / "f", ImageConfig(**{**RANDOM.__dict__, "num_threads": 2}), progress=False
    )
    assert torch.get_num_threads() == threads
    assert cache.ids == ["7", "8"] and cache.has_image().tolist() == [True, False]
    assert extract_features([], [], tmp_path / "empty", RANDOM, progress=False).patches().shape == (
        0,
        12,
        64,
    )


def test_open_validates(drawn, tmp_path):
    with pytest.raises(WorkdirError, match=r"index\.json: file not found"):
        FeatureCache.open(tmp_path / "nothing")
    ids, paths = _ids_paths(drawn, ["p0", "p1"])
    extract_features(ids, paths, tmp_path / "f", RANDOM, progress=False)
    data = tmp_path / "f" / "patches.f16"
    data.write_bytes(data.read_bytes()[:-2])
    with pytest.raises(WorkdirError, match=r"patches\.f16: 3070 bytes, expected 3072"):
        FeatureCache.open(tmp_path / "f")
    data.unlink()
    with pytest.raises(WorkdirError, match=r"patches\.f16: file not found"):
        FeatureCache.open(tmp_path / "f")
    index = tmp_path / "f" / "index.json"
    meta = json.loads(index.read_text(encoding="utf-8"))
    meta["has_image"] = [True]
    index.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(WorkdirError, match="n = 2 but 2 ids and 1 has_image"):
        FeatureCache.open(tmp_path / "f")


# --- colour histograms --------------------------------------------------------------------


def test_colour_histogram_of_solid_and_split_images():
    from vlsearch.images.colour import colour_histograms

    red = torch.zeros(1, 3, 8, 6)
    red[:, 0] = 1.0
    hist = colour_histograms(red, 4, (2, 3))
    assert hist.shape == (1, 64, 2, 3)
    assert torch.allclose(hist[0, 3 * 16], torch.ones(2, 3))  # cell (r=3, g=0, b=0) holds every pixel
    assert torch.allclose(hist.square().sum(1), torch.ones(1, 2, 3))  # unit norm per patch
    half = torch.zeros(1, 3, 8, 6)
    half[:, :, :, :3] = 1.0  # white left half, black right half; a 1 x 2 grid tells them apart
    left, right = colour_histograms(half, 4, (1, 2))[0, :, 0].T
    assert left[63] == pytest.approx(1.0) and right[0] == pytest.approx(1.0)
    grey = torch.full((1, 3, 4, 4), 0.5)  # between levels 1/3 and 2/3: shared by the 8 cells around it
    values = colour_histograms(grey, 4, (1, 1)).flatten().square()
    assert int((values > 0).sum()) == 8 and values.sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="colour_levels"):
        colour_histograms(red, 1, (1, 1))


def test_backbone_appends_colour_histograms_and_caches_record_them(drawn, tmp_path):
    plain = get_backbone("random-cnn", RANDOM)
    coloured = get_backbone("random-cnn", ImageConfig(**{**RANDOM.__dict__, "colour_levels": 3}))
    assert coloured.dim == plain.dim + 27 and coloured.describe()["colour_levels"] == 3
    assert "colour_levels" not in plain.describe()  # off: the description (and caches) as before
    pixels = torch.stack([plain.preprocess(load_image(drawn["p0"])), plain.preprocess(load_image(drawn["p1"]))])
    a, b = plain(pixels), coloured(pixels)
    assert torch.equal(b[..., :plain.dim], a)  # the CNN part is untouched
    assert torch.allclose(b[..., plain.dim:].square().sum(-1), torch.ones(2, plain.num_patches), atol=1e-5)
    with pytest.raises(ConfigError, match="colour_levels"):
        get_backbone("random-cnn", ImageConfig(**{**RANDOM.__dict__, "colour_levels": 1}))

    ids, paths = _ids_paths(drawn, ["p0", "p1"])
    config = ImageConfig(**{**RANDOM.__dict__, "colour_levels": 3})
    cache = extract_features(ids, paths, tmp_path / "f", config, progress=False)
    assert cache.dim == coloured.dim and cache.colour_levels == 3
    np.testing.assert_allclose(cache.patches(np.array([0, 1])), b.numpy(), atol=2e-3)  # float16 rows
    with pytest.raises(WorkdirError, match="colour_levels 3 \\(wanted 0\\)"):
        extract_features(ids, paths, tmp_path / "f", RANDOM, progress=False)
    plain_cache = extract_features(ids, paths, tmp_path / "plain", RANDOM, progress=False)
    assert plain_cache.colour_levels == 0
    assert "colour_levels" not in json.loads((tmp_path / "plain" / "index.json").read_text())
