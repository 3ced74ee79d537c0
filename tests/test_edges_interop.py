"""Issue 18, part B: nnU-Net import and model conversion at their edges. What a plans file, a
command line or a peer module can carry in: key injection into the written YAML, outputs that
are inputs or are left behind invalid, FIFOs, long inheritance chains, huge stage lists, values
of the wrong type read as something else, peers whose function is not their layers' (hooks, a
replaced forward), and example inputs of the wrong shape."""

from __future__ import annotations

import copy
import errno
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_interop import NEW_3D, OLD_3D, Classic
from torch import nn

from unetgen import ConfigError, InputShapeError, build_unet, load_config
from unetgen.cli import main
from unetgen.interop import (
    UnsupportedModelError,
    convert,
    copy_weights,
    from_nnunet_plans,
    nnunet_yaml,
    register_converter,
    register_refusal,
    to_nnunet_architecture,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny maps: threads only add overhead

INJECTED = "X\nup_channels: half\n#"
LINE_BREAKS = ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029"]  # every line break YAML (1.1, PyYAML) knows


def _plans(**configurations: Any) -> dict[str, Any]:
    return {"dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "configurations": configurations}


def _import(plans: Path, out: Path, *extra: str, configuration: str = "c") -> int:
    args = ["import", "nnunet", str(plans), "--configuration", configuration, "--in-channels", "1"]
    return main([*args, "--out-channels", "2", "-o", str(out), *extra])


def _write_plans(path: Path, **top: Any) -> Path:
    path.write_text(json.dumps(_plans(c=NEW_3D) | top))
    return path


# ---------------------------------------------------------------------------------------------
# the written YAML: no key injection, never left invalid, never over an input or a foreign file


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_dataset_name_cannot_add_keys(tmp_path: Path, brk: str) -> None:
    plans = _write_plans(tmp_path / "plans.json", dataset_name=INJECTED.replace("\n", brk))
    out = tmp_path / "m.yaml"
    assert _import(plans, out) == 0
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert "up_channels" not in data
    assert load_config(out) == from_nnunet_plans(plans, "c", in_channels=1, out_channels=2)


def test_plans_file_name_and_configuration_cannot_add_keys(tmp_path: Path) -> None:
    name = "p\nup_channels: half\n#.json"
    plans = tmp_path / name
    plans.write_text(json.dumps({"configurations": {"c\nup_channels: half\n#": NEW_3D}}))
    out = tmp_path / "m.yaml"
    assert _import(plans, out, configuration="c\nup_channels: half\n#") == 0
    assert "up_channels" not in yaml.safe_load(out.read_text(encoding="utf-8"))
    expected = from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=1, out_channels=2)
    assert load_config(out).up_channels == expected.up_channels


@pytest.mark.parametrize(
    "schema",
    ["s.json\nup_channels: half", "s\u2028up_channels: half", "s\tx", "x" * 5000],
    ids=["newline", "u2028", "tab", "5000-long"],
)
def test_schema_that_would_leave_its_comment_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], schema: str
) -> None:
    plans = _write_plans(tmp_path / "plans.json")
    out = tmp_path / "m.yaml"
    assert _import(plans, out, "--schema", schema) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --schema=") and "printable characters on one line" in err and len(err) < 600
    assert os.listdir(tmp_path) == ["plans.json"]
    with pytest.raises(ValueError, match="schema="):
        nnunet_yaml(plans, "c", in_channels=1, out_channels=2, schema=schema)


@given(name=st.text(max_size=40))
def test_any_dataset_name_reads_back_as_the_config(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    plans = _write_plans(tmp_path_factory.mktemp("p") / "plans.json", dataset_name=name)
    text = nnunet_yaml(plans, "c", in_channels=1, out_channels=2)
    expected = from_nnunet_plans(plans, "c", in_channels=1, out_channels=2)
    assert yaml.safe_load(text) == expected.model_dump(mode="json", exclude_unset=True)


def test_invalid_yaml_is_not_left_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import unetgen.interop

    plans = _write_plans(tmp_path / "plans.json")
    monkeypatch.setattr(unetgen.interop, "nnunet_yaml", lambda *a, **k: "spatial_dims: 2\ndepth: -1\n")
    assert _import(plans, tmp_path / "m.yaml") == 1
    assert "depth" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["plans.json"]


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_full_disk_leaves_the_previous_output_and_no_temporary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    import unetgen.cli.imports as imports

    plans = _write_plans(tmp_path / "plans.json")
    out = tmp_path / "m.yaml"
    assert _import(plans, out) == 0
    before = out.read_bytes()

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(imports.os, fail, full)
    assert _import(plans, out, "--no-deep-supervision") == 1
    err = capsys.readouterr().err
    assert "no space left on device" in err.lower() and "m.yaml" in err and "nothing was written" in err
    assert sorted(os.listdir(tmp_path)) == ["m.yaml", "plans.json"]
    assert out.read_bytes() == before


def test_output_that_is_the_plans_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = _write_plans(tmp_path / "plans.yaml")  # JSON in a .yaml file: a valid plans file
    before = plans.read_bytes()
    assert _import(plans, plans) == 1
    assert "is the plans file itself" in capsys.readouterr().err
    link = tmp_path / "hard.yaml"
    os.link(plans, link)
    assert _import(plans, link) == 1
    assert "is the plans file itself" in capsys.readouterr().err
    assert plans.read_bytes() == before


def test_foreign_files_and_links_are_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = _write_plans(tmp_path / "plans.json")
    mine = tmp_path / "notes.yaml"
    mine.write_text("# my hand-tuned model\ndepth: 3\n")
    assert _import(plans, mine) == 1
    assert "unetgen cannot show it wrote it" in capsys.readouterr().err
    assert mine.read_text() == "# my hand-tuned model\ndepth: 3\n"
    link = tmp_path / "link.yaml"
    link.symlink_to(mine)
    assert _import(plans, link) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and mine.read_text() == "# my hand-tuned model\ndepth: 3\n"
    # what unetgen import wrote, it may replace
    out = tmp_path / "m.yaml"
    assert _import(plans, out) == 0 and _import(plans, out, "--no-deep-supervision") == 0
    assert load_config(out).deep_supervision == ()
    assert sorted(os.listdir(tmp_path)) == ["link.yaml", "m.yaml", "notes.yaml", "plans.json"]


# ---------------------------------------------------------------------------------------------
# only regular files are read: a FIFO or device never blocks


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("blocked opening the plans file")


@pytest.fixture
def no_blocking() -> Any:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("no_blocking")
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_plans_that_are_not_regular_files_are_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "plans.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    what = {"fifo": "FIFO", "device": "device", "directory": "directory"}[kind]
    with pytest.raises(ValueError, match=f"plans file .*{what}.*not a regular file"):
        from_nnunet_plans(path, "c", in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match=what):
        nnunet_yaml(str(path), "c", in_channels=1, out_channels=2)
    assert _import(path, tmp_path / "m.yaml") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: plans file ") and what in err and "Traceback" not in err
    assert not (tmp_path / "m.yaml").exists()


# ---------------------------------------------------------------------------------------------
# inherits_from: linear time, bounded, every value of the wrong kind a clear error


def test_a_100000_long_inheritance_chain_is_refused_at_once() -> None:
    n = 100_000
    configurations: dict[str, Any] = {f"c{i}": {"inherits_from": f"c{i + 1}"} for i in range(n)}
    configurations[f"c{n}"] = NEW_3D
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"inherits_from chain is longer than 32 \(c0 -> c1 -> c2 -> \.\.\."):
        from_nnunet_plans(_plans(**configurations), "c0", in_channels=1, out_channels=2)
    assert time.perf_counter() - start < 1.0
    configurations = {f"c{i}": {"inherits_from": f"c{i + 1}"} for i in range(31)} | {"c31": NEW_3D}
    assert from_nnunet_plans(_plans(**configurations), "c0", in_channels=1, out_channels=2).depth == 5  # 32 is fine


@pytest.mark.parametrize("parent", [[], {}, ["c"], 5, True, 1.5])
def test_inherits_from_that_is_not_a_name(parent: Any) -> None:
    plans = _plans(c=NEW_3D, d={"inherits_from": parent})
    with pytest.raises(ValueError, match=r"configurations\.d\.inherits_from=.* must be a str: the name of another"):
        from_nnunet_plans(plans, "d", in_channels=1, out_channels=2)


@pytest.mark.parametrize("name", [[], {}, None, 3, b"c"])
def test_configuration_that_is_not_a_name(name: Any) -> None:
    with pytest.raises(ValueError, match=r"configuration=.* must be a str"):
        from_nnunet_plans(_plans(c=NEW_3D), name, in_channels=1, out_channels=2)


def test_messages_about_configurations_stay_short() -> None:
    many = {f"config_{i}": NEW_3D for i in range(10_000)}
    with pytest.raises(ValueError, match=r"available: config_0, .* and 9,992 more") as err:
        from_nnunet_plans(_plans(**many), "x" * 5000, in_channels=1, out_channels=2)
    assert len(str(err.value)) < 500
    circle = {f"c{i}": {"inherits_from": f"c{(i + 1) % 8}"} for i in range(8)}
    with pytest.raises(ValueError, match=r"circle: c0 -> c1 -> c2 -> \.\.\. \(4 more\) -> c7 -> c0$"):
        from_nnunet_plans(_plans(**circle), "c0", in_channels=1, out_channels=2)
    odd = {"a\nb" * 1000: {"inherits_from": "a\nb" * 1000}}
    with pytest.raises(ValueError, match="circle") as err:
        from_nnunet_plans(_plans(**odd), "a\nb" * 1000, in_channels=1, out_channels=2)
    assert len(str(err.value)) < 500 and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# stage counts first: a plans file with 50,000 stages is refused before any per-stage work


@pytest.mark.parametrize("fmt", ["v2.0", "v2.3"])
def test_huge_stage_lists_are_refused_before_any_per_stage_work(fmt: str) -> None:
    n = 50_000
    if fmt == "v2.0":
        conf = {**OLD_3D, "conv_kernel_sizes": [[3, 3, 3]] * n, "pool_op_kernel_sizes": [[2, 2, 2]] * n}
        match = r"configurations\.c\.conv_kernel_sizes \(one kernel per stage\): 50000 stages; unetgen builds 2 to 9"
    else:
        conf = copy.deepcopy(NEW_3D)
        kw = conf["architecture"]["arch_kwargs"]
        kw |= {"n_stages": n, "features_per_stage": [32] * n, "kernel_sizes": [[3, 3, 3]] * n}
        match = r"arch_kwargs\.n_stages: 50000 stages; unetgen builds 2 to 9"
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        from_nnunet_plans(_plans(c=conf), "c", in_channels=1, out_channels=2)
    assert time.perf_counter() - start < 0.5


# ---------------------------------------------------------------------------------------------
# every numeric field of a plans file has its type: no string, no float for an int, no bool,
# and the error names the key path

ARCH = ("configurations", "c", "architecture", "arch_kwargs")
WRONG = {
    "int": ["3", 3.0, 3.5, True, None, [3]],
    "number": ["0.1", "abc", True, None, [0.1], float("nan")],
    "bool": ["true", "false", 1, 0, None],
    "number or null": ["0.1", "abc", True, [0.1], float("nan")],  # torch takes momentum=None
}
BN = {"norm_op": "torch.nn.BatchNorm3d", "norm_op_kwargs": {"eps": 1e-3, "momentum": 0.1, "affine": True}}
PRELU = {"nonlin": "torch.nn.PReLU", "nonlin_kwargs": {"num_parameters": 1, "init": 0.2}}
FIELDS: list[tuple[dict[str, Any], tuple[Any, ...], str]] = [  # (arch_kwargs changes, key path, kind)
    ({}, (*ARCH, "n_stages"), "int"),
    ({}, (*ARCH, "features_per_stage", 2), "int"),
    ({}, (*ARCH, "kernel_sizes", 3, 1), "int"),
    ({}, (*ARCH, "strides", 1, 2), "int"),
    ({}, (*ARCH, "n_conv_per_stage", 0), "int"),
    ({}, (*ARCH, "n_conv_per_stage_decoder", 4), "int"),
    ({}, (*ARCH, "conv_bias"), "bool"),
    ({"nonlin_first": False}, (*ARCH, "nonlin_first"), "bool"),
    ({}, (*ARCH, "norm_op_kwargs", "eps"), "number"),
    ({}, (*ARCH, "norm_op_kwargs", "affine"), "bool"),
    ({"norm_op_kwargs": {"momentum": 0.1}}, (*ARCH, "norm_op_kwargs", "momentum"), "number or null"),
    ({"norm_op_kwargs": {"track_running_stats": False}}, (*ARCH, "norm_op_kwargs", "track_running_stats"), "bool"),
    (BN, (*ARCH, "norm_op_kwargs", "eps"), "number"),
    (BN, (*ARCH, "norm_op_kwargs", "momentum"), "number"),
    (BN, (*ARCH, "norm_op_kwargs", "affine"), "bool"),
    ({"nonlin_kwargs": {"negative_slope": 0.1}}, (*ARCH, "nonlin_kwargs", "negative_slope"), "number"),
    ({}, (*ARCH, "nonlin_kwargs", "inplace"), "bool"),
    ({"nonlin": "torch.nn.ELU", "nonlin_kwargs": {"alpha": 0.5}}, (*ARCH, "nonlin_kwargs", "alpha"), "number"),
    (PRELU, (*ARCH, "nonlin_kwargs", "num_parameters"), "int"),
    (PRELU, (*ARCH, "nonlin_kwargs", "init"), "number"),
    ({"dropout_op_kwargs": {"p": 0.0}}, (*ARCH, "dropout_op_kwargs", "p"), "number"),
]


def _path_text(path: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


@pytest.mark.parametrize(("change", "path", "kind"), FIELDS, ids=[_path_text(f[1][4:]) for f in FIELDS])
def test_every_arch_kwargs_number_has_its_type(change: dict[str, Any], path: tuple[Any, ...], kind: str) -> None:
    conf = copy.deepcopy(NEW_3D)
    conf["architecture"]["arch_kwargs"] |= copy.deepcopy(change)
    plans = _plans(c=conf)
    from_nnunet_plans(plans, "c", in_channels=1, out_channels=2)  # as it is, it reads
    for wrong in WRONG[kind]:
        bad = copy.deepcopy(plans)
        _set(bad, path, wrong)
        with pytest.raises(ValueError) as err:
            from_nnunet_plans(bad, "c", in_channels=1, out_channels=2)
        assert str(err.value).startswith(_path_text(path) + "="), (wrong, str(err.value))
        if wrong == 3.0:
            assert "(write 3)" in str(err.value)


OLD_FIELDS = [
    ("UNet_base_num_features",),
    ("unet_max_num_features",),
    ("conv_kernel_sizes", 2, 0),
    ("pool_op_kernel_sizes", 5, 2),
    ("n_conv_per_stage_encoder", 1),
    ("n_conv_per_stage_decoder", 3),
]


@pytest.mark.parametrize("path", OLD_FIELDS, ids=[_path_text(p) for p in OLD_FIELDS])
@pytest.mark.parametrize("inherited", [False, True])
def test_every_v2_0_number_has_its_type(path: tuple[Any, ...], inherited: bool) -> None:
    """The v2.0-2.2 keys too; a key read from the configuration a child inherits it from is
    named there."""
    owner = "base" if inherited else "c"
    plans = _plans(base=copy.deepcopy(OLD_3D), c={"inherits_from": "base"}) if inherited else _plans(c=OLD_3D)
    for wrong in WRONG["int"]:
        bad = copy.deepcopy(plans)
        _set(bad, ("configurations", owner, *path), wrong)
        with pytest.raises(ValueError) as err:
            from_nnunet_plans(bad, "c", in_channels=1, out_channels=2)
        assert str(err.value).startswith(_path_text(("configurations", owner, *path)) + "="), (wrong, str(err.value))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("conv_op", 3),
        ("norm_op", ["torch.nn.InstanceNorm3d"]),
        ("nonlin", {"name": "ReLU"}),
        ("dropout_op", 1),
        ("norm_op_kwargs", [1e-5]),
        ("nonlin_kwargs", "inplace"),
        ("dropout_op_kwargs", 0.5),
    ],
)
def test_class_names_and_kwargs_have_their_types(key: str, value: Any) -> None:
    conf = copy.deepcopy(NEW_3D)
    conf["architecture"]["arch_kwargs"][key] = value
    with pytest.raises(ValueError, match=rf"^configurations\.c\.architecture\.arch_kwargs\.{key}=.* must be a"):
        from_nnunet_plans(_plans(c=conf), "c", in_channels=1, out_channels=2)


@pytest.mark.parametrize("config", [{"depth": -1}, "no-such-preset", 5, {"spatial_dims": 4}])
def test_to_nnunet_architecture_takes_what_build_unet_takes(config: Any) -> None:
    with pytest.raises(ConfigError):
        to_nnunet_architecture(config)
    assert to_nnunet_architecture(from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=1, out_channels=2))


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_deep_supervision_is_a_bool(value: Any) -> None:
    with pytest.raises(ValueError, match=r"deep_supervision=.* must be true or false"):
        from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=1, out_channels=2, deep_supervision=value)


# ---------------------------------------------------------------------------------------------
# convert(): a peer whose function is not its layers' is refused, never converted silently


def _small_nnunet() -> nn.Module:
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    torch.manual_seed(0)
    return unet.PlainConvUNet(
        2, 3, [4, 6, 8], nn.Conv2d, 3, [1, 2, 2], 2, 3, 2, conv_bias=True, norm_op=nn.InstanceNorm2d,
        norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )  # fmt: skip


def test_convert_still_converts_an_unmodified_peer() -> None:
    peer = _small_nnunet().train()
    ours = convert(peer)
    assert ours.training and peer.training  # modes restored after the probe
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        assert float((peer.eval()(x) - ours.eval()(x)).abs().max()) < 1e-5


@pytest.mark.parametrize("where", ["network", "decoder", "conv"])
@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_convert_refuses_forward_hooks(where: str, kind: str) -> None:
    peer = _small_nnunet()
    module = {"network": peer, "decoder": peer.decoder, "conv": peer.encoder.stages[0][0].convs[0].conv}[where]
    if kind == "forward":
        module.register_forward_hook(lambda m, args, out: out * 2 if isinstance(out, torch.Tensor) else out)
    else:
        module.register_forward_pre_hook(lambda m, args: tuple(a * 2 for a in args))
    with pytest.raises(UnsupportedModelError, match="forward hooks or pre-hooks are registered on") as err:
        convert(peer)
    name = {"network": "(the network)", "decoder": "decoder", "conv": "encoder.stages.0.0.convs.0.conv"}[where]
    assert name in str(err.value)


def test_convert_refuses_a_forward_replaced_on_the_instance() -> None:
    peer = _small_nnunet()
    original = peer.forward
    peer.forward = lambda x: original(x) * 2  # type: ignore[method-assign]
    with pytest.raises(UnsupportedModelError, match=r"forward is replaced on the instance of \['\(the network\)'\]"):
        convert(peer)
    del peer.forward
    head = peer.decoder.seg_layers[-1]
    head.forward = lambda x: nn.Conv2d.forward(head, x).tanh()  # type: ignore[method-assign]
    with pytest.raises(UnsupportedModelError, match=r"replaced on the instance of \['decoder\.seg_layers\.1'\]"):
        convert(peer)


def test_convert_probes_an_overridden_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A patched class (or a same-named subclass) computes something else: the probe finds it."""
    peer = _small_nnunet()
    cls = type(peer)
    original = cls.forward
    monkeypatch.setattr(cls, "forward", lambda self, x: original(self, x) + 1.97)
    with pytest.raises(UnsupportedModelError, match=r"outputs differ by up to 1\.97.*overrides forward"):
        convert(peer)


def test_convert_probes_a_swapped_submodule() -> None:
    peer = _small_nnunet()
    peer.encoder.stages[1][0].convs[1].all_modules[-1] = nn.Tanh()  # the layers say LeakyReLU
    with pytest.raises(UnsupportedModelError, match="does not compute the same function as the source"):
        convert(peer)


def test_convert_refuses_a_peer_whose_forward_fails() -> None:
    peer = _small_nnunet()
    peer.encoder.stages[0][0].convs[0].all_modules.append(nn.Flatten())  # a shape error in its forward (no parameters)
    with pytest.raises(UnsupportedModelError, match=r"its forward fails on an input of shape \(1, 2, 8, 8\)"):
        convert(peer)


@pytest.mark.parametrize("value", [None, 5, "PlainConvUNet", torch.zeros(3)])
def test_convert_takes_a_module(value: Any) -> None:
    with pytest.raises(UnsupportedModelError):
        convert(value)


# ---------------------------------------------------------------------------------------------
# copy_weights: an example input of the wrong kind is a ValueError naming what is expected, and
# the copy is checked end to end


def _classic_pair(cin: int = 1) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    source = Classic(cin=cin)
    for name in ("enc0", "enc1", "mid", "dec1", "dec0"):
        getattr(source, name)[1] = nn.Identity()
    config = {"depth": 2, "base_channels": 4, "norm": "none", "dropout": {"rate": 0}, "init": "torch"}
    return source, build_unet(config | {"in_channels": cin})


def test_copy_weights_names_the_expected_channels() -> None:
    source, target = _classic_pair()
    with pytest.raises(ValueError, match=r"has 3 channels, but the target takes 1 \(its config's in_channels\)"):
        copy_weights(source, target, torch.randn(1, 3, 44, 44))
    with pytest.raises(ValueError, match=r"has 3 channels, but the target takes 1 \(its first conv '0'\)"):
        copy_weights(source, nn.Sequential(nn.Conv2d(1, 2, 3)), torch.randn(1, 3, 44, 44))
    other, _ = _classic_pair(cin=2)
    with pytest.raises(ValueError, match=r"has 1 channels, but the source takes 2 \(its first conv 'enc0\.0'\)"):
        copy_weights(other, target, torch.randn(1, 1, 44, 44))


@pytest.mark.parametrize(
    ("example", "match"),
    [
        ([[1.0]], "example_input must be a torch.Tensor"),
        (torch.ones(1, 1, 44, 44, dtype=torch.int64), "must be a floating-point tensor"),
        (torch.ones(44), "must be a floating-point tensor"),
        (torch.randn(1, 1, 44, 44, dtype=torch.float64), r"the weights are torch.float32: pass example_input.to"),
    ],
    ids=["list", "int64", "1-d", "float64"],
)
def test_copy_weights_refuses_an_example_it_cannot_run(example: Any, match: str) -> None:
    source, target = _classic_pair()
    with pytest.raises(ValueError, match=match):
        copy_weights(source, target, example)


def test_copy_weights_wrong_size_is_an_input_shape_error() -> None:
    source, target = _classic_pair()
    with pytest.raises(InputShapeError, match="nearest valid"):
        copy_weights(source, target, torch.randn(1, 1, 45, 45))


def test_copy_weights_finds_a_source_whose_output_is_not_its_layers() -> None:
    source, target = _classic_pair()
    source.register_forward_hook(lambda m, args, out: out + 1.97)
    with pytest.raises(UnsupportedModelError, match=r"differ by up to 1\.97.*forward hooks"):
        copy_weights(source, target, torch.randn(1, 1, 44, 44))


@pytest.mark.parametrize("which", ["source", "target"])
def test_copy_weights_takes_modules(which: str) -> None:
    source, target = _classic_pair()
    args = {"source": source, "target": target} | {which: "model.pt"}
    with pytest.raises(ValueError, match=f"{which} must be a torch nn.Module, not str"):
        copy_weights(args["source"], args["target"], torch.randn(1, 1, 44, 44))


@pytest.mark.parametrize("change", ["no heads", "stage replaced", "kernel text", "extra buffer"])
def test_convert_of_a_peer_changed_after_it_was_built_is_refused(change: str) -> None:
    peer = _small_nnunet()
    if change == "no heads":
        del peer.decoder.seg_layers
    elif change == "stage replaced":
        peer.decoder.stages[0] = nn.Identity()
    elif change == "kernel text":
        peer.encoder.kernel_sizes = "abc"
    else:
        peer.encoder.stages[0][0].convs[0].conv.register_buffer("extra", torch.zeros(2))
    with pytest.raises(UnsupportedModelError, match=r"PlainConvUNet: (not the structure|layer 0)"):
        convert(peer)


@pytest.mark.parametrize("value", ["no", 1, None])
def test_convert_ignore_dropout_is_a_bool(value: Any) -> None:
    with pytest.raises(ValueError, match=r"ignore_dropout=.* must be true or false"):
        convert(_small_nnunet(), ignore_dropout=value)


def test_copy_weights_refuses_a_non_finite_example() -> None:
    source, target = _classic_pair()
    x = torch.randn(1, 1, 44, 44)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="example_input holds NaN or infinity"):
        copy_weights(source, target, x)


@pytest.mark.parametrize(("module", "names"), [("monai", ()), (None, ("X",)), ("monai", (3,)), ("", ("X",))])
def test_register_converter_checks_its_names(module: Any, names: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="register_converter"):
        register_converter(module, *names)
    with pytest.raises(ValueError, match="register_refusal"):
        register_refusal(module, *names, reason="is not a U-Net")
