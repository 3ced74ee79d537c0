"""Config files: the committed JSON Schema, the examples, `unetgen validate` and its positions,
"did you mean", cross-field problems, YAML/JSON hazards, and the CLI's schema/presets/trace."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from unetgen import ConfigError, UNetConfig, load_config
from unetgen.cli import main
from unetgen.config.documents import MAX_BYTES, MAX_NODES
from unetgen.config.presets import PRESETS
from unetgen.config.schema import SCHEMA_PATH, schema_text

ROOT = Path(__file__).resolve().parents[1]
NORM_TAGS = "(one of: none, batch, instance, group, layer)"
MARKER = "# yaml-language-server: $schema=../schemas/unet-config.schema.json"
LINE = re.compile(r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<field>[^:]+): (?P<message>.+)$")


def problems(tmp_path: Path, name: str, text: str | bytes) -> list[str]:
    """The problem lines of a config file (load_config must refuse it)."""
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = [str(p) for p in info.value.problems]
    assert lines and str(info.value) == "\n".join(lines)
    assert all(LINE.match(line) for line in lines), lines
    return [line.removeprefix(f"{path}:") for line in lines]


# ---------------------------------------------------------------------------------------------
# schema and examples


def test_committed_schema_is_current() -> None:
    committed = (ROOT / SCHEMA_PATH).read_text(encoding="utf-8")
    assert committed == schema_text(), f"{SCHEMA_PATH} is stale; run: unetgen schema > {SCHEMA_PATH}"
    schema = json.loads(committed)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["norm"]["anyOf"][0]["enum"] == ["batch", "group", "instance", "layer", "none"]
    assert schema["properties"]["depth"]["maximum"] == 8 and schema["properties"]["depth"]["default"] == 4
    assert "description" in schema["properties"]["channels"]


def test_examples_point_at_the_schema_and_validate() -> None:
    validator = Draft202012Validator(json.loads((ROOT / SCHEMA_PATH).read_text(encoding="utf-8")))
    files = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            assert json.loads(text).get("$schema") == "../schemas/unet-config.schema.json", path
        else:
            assert text.splitlines()[0] == MARKER, f"{path} must start with {MARKER!r}"
        assert main(["validate", str(path)]) == 0
        from unetgen.config.io import read_document

        validator.validate(read_document(path))


def test_json_schema_key_is_accepted_and_must_be_a_string(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"$schema": "../schemas/unet-config.schema.json", "depth": 3}))
    assert load_config(path) == UNetConfig(depth=3)
    [line] = problems(tmp_path, "b.json", '{\n  "$schema": 3}')
    assert line == "2:3: $schema: must be a string (the schema's URL or path), got 3"


# ---------------------------------------------------------------------------------------------
# unetgen validate


BROKEN = f"""{MARKER}
depth: 4
chanels: 32
norm: grop
padding: vaild
kernel_size: [3, "a", 3, 3, 3]
activation: {{type: leaky_relu, negative_slop: 0.1}}
dropout:
  rate: 1.5
in_channels: "3"
"""


def test_validate_prints_one_line_per_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text(BROKEN)
    good.write_text("depth: 3\n")
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out == ""
    assert main(["validate", str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{bad}:3:1: chanels: unknown field 'chanels'; did you mean 'channels'?",
        f"{bad}:4:1: norm: unknown norm type 'grop'; did you mean 'group'? {NORM_TAGS}",
        f"{bad}:5:1: padding: Input should be 'valid' or 'same', got 'vaild'; did you mean 'valid'?",
        f"{bad}:6:18: kernel_size[1]: Input should be a valid integer or a valid array, got 'a'",
        f"{bad}:7:32: activation.negative_slop: unknown field 'negative_slop'; did you mean 'negative_slope'?",
        f"{bad}:9:3: dropout.rate: Input should be less than 1, got 1.5",
        f"{bad}:10:1: in_channels: Input should be a valid integer, got '3'",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert [str(p) for p in info.value.problems] == out
    assert (info.value.problems[1].line, info.value.problems[1].column, info.value.problems[1].field) == (4, 1, "norm")


def test_json_positions_and_tags(tmp_path: Path) -> None:
    text = '{\n  "depth": 4,\n  "norm": {"type": "grop"},\n  "merge": {"inter_channels": 4},\n  "up": 7,\n'
    text += '  "dropout": {"rat": 0.1}\n}'
    assert problems(tmp_path, "c.json", text) == [
        f"3:12: norm.type: unknown norm type 'grop'; did you mean 'group'? {NORM_TAGS}",
        "4:3: merge: merge needs a 'type' key naming one of: concat, add, attention",
        "5:3: up: up should be one of 'transpose', 'nearest', 'linear', 'pixelshuffle' "
        "or a mapping with a 'type' key, got 7",
        "6:15: dropout.rat: unknown field 'rat'; did you mean 'rate'?",
    ]


def test_files_are_strict_about_types(tmp_path: Path) -> None:
    assert problems(tmp_path, "a.yaml", 'depth: "4"\n') == ["1:1: depth: Input should be a valid integer, got '4'"]
    assert problems(tmp_path, "b.json", '{"spatial_dims": true}') == [
        "1:2: spatial_dims: spatial_dims must be 1, 2 or 3, not the boolean true"
    ]
    assert problems(tmp_path, "c.yaml", "bias: 1\n") == ["1:1: bias: Input should be a valid boolean, got 1"]
    assert load_config({"depth": "4"}) == UNetConfig(depth=4)  # Python mappings stay lax


def test_cross_field_problems_name_every_field(tmp_path: Path) -> None:
    [line] = problems(tmp_path, "a.yaml", "depth: 2\nbase_channels: 32\nchannels: [64, 128, 256]\n")
    assert line.startswith("3:1: channels, base_channels, channel_multiplier, depth: channels=[64, 128, 256] contra")
    [line] = problems(tmp_path, "b.yaml", "padding: same\ndepth: 2\nchannels: [8, 16]\n")
    assert line.startswith("3:1: channels, depth: channels has 2 entries but needs 3")
    [line] = problems(tmp_path, "c.yaml", "base_channels: 12\nnorm: {type: group, num_groups: 8}\n")
    assert line.startswith("2:1: norm, base_channels: norm.num_groups=8 does not divide the channel count(s)")
    [line] = problems(tmp_path, "d.yaml", "depth: 2\nmerge: add\nup_channels: keep\n")
    assert line.startswith("2:1: merge, up_channels: merge='add' needs equal channels")


def test_presets_load_by_name() -> None:
    assert load_config("ronneberger2015") == UNetConfig()
    assert load_config("ronneberger2015-batchnorm").norm.type == "batch"
    with pytest.raises(ConfigError, match="nor a preset"):
        load_config("ronneberger2016")


# ---------------------------------------------------------------------------------------------
# hazards: refused with a position, quickly, in little memory

HAZARDS = [
    ("tag.yaml", "depth: !!python/object/apply:os.system ['ls']\n", "1:8: (file): the YAML tag !!python/object/apply"),
    ("tag2.yaml", "!!python/name:os.system\n", "1:1: (file): the YAML tag !!python/name:os.system is not allowed"),
    ("binary.yaml", "norm: !!binary aGVsbG8=\n", "1:7: (file): the YAML tag !!binary is not allowed"),
    ("dup.yaml", "depth: 3\nnorm: batch\ndepth: 4\n", "3:1: (file): duplicate key 'depth' (first at line 1, column 1)"),
    ("dup.json", '{"norm": {"type": "group",\n "type": "batch"}}', "2:2: (file): duplicate key 'type' (first at"),
    ("merge.yaml", "base: &b {depth: 3}\n<<: *b\n", "2:1: (file): YAML merge keys (<<) are not supported"),
    ("self.yaml", "channels: &a [1, *a]\n", "(file): the document is nested deeper than 32 levels"),
    ("deep.json", "[" * 40 + "]" * 40, "1:33: (file): the document is nested deeper than 32 levels"),
    ("deep.yaml", "a: " + "[" * 5000, "(file): the document is nested deeper than 32 levels"),
    ("nan.json", '{"norm": {"type": "batch", "eps": NaN}}', "(file): not valid JSON: NaN is not a JSON number"),
    ("empty.yaml", "", "1:1: (file): the file is empty"),
    ("comment.yaml", "# nothing\n", "1:1: (file): the file holds no YAML document"),
    ("list.json", "[1, 2]", "1:1: (config): a config is a mapping of fields, not a list"),
    ("scalar.yaml", "unet\n", "1:1: (config): a config is a mapping of fields, not a str"),
    ("two.yaml", "depth: 3\n---\ndepth: 4\n", "2:1: (file): not valid YAML: but found another document"),
    ("syntax.json", '{"depth": 3,}', "1:13: (file): not valid JSON: Expecting property name"),
    ("junk.yaml", b"\xff\xfe\x00\x01depth", "1:1: (file): the file is not UTF-8 text"),
    ("long.yaml", "depth: " + "9" * 5000 + "\n", "1:8: (file): the number 999999999999... has thousands of digits"),
    ("config.toml", "depth = 3\n", "1:1: (file): unknown config file type '.toml'"),
]


@pytest.mark.parametrize(("name", "text", "expected"), HAZARDS, ids=[h[0] for h in HAZARDS])
def test_hazards_are_refused_with_a_position(tmp_path: Path, name: str, text: str | bytes, expected: str) -> None:
    [line] = problems(tmp_path, name, text)
    assert expected in line, line


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


WORST = [
    ("bomb.yaml", _bomb()),  # 9**9 strings if expanded
    ("wide.json", "[" + ",".join(["{}"] * (MAX_BYTES // 3 - 1)) + "]"),
    ("wide.yaml", "- {}\n" * (MAX_BYTES // 5)),
    ("big.yaml", "depth: 4\n" + "#" * MAX_BYTES),
]


@pytest.mark.parametrize(("name", "text"), WORST, ids=[w[0] for w in WORST])
def test_worst_cases_stop_fast_in_little_memory(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10  # typically well under a second, even under tracemalloc
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB"
    assert re.search(rf"more than {MAX_NODES} values|larger than {MAX_BYTES} bytes", str(info.value))


# ---------------------------------------------------------------------------------------------
# the other commands


def test_schema_presets_and_trace_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == (ROOT / SCHEMA_PATH).read_text(encoding="utf-8")
    assert main(["presets"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(PRESETS)
    assert {"ronneberger2015", "ronneberger2015-batchnorm"} <= set(PRESETS)
    assert all(len(line.split(maxsplit=1)) == 2 for line in out)
    assert main(["trace", "ronneberger2015", "--input-size", "572"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ronneberger2015: input 572 x 572 -> output 388 x 388"
    rows = {line.split()[0]: line.split()[1:] for line in out[1:]}
    assert rows["stage"] == ["channels", "shape"]
    assert rows["bottleneck.conv2"] == ["1024", "28", "x", "28"]
    assert rows["head"] == ["2", "388", "x", "388"]
    assert main(["trace", "ronneberger2015", "--input-size", "570"]) == 1  # a failure, not a usage error
    assert "nearest valid: 556, 572" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "said"),
    [("0_", "is the number 0 in YAML 1.1"), ("0b_", "has no digits"), ("0x_", "has no digits")],
)
def test_yaml11_prefixes_without_digits_are_config_errors(tmp_path, value: str, said: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"depth: {value}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=said):
        load_config(path)
