"""Config dataclasses: TOML round trip, presets, and errors that name the file and key."""

from __future__ import annotations

import pytest

from vlsearch.config import PRESETS, Config, ConfigError, preset


def test_toml_round_trip(tmp_path):
    config = preset("tiny")
    config.data.limit = 123
    config.serve.channels = ("embedding",)
    path = tmp_path / "c.toml"
    config.save(path)
    assert Config.load(path) == config


def test_partial_file_keeps_defaults_and_coerces_ints_to_floats(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nlr = 1\nsteps = 7\n")
    config = Config.load(path)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.steps == 7
    assert config.model == Config().model


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[train]\nstepz = 3\n", "stepz"),
        ("[nonsense]\na = 1\n", "nonsense"),
        ("[train]\nsteps = 'many'\n", "steps"),
        ("[model]\nuse_images = 1\n", "use_images"),
        ("[train\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert "bad.toml" in str(info.value) and needle in str(info.value)


def test_presets_apply_and_unknown_preset_is_refused():
    for name in PRESETS:
        assert isinstance(preset(name), Config)
    assert preset("tiny").model.init == "random"
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "absent.toml")
