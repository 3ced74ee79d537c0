"""Loading and dumping configs: lossless round trips, errors with the file and field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import config_dicts
from hypothesis import given

from unetgen import ConfigError, UNetConfig, dump_config, load_config


@given(config_dicts())
def test_round_trip_json_and_yaml(tmp_path_factory: pytest.TempPathFactory, data: dict) -> None:
    config = UNetConfig.model_validate(data)
    folder = tmp_path_factory.mktemp("rt")
    for name in ("c.json", "c.yaml", "c.yml"):
        dump_config(config, folder / name)
        again = load_config(folder / name)
        assert again == config and again.layout == config.layout


def test_sources(tmp_path: Path) -> None:
    c = UNetConfig(depth=3)
    assert load_config(c) is c
    assert load_config({"depth": 3}) == c
    (tmp_path / "c.json").write_text(json.dumps({"$schema": "x.json", "depth": 3}))
    assert load_config(tmp_path / "c.json") == c  # the "$schema" key is accepted and ignored
    assert load_config(str(tmp_path / "c.json")) == c


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("depth: 3\nchanels: 32\n", r"c\.yaml:2:1: chanels: unknown field 'chanels'; did you mean 'channels'"),
        ("norm: {type: group, num_groups: 0}\n", r"c\.yaml:1:\d+: norm\.num_groups: Input should be greater"),
        ("- 1\n- 2\n", "a config is a mapping of fields, not a list"),
        ("depth: [\n", "c\\.yaml:2:1: .*YAML"),
        ("!!python/object/apply:os.system ['true']\n", "tag !!python/object/apply:os.system is not allowed"),
    ],
)
def test_errors_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config file type '\.toml'"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
