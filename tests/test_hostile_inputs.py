"""Every input gets a clear, bounded answer (issue 10, the core library): one test per kind of
hostile or careless input. Each test tries several cases of its kind and fails if any case ends
in another exception, hangs, reads another file, or echoes an unbounded value."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from unetgen import (
    CheckpointError,
    ConfigError,
    InputShapeError,
    UNetConfig,
    build_unet,
    checkpoint_config,
    checkpoint_metadata,
    halo,
    input_size_for_output,
    is_valid_input_shape,
    load_config,
    load_unet,
    nearest_valid_input_size,
    output_shape,
    save_unet,
    trace,
    valid_input_sizes,
)
from unetgen.analysis import shapes
from unetgen.cli import main
from unetgen.config.io import read_document
from unetgen.config.schema import schema_text

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

TINY = UNetConfig(depth=1, base_channels=2, norm="batch")
PAPER = UNetConfig()
ANISO = UNetConfig(spatial_dims=3, depth=2, base_channels=2, kernel_size=[[1, 3, 3], 3, 3], strides=[[1, 2, 2], 2])
MAX_LINE = 600  # no message line may be longer than this, whatever the input
SECRET = "hunter2-do-not-echo"


def bounded(message: str) -> bool:
    return all(len(line) <= MAX_LINE for line in message.splitlines())


def finishes(fn: Callable[[], Any], seconds: float = 10.0) -> BaseException | Any:
    """`fn()`'s exception or result, run in a thread so that a hang fails instead of blocking."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as err:  # the caller inspects it
            out.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn} still runs after {seconds} s"
    return out[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, torch.Tensor]]:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_unet(build_unet(TINY, seed=0), path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return path, meta, load_file(path)


def crafted(base, tmp_path: Path, *, metadata: dict[str, str] | None = None, tensors=None) -> Path:
    _, meta, state = base
    out = tmp_path / "crafted.safetensors"
    save_file(tensors if tensors is not None else state, out, metadata={**meta, **(metadata or {})})
    return out


# ---------------------------------------------------------------------------------------------
# checkpoints: the stored config never points elsewhere


def test_stored_config_that_is_not_an_object_is_refused_and_reads_nothing(checkpoint, tmp_path: Path) -> None:
    secret = tmp_path / "app-secrets.yaml"
    secret.write_text(f"depth: 1\nbase_channels: 2\nnorm: batch\npassword: {SECRET}\n")
    fitting = tmp_path / "fits.yaml"  # a file whose config fits the stored weights
    fitting.write_text("depth: 1\nbase_channels: 2\nnorm: batch\n")
    stored = [str(secret), str(fitting), "ronneberger2015", "tiny", [str(secret)], 3, 2.5, True, None, "", []]
    for value in stored:
        path = crafted(checkpoint, tmp_path, metadata={"config": json.dumps(value)})
        for fn in (load_unet, checkpoint_config):
            with pytest.raises(CheckpointError, match="not an object") as info:
                fn(path)
            assert SECRET not in str(info.value) and "password" not in str(info.value)
    assert checkpoint_metadata(path) == {}  # the header is still readable


def test_hostile_checkpoint_metadata_ends_in_checkpoint_error(checkpoint, tmp_path: Path) -> None:
    deep, digits = "[" * 100_000 + "]" * 100_000, "9" * 5000
    cases = [
        {"config": deep},
        {"config": '{"depth": ' + digits + "}"},
        {"config": '{"depth": ' + "9" * 4000 + "}"},  # below Python's int limit, beyond 64 bits
        {"config": '{"depth": 1, "depth": 2}'},
        {"config": '{"depth": NaN}'},
        {"config": '{"dpeth": "' + "x" * 60_000 + '"}'},
        {"config": '{"' + "k" * 60_000 + '": 1}'},
        {"config": "x" * 10**6},
        {"config": '{"norm": "\\ud800"}'},
        {"format": "f" * 100_000},
        {"state_format": "s" * 100_000, "unetgen_version": "v" * 100_000},
        {"user_metadata": deep},
        {"user_metadata": '{"a": ' + digits + "}"},
        {"user_metadata": '{"a": 1, "a": 2}'},
        {"user_metadata": '{"a": Infinity}'},
        {"user_metadata": '"a string"'},
        {"user_metadata": "u" * (2 << 20)},
    ]
    huge_header = tmp_path / "huge-header.safetensors"
    huge_header.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header claims 1,099,511,627,776 bytes"):
        checkpoint_config(huge_header)
    for meta in cases:
        path = crafted(checkpoint, tmp_path, metadata=meta)
        with pytest.raises(CheckpointError) as info:
            load_unet(path)
        assert bounded(str(info.value)), str(info.value)[:300]
        if "config" in meta or "format" in meta:
            with pytest.raises(CheckpointError):
                checkpoint_config(path)
        if "user_metadata" in meta:
            with pytest.raises(CheckpointError):
                checkpoint_metadata(path)


def test_weights_of_a_wrong_dtype_are_refused_naming_the_tensor(checkpoint, tmp_path: Path) -> None:
    _, _, state = checkpoint
    weight = next(k for k, v in state.items() if k.endswith("weight") and v.dim() > 1)
    counter = next(k for k in state if k.endswith("num_batches_tracked"))
    cases = [{weight: state[weight].to(d)} for d in (torch.int32, torch.int64, torch.uint8, torch.bool)]
    cases += [{weight: state[weight].to(d)} for d in (torch.complex64, torch.float8_e4m3fn, torch.float16)]
    cases += [{weight: state[weight].double()}, {counter: state[counter].float()}, {counter: state[counter].int()}]
    for change in cases:
        with pytest.raises(CheckpointError, match=rf"({next(iter(change))}|mix floating-point dtypes)"):
            load_unet(crafted(checkpoint, tmp_path, tensors={**state, **change}))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # one dtype throughout loads
        same = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        assert load_unet(crafted(checkpoint, tmp_path, tensors=same)).encoder[0].block.body[0].weight.dtype == dtype


def test_user_metadata_round_trips_and_bad_metadata_is_refused(tmp_path: Path) -> None:
    model = build_unet(TINY, seed=0)
    meta = {"epoch": 12, "mean": [0.5, 0.25], "classes": ("background", "cell"), "norm": {"std": 2.0}, "x": None}
    path = save_unet(model, tmp_path / "m.safetensors", metadata=meta)
    want = json.loads(json.dumps(meta))  # tuples come back as lists
    assert checkpoint_metadata(path) == want
    assert load_unet(path).metadata == want
    assert load_unet(save_unet(model, tmp_path / "none.safetensors")).metadata == {}
    bad = [
        ({"config": {}}, "reserved"),
        ({"format": "x"}, "reserved"),
        ({"user_metadata": 1}, "reserved"),
        ({1: "a"}, "keys must be strings"),
        ({"m": float("nan")}, r"metadata\['m'\] is not JSON"),
        ({"m": np.float32(1.0)}, r"metadata\['m'\] is not JSON"),
        ({"m": object()}, r"metadata\['m'\] is not JSON"),
        ({"m": {1: "a"}}, r"metadata\['m'\] is not JSON .*not a string"),
        ({"m": 10**30}, r"metadata\['m'\].*64 bits"),
        ({"m": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, "nested deeper"),
        ({"m": list(range(200_000))}, "more than"),
        ({"m": "x" * (2 << 20)}, "limit"),
        ({"m": "\ud800"}, "surrogate"),
        ("epoch=3", "must be a mapping"),
    ]
    for metadata, message in bad:
        with pytest.raises(CheckpointError, match=message) as info:
            save_unet(model, tmp_path / "bad.safetensors", metadata=metadata)
        assert bounded(str(info.value))
    assert not (tmp_path / "bad.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# only regular files are opened; odd paths get clear errors


def test_only_regular_files_are_opened(tmp_path: Path) -> None:
    fifo_yaml, fifo_ckpt = tmp_path / "fifo.yaml", tmp_path / "fifo.safetensors"
    os.mkfifo(fifo_yaml)
    os.mkfifo(fifo_ckpt)
    (tmp_path / "dir.yaml").mkdir()
    (tmp_path / "dir.safetensors").mkdir()
    config_paths = [fifo_yaml, tmp_path / "dir.yaml", "/dev/null.yaml", "a\0b.yaml", "x" * 5000 + ".yaml"]
    config_paths += [str(fifo_yaml), f"{tmp_path}/no\0such.json", Path("/proc/self/fd/0.yml")]
    ckpt_paths = [fifo_ckpt, tmp_path / "dir.safetensors", "/dev/null", "/dev/zero", "a\0b.safetensors"]
    ckpt_paths += ["y" * 5000 + ".safetensors", 3, b"x.safetensors", None, 2.5]
    try:
        for p in config_paths:
            for fn in (load_config, read_document):
                err = finishes(lambda fn=fn, p=p: fn(p))
                assert isinstance(err, ConfigError), (p, err)
                assert bounded(str(err)) and "Traceback" not in str(err)
        for p in [3, b"x.yaml", None, 2.5, ["a.yaml"]]:
            assert isinstance(finishes(lambda p=p: load_config(p)), ConfigError), p
            assert isinstance(finishes(lambda p=p: read_document(p)), ConfigError), p
        for p in ckpt_paths:
            for fn in (load_unet, checkpoint_config, checkpoint_metadata):
                err = finishes(lambda fn=fn, p=p: fn(p))
                assert isinstance(err, CheckpointError), (p, err)
                assert bounded(str(err))
        unwritable = [tmp_path / "no" / "x.safetensors", tmp_path / "dir.safetensors", fifo_ckpt / "x.safetensors"]
        for p in [tmp_path / "a\0b.safetensors", 3, tmp_path / ("z" * 5000 + ".safetensors"), *unwritable]:
            err = finishes(lambda p=p: save_unet(build_unet(TINY), p))
            assert isinstance(err, CheckpointError), (p, err)
        assert finishes(lambda: main(["validate", str(fifo_yaml)])) == 1
    finally:  # unblock any reader left waiting on a FIFO (so a failure cannot hang the session)
        for fifo in (fifo_yaml, fifo_ckpt):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# shape arithmetic: integers end to end, one convention for sizes


CONFIGS = [PAPER, ANISO, UNetConfig(depth=3, padding="same", strides=[2, 3, 2], norm="instance")]


@given(st.sampled_from(CONFIGS), st.integers(-50, 400), st.integers(0, 10**600), st.data())
def test_shape_arithmetic_is_exact_for_any_int(cfg: UNetConfig, offset: int, k: int, data: st.DataObject) -> None:
    """Shifting a size at or above the smallest valid one by k periods shifts every answer by k
    periods, for any k (2**53, 10**400...); below it, the answers are those of the smallest."""
    axis = data.draw(st.integers(0, cfg.spatial_dims - 1))
    rule = shapes.axis_rule(cfg, axis)
    period, small = rule.period, rule.min_size + abs(offset)
    big = small + period * k
    below = rule.min_size - 1 - abs(offset) - k
    assert nearest_valid_input_size(cfg, below, direction="up", axis=axis) == rule.min_size
    assert nearest_valid_input_size(cfg, below, axis=axis) == rule.min_size
    for direction in ("up", "nearest"):
        want = nearest_valid_input_size(cfg, small, direction=direction, axis=axis) + period * k
        assert nearest_valid_input_size(cfg, big, direction=direction, axis=axis) == want
    assert is_valid_input_shape(cfg, big, axis=axis) == is_valid_input_shape(cfg, small, axis=axis)
    if k > 0 or is_valid_input_shape(cfg, small, axis=axis):
        down = nearest_valid_input_size(cfg, big, direction="down", axis=axis)
        assert down <= big < down + period and is_valid_input_shape(cfg, down, axis=axis)
        assert output_shape(cfg, down, axis=axis) == down - 2 * halo(cfg, axis=axis)
    if k > 0:
        assert input_size_for_output(cfg, output_shape(cfg, down, axis=axis), axis=axis) == down
    sizes = valid_input_sizes(cfg, big, axis=axis)
    assert isinstance(sizes, range)
    assert not sizes or sizes[-1] == nearest_valid_input_size(cfg, big, direction="down", axis=axis)
    if not is_valid_input_shape(cfg, big, axis=axis):
        with pytest.raises(InputShapeError) as info:
            output_shape(cfg, big, axis=axis)
        assert bounded(str(info.value))


NOT_SIZES = [math.nan, math.inf, -math.inf, 572.0, 572.5, True, False, np.True_, "572", b"572", None, 1j]
NOT_SIZES += [np.float64(572), np.array(572.0), object(), "x" * 60_000, [572], {"a": 1}]


def test_non_integer_sizes_are_input_shape_errors_naming_the_value() -> None:
    helpers: list[Callable[[Any], Any]] = [
        lambda v: output_shape(PAPER, v),
        lambda v: output_shape(PAPER, (v, 572)),
        lambda v: is_valid_input_shape(PAPER, v),
        lambda v: is_valid_input_shape(PAPER, (572, v)),
        lambda v: valid_input_sizes(PAPER, v),
        lambda v: valid_input_sizes(PAPER, (v, 600)),
        lambda v: valid_input_sizes(PAPER, 600, min_size=v),
        lambda v: nearest_valid_input_size(PAPER, v),
        lambda v: nearest_valid_input_size(PAPER, (572, v), direction="down"),
        lambda v: input_size_for_output(PAPER, v),
        lambda v: input_size_for_output(PAPER, (v, v)),
        lambda v: halo(PAPER, v if v is not None else math.nan),
        lambda v: halo(PAPER, (572, v)),
        lambda v: trace(PAPER, (v, 572)),
        lambda v: shapes.skip_crops(PAPER, (572, v)),
    ]
    for value in NOT_SIZES:
        for helper in helpers:
            with pytest.raises(InputShapeError) as info:
                helper(value)
            assert bounded(str(info.value))
    for bad_shape in [(572,), (572, 572, 572), "572x572", 572, iter([572, 572]), (572,) * 10**5]:
        with pytest.raises(InputShapeError, match=r"spatial|sequence"):
            trace(PAPER, bad_shape)
    for bad_axis in [2, -1, True, 0.0, "0"]:
        with pytest.raises(ValueError, match="axis"):
            output_shape(PAPER, 572, axis=bad_axis)
    with pytest.raises(ValueError, match="direction"):
        nearest_valid_input_size(PAPER, 572, direction=["up"])  # type: ignore[arg-type]


def test_every_size_helper_answers_in_the_kind_it_was_asked() -> None:
    """An int (with `axis=`) gives an int, a shape gives a tuple, numpy integers and 0-d integer
    arrays count as ints, and the tuple is the per-axis ints."""
    shape = (40, 100, 100)
    ints = [(lambda x: x), np.int64, np.int32, np.uint16, (lambda x: np.array(x)), (lambda x: torch.tensor(x))]
    per_axis = {
        "output_shape": lambda v, **kw: output_shape(ANISO, v, **kw),
        "nearest": lambda v, **kw: nearest_valid_input_size(ANISO, v, direction="up", **kw),
        "input_for_output": lambda v, **kw: input_size_for_output(ANISO, v, **kw),
        "halo": lambda v, **kw: halo(ANISO, v, **kw),
        "valid_sizes": lambda v, **kw: valid_input_sizes(ANISO, v, **kw),
    }
    valid = nearest_valid_input_size(ANISO, shape, direction="up")
    assert isinstance(valid, tuple) and len(valid) == 3
    for name, fn in per_axis.items():
        arg = valid if name in ("output_shape", "halo") else shape
        whole = fn(arg)
        assert isinstance(whole, tuple) and len(whole) == 3, name
        for axis in range(3):
            for make in ints:
                one = fn(make(arg[axis]), axis=axis)
                assert one == whole[axis] and type(one) is type(whole[axis]), (name, axis, make)
        assert fn(list(arg)) == whole and fn(np.array(arg)) == whole and fn(torch.Size(arg)) == whole
        with pytest.raises(ValueError, match="axis"):
            fn(arg, axis=0)
    assert halo(ANISO) == tuple(halo(ANISO, axis=a) for a in range(3))
    for probe in (valid, shape):  # a predicate: one bool for a whole shape, as for one size
        assert is_valid_input_shape(ANISO, probe) == all(
            is_valid_input_shape(ANISO, s, axis=a) for a, s in enumerate(probe)
        )
    assert isinstance(valid_input_sizes(PAPER, 10**10), range) and len(valid_input_sizes(PAPER, 10**10)) == 624999989
    assert valid_input_sizes(PAPER, 10**400)[-1] == nearest_valid_input_size(PAPER, 10**400, direction="down")


# ---------------------------------------------------------------------------------------------
# config files: every problem at once, dropout shorthand, positions, YAML 1.1, bounded echoes

INDEPENDENT = {  # field -> a wrong value; each breaks a different cross-field rule
    "channels": [8, 16],
    "decoder_channels": [8],
    "convs_per_block": [2, 2],
    "decoder_convs_per_block": [2],
    "kernel_size": [3, 3],
    "strides": [2, 2, 2, 2, 2],
    "deep_supervision": [4],
}


@given(st.sets(st.sampled_from(sorted(INDEPENDENT)), min_size=1))
def test_every_independent_cross_field_problem_is_reported_at_once(fields: set[str]) -> None:
    doc = {"depth": 3, **{f: INDEPENDENT[f] for f in fields}}
    with pytest.raises(ConfigError) as info:
        load_config(doc)
    reported = [p.field for p in info.value.problems]
    assert len(reported) == len(fields), reported
    for field in fields:
        assert any(field in r.split(", ") for r in reported), (field, reported)


def test_validate_lists_every_problem_and_skips_dependent_rules(tmp_path: Path, capsys) -> None:
    path = tmp_path / "deeper.yaml"  # the depth change that took three runs
    path.write_text("depth: 5\nchannels: [8, 16, 32, 64, 128]\nkernel_size: [3, 3, 3, 3, 3]\nstrides: [2, 2, 2, 2]\n")
    assert main(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}:") for line in lines), lines
    assert [line.split(": ")[1] for line in lines] == ["channels, depth", "kernel_size, depth", "strides, depth"]
    # a group-norm rule needs the layout: skipped while a length is wrong, reported once it is right
    doc = {"depth": 2, "channels": [6, 12], "norm": {"type": "group", "num_groups": 4}, "deep_supervision": [3]}
    with pytest.raises(ConfigError) as info:
        load_config(doc)
    assert sorted(p.field for p in info.value.problems) == ["channels, depth", "depth, deep_supervision"]
    with pytest.raises(ConfigError) as info:
        load_config({**doc, "channels": [6, 12, 24]})
    assert sorted(p.message.split()[0] for p in info.value.problems) == ["deep_supervision", "norm.num_groups=4"]


def test_dropout_shorthand() -> None:
    default = UNetConfig().dropout
    cases = [(0.2, 0.2), (0, 0.0), (0.0, 0.0), (None, 0.0), (False, 0.0), (True, default.rate)]
    assert load_config({"dropout": np.float32(0.25)}).dropout.rate == 0.25  # numpy numbers, from Python
    for written, rate in cases:
        for cfg in (load_config({"dropout": written}), load_config(_json_file({"dropout": written}))):
            assert cfg.dropout.rate == rate and cfg.dropout.placement == default.placement
    validator = Draft202012Validator(json.loads(schema_text()))
    for written in [*(w for w, _ in cases), {"rate": 0.1, "placement": "all"}]:
        assert not list(validator.iter_errors({"dropout": written})), written
    for wrong in [1, 1.5, -0.1, "0.2", "yes", [0.2]]:
        with pytest.raises(ConfigError, match=r"dropout"):
            load_config({"dropout": wrong})
        assert list(validator.iter_errors({"dropout": wrong})), wrong


_FILES: list[Path] = []


def _json_file(doc: dict[str, Any]) -> Path:
    import tempfile

    fd, name = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    _FILES.append(Path(name))
    return Path(name)


@pytest.fixture(autouse=True, scope="module")
def _cleanup_files():
    yield
    for p in _FILES:
        p.unlink(missing_ok=True)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_positions_are_those_of_the_text_as_written(tmp_path: Path, newline: str) -> None:
    cases = [  # (suffix, lines, (line, column) of the problem)
        (".json", ["{", '  "depth": 3,', '  "dpeth": 4', "}"], (3, 3)),
        (".json", ["{", '  "depth": 3,', '  "norm": ', "}"], (4, 1)),
        (".json", ["{", '  "depth": 3,', '  "norm": "\\ud800"', "}"], (3, 3)),
        (".json", ["{", '  "depth": 3,', '  "norm": {"type": "x\\udc80y"}', "}"], (3, 12)),
        (".yaml", ["depth: 3", "", "dpeth: 4"], (3, 1)),
        (".yaml", ["depth: 3", 'norm: "\\ud800"'], (2, 1)),
        (".yaml", ["depth: 3", "merge:", "  type: cat"], (3, 3)),
    ]
    for suffix, lines, where in cases:
        path = tmp_path / f"c{suffix}"
        path.write_bytes(newline.join(lines).encode())
        with pytest.raises(ConfigError) as info:
            load_config(path)
        got = [(p.line, p.column) for p in info.value.problems]
        assert got == [where], (lines, got, str(info.value))
        assert "re-serialised" not in str(info.value) and "Invalid JSON" not in str(info.value)


YAML11 = {  # plain scalar -> what the message must say
    "064": "octal number 52",
    "-017": "octal number -15",
    "00": "octal number 0",
    "1:30": "base-60 number 90",
    "1:30.5": "base-60 number 90.5",
    "yes": "boolean true",
    "No": "boolean false",
    "ON": "boolean true",
    "off": "boolean false",
    "y": "boolean true",
    "n": "boolean false",
    "1e3": "write 1.0e+3",
    "0o17": "octal number 15 in YAML 1.2",
    "1_000": "number 1000 in YAML 1.1",
    "0b101": "number 5",
}


def test_yaml_1_1_readings_are_refused_with_what_to_write(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    for field in ("base_channels", "checkpointing", "padding"):
        for scalar, says in YAML11.items():
            path.write_text(f"depth: 3\n{field}: {scalar}\n")
            with pytest.raises(ConfigError, match="YAML 1") as info:
                load_config(path)
            (problem,) = info.value.problems
            assert (problem.line, problem.column) == (2, len(field) + 3) and says in problem.message, problem
            path.write_text(f"depth: 3\n{field}: '{scalar}'\n")  # quoted: a string, not a hazard
            try:
                load_config(path)
            except ConfigError as err:
                assert "YAML 1" not in str(err)
    path.write_text("depth: 3\nbase_channels: 64\ncheckpointing: true\ndropout: 1.0e-1\n")
    assert load_config(path) == UNetConfig(depth=3, checkpointing=True, dropout=0.1)


HUGE = "x" * 60_000


def test_every_echoed_value_is_bounded(tmp_path: Path, checkpoint) -> None:
    docs = [
        {"padding": HUGE},
        {"norm": HUGE},
        {"norm": {"type": HUGE}},
        {HUGE: 1},
        {"norm": {"type": "group", HUGE: 1}},
        {"channels": [8] * 4000},
        {"channels": [[8] * 3000, 16]},
        {"kernel_size": [HUGE]},
        {"depth": 10**4000},
        {"deep_supervision": list(range(1, 4000))},
        {"$schema": [HUGE]},
        {"dropout": HUGE},
    ]
    messages = []
    for doc in docs:
        for source in (doc, _json_file(doc)):
            with pytest.raises(ConfigError) as info:
                load_config(source)
            messages.append(str(info.value))
    for key in ("model." + HUGE, HUGE):
        with pytest.raises(ConfigError) as info:
            load_config({"model": {"a" + HUGE: {}}}, key=key)
        messages.append(str(info.value))
    for source in (HUGE, HUGE + ".yaml", tmp_path / (HUGE[:200] + ".yaml")):
        with pytest.raises(ConfigError) as info:
            load_config(source)
        messages.append(str(info.value))
    with pytest.raises(InputShapeError) as info:
        output_shape(PAPER, (10**4000, HUGE))
    messages.append(str(info.value))
    with pytest.raises(InputShapeError) as info:
        output_shape(PAPER, (10**4000 + 1, 572))
    messages.append(str(info.value))
    key = HUGE
    state = {**checkpoint[2], key: torch.zeros(1)}
    with pytest.raises(CheckpointError) as info:
        load_unet(crafted(checkpoint, tmp_path, tensors=state))
    messages.append(str(info.value))
    for message in messages:
        assert bounded(message), message[:200]
        assert len(message.splitlines()) <= 51, message[:200]  # at most 50 problems, then a count
