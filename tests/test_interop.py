"""unetgen.interop without the peers: nnU-Net plans in both formats, the way back, the generic
`copy_weights` fallback on a hand-written classic, and `unetgen import nnunet`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from unetgen import build_unet, load_config, output_shape
from unetgen.cli import main
from unetgen.interop import (
    UnsupportedModelError,
    copy_weights,
    from_nnunet_plans,
    to_nnunet_architecture,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny maps: threads only add overhead


# nnU-Net v2.0-2.2 format (the network keys in the configuration) ...
OLD_3D = {
    "data_identifier": "nnUNetPlans_3d_fullres",
    "batch_size": 2,
    "patch_size": [40, 224, 192],
    "UNet_class_name": "PlainConvUNet",
    "UNet_base_num_features": 32,
    "n_conv_per_stage_encoder": [2, 2, 2, 2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2, 2, 2, 2],
    "num_pool_per_axis": [3, 5, 5],
    "pool_op_kernel_sizes": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
    "conv_kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "unet_max_num_features": 320,
}
# ... and v2.3+ (an `architecture` block), for the same network
NEW_3D = {
    "data_identifier": "nnUNetPlans_3d_fullres",
    "batch_size": 2,
    "patch_size": [40, 224, 192],
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": 6,
            "features_per_stage": [32, 64, 128, 256, 320, 320],
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": OLD_3D["conv_kernel_sizes"],
            "strides": OLD_3D["pool_op_kernel_sizes"],
            "n_conv_per_stage": [2, 2, 2, 2, 2, 2],
            "n_conv_per_stage_decoder": [2, 2, 2, 2, 2],
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    },
}


def _plans(**configurations: Any) -> dict[str, Any]:
    return {"dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "configurations": configurations}


def test_both_plans_formats_give_the_same_config() -> None:
    old = from_nnunet_plans(_plans(c=OLD_3D), "c", in_channels=2, out_channels=4)
    new = from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=2, out_channels=4)
    assert old == new
    assert old.channels == (32, 64, 128, 256, 320, 320)
    assert old.strides == tuple(tuple(s) for s in OLD_3D["pool_op_kernel_sizes"][1:])
    assert old.deep_supervision == (1, 2, 3, 4)
    assert old.down.type == "first_conv" and old.padding == "same"
    plain = from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=2, out_channels=4, deep_supervision=False)
    assert plain.deep_supervision == ()
    assert output_shape(plain, (40, 224, 192)) == (40, 224, 192)


def test_inherits_from_and_file_input(tmp_path: Path) -> None:
    child = {"inherits_from": "3d_fullres", "batch_size": 4, "patch_size": [48, 224, 192]}
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(_plans(**{"3d_fullres": NEW_3D, "3d_bs4": child})))
    assert from_nnunet_plans(path, "3d_bs4", in_channels=1, out_channels=2) == from_nnunet_plans(
        path, "3d_fullres", in_channels=1, out_channels=2
    )
    changed = copy.deepcopy(child)
    changed["architecture"] = copy.deepcopy(NEW_3D["architecture"])
    changed["architecture"]["arch_kwargs"]["nonlin"] = "torch.nn.ReLU"
    path.write_text(json.dumps(_plans(**{"3d_fullres": NEW_3D, "x": changed})))
    assert from_nnunet_plans(path, "x", in_channels=1, out_channels=2).activation.type == "relu"


@pytest.mark.parametrize(
    ("plans", "configuration", "error", "match"),
    [
        (_plans(c=OLD_3D), "3d", ValueError, "no configuration '3d'; available: c"),
        (_plans(a={"inherits_from": "b"}, b={"inherits_from": "a"}), "a", ValueError, "circle: a -> b -> a"),
        (_plans(c={**OLD_3D, "UNet_class_name": "MyUNet"}), "c", UnsupportedModelError, "MyUNet"),
        (_plans(c={"patch_size": [1]}), "c", ValueError, "neither an 'architecture' block"),
        ({"foo": 1}, "c", ValueError, "no 'configurations'"),
        (
            _plans(c={"architecture": {**NEW_3D["architecture"], "network_class_name": "my.nets.SwinUNETR"}}),
            "c",
            UnsupportedModelError,
            "SwinUNETR",
        ),
        (
            _plans(c={"architecture": {**NEW_3D["architecture"], "arch_kwargs": {
                **NEW_3D["architecture"]["arch_kwargs"], "norm_op": "torch.nn.LocalResponseNorm"}}}),
            "c",
            UnsupportedModelError,
            "LocalResponseNorm",
        ),
        (
            _plans(c={"architecture": {**NEW_3D["architecture"], "arch_kwargs": {
                **NEW_3D["architecture"]["arch_kwargs"], "dropout_op": "torch.nn.Dropout3d",
                "dropout_op_kwargs": {"p": 0.2}}}}),
            "c",
            UnsupportedModelError,
            "dropout_op",
        ),
        (
            _plans(c={"architecture": {**NEW_3D["architecture"], "arch_kwargs": {
                **NEW_3D["architecture"]["arch_kwargs"], "kernel_sizes": [[3, 3, 3]] * 5}}}),
            "c",
            ValueError,
            "kernel_sizes=.* needs 6 entries",
        ),
    ],
)  # fmt: skip
def test_plans_errors(plans: dict[str, Any], configuration: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        from_nnunet_plans(plans, configuration, in_channels=1, out_channels=2)


def test_plans_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "plans.json"
    bad.write_text('{"configurations": NaN}')
    with pytest.raises(ValueError, match="not a JSON plans file"):
        from_nnunet_plans(bad, "c", in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match="cannot read"):
        from_nnunet_plans(tmp_path / "missing.json", "c", in_channels=1, out_channels=2)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (4 * 1024 * 1024 + 1))
    with pytest.raises(ValueError, match="larger than"):
        from_nnunet_plans(big, "c", in_channels=1, out_channels=2)


def test_to_nnunet_architecture_round_trip() -> None:
    config = from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=1, out_channels=2)
    arch = to_nnunet_architecture(config)
    assert arch["network_class_name"] == NEW_3D["architecture"]["network_class_name"]
    assert from_nnunet_plans(_plans(c={"architecture": arch}), "c", in_channels=1, out_channels=2) == config


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"padding": "valid", "down": "max"}, "padding"),
        ({"down": "max"}, "down"),
        ({"merge": "add"}, "merge"),
        ({"deep_supervision": [2]}, "deep_supervision"),
        ({"dropout": {"rate": 0.3}}, "dropout"),
        ({"norm": "layer"}, "norm"),
        ({"norm": {"type": "group", "num_groups": 2}}, "instance or batch"),
    ],
)
def test_to_nnunet_architecture_refuses(change: dict[str, Any], match: str) -> None:
    base = from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=1, out_channels=2)
    config = load_config({**base.model_dump(exclude_unset=True), **change})
    with pytest.raises(UnsupportedModelError, match=match):
        to_nnunet_architecture(config)


# ---------------------------------------------------------------------------------------------
# copy_weights: a hand-written classic (valid 3x3 convs, max pooling, 2x2 up-convolutions) that
# concatenates (up, skip), the other way round from unetgen


class Classic(nn.Module):
    def __init__(self, cin: int = 1, base: int = 4, cout: int = 2) -> None:
        super().__init__()

        def two(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3), nn.BatchNorm2d(b), nn.ReLU(), nn.Conv2d(b, b, 3), nn.ReLU())

        self.enc0, self.enc1, self.mid = two(cin, base), two(base, 2 * base), two(2 * base, 4 * base)
        self.up1, self.dec1 = nn.ConvTranspose2d(4 * base, 2 * base, 2, 2), two(4 * base, 2 * base)
        self.up0, self.dec0 = nn.ConvTranspose2d(2 * base, base, 2, 2), two(2 * base, base)
        self.out = nn.Conv2d(base, cout, 1)

    @staticmethod
    def crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        dh, dw = (x.shape[2] - like.shape[2]) // 2, (x.shape[3] - like.shape[3]) // 2
        return x[:, :, dh : dh + like.shape[2], dw : dw + like.shape[3]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.enc0(x)
        s1 = self.enc1(nn.functional.max_pool2d(s0, 2))
        m = self.mid(nn.functional.max_pool2d(s1, 2))
        u = self.up1(m)
        d1 = self.dec1(torch.cat([u, self.crop(s1, u)], 1))
        u = self.up0(d1)
        return self.out(self.dec0(torch.cat([u, self.crop(s0, u)], 1)))


def _classic_config(**change: Any) -> dict[str, Any]:
    return {"depth": 2, "base_channels": 4, "norm": "none", "dropout": {"rate": 0}, "init": "torch", **change}


def test_copy_weights_pairs_a_hand_written_classic() -> None:
    torch.manual_seed(0)
    source = Classic().double()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 2)
    # unetgen's block has norm after every conv; the classic after the first only: no config
    # expresses that, so the pairing must refuse it ...
    target = build_unet(_classic_config(norm="batch", bias=True), dtype=torch.float64)
    x = torch.randn(1, 1, 44, 44, dtype=torch.float64)
    with pytest.raises(UnsupportedModelError, match="parametric layers"):
        copy_weights(source, target, x)
    # ... while the same classic without its batch norms pairs exactly, concat order included
    for name in ("enc0", "enc1", "mid", "dec1", "dec0"):
        getattr(source, name)[1] = nn.Identity()
    target = build_unet(_classic_config(), dtype=torch.float64)
    copy_weights(source, target, x)
    source.eval(), target.eval()
    with torch.no_grad():
        assert float((source(x) - target(x)).abs().max()) < 1e-12


def test_copy_weights_names_the_first_unpairable_layer() -> None:
    source = Classic()
    for name in ("enc0", "enc1", "mid", "dec1", "dec0"):
        getattr(source, name)[1] = nn.Identity()
    target = build_unet(_classic_config(base_channels=5))
    with pytest.raises(UnsupportedModelError, match=r"cannot pair source layer 'enc0\.0'"):
        copy_weights(source, target, torch.randn(1, 1, 44, 44))
    # same shapes, different function (padding): found by the numerical check
    target = build_unet(_classic_config(padding="same"))
    with pytest.raises(UnsupportedModelError, match="not the same function"):
        copy_weights(source, target, torch.randn(1, 1, 48, 48))


# ---------------------------------------------------------------------------------------------
# unetgen import nnunet


def test_cli_import_nnunet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps(_plans(**{"3d_fullres": OLD_3D})))
    out = tmp_path / "model.yaml"
    args = ["import", "nnunet", str(plans), "--configuration", "3d_fullres", "--in-channels", "1"]
    assert main([*args, "--out-channels", "3", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    text = out.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=") and first.endswith("schemas/unet-config.schema.json")
    assert "patch size [40, 224, 192] is valid" in text
    assert load_config(out) == from_nnunet_plans(plans, "3d_fullres", in_channels=1, out_channels=3)
    assert isinstance(yaml.safe_load(text), dict)
    # errors: one line, exit 1
    assert main([*args, "--out-channels", "3", "-o", str(out), "--configuration", "2d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no configuration '2d'" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as usage:  # a bad option value is a usage error: exit 2
        main([*args, "--out-channels", "0", "-o", str(out)])
    assert usage.value.code == 2
    assert "--out-channels: 0 must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main([*args, "--out-channels", "3", "-o", str(tmp_path / "model.txt")])
    assert usage.value.code == 2 and "must end in .yaml" in capsys.readouterr().err


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


@given(key=st.sampled_from([*NEW_3D["architecture"]["arch_kwargs"], "extra"]), value=JSON)
def test_hostile_arch_kwargs_raise_value_error(key: str, value: Any) -> None:
    conf = copy.deepcopy(NEW_3D)
    conf["architecture"]["arch_kwargs"][key] = value
    try:
        config = from_nnunet_plans(_plans(c=conf), "c", in_channels=1, out_channels=2)
    except ValueError:
        return
    assert config.spatial_dims == 3


@given(key=st.sampled_from(list(OLD_3D)), value=JSON)
def test_hostile_old_format_raises_value_error(key: str, value: Any) -> None:
    conf = {**OLD_3D, key: value}
    try:
        from_nnunet_plans(_plans(c=conf), "c", in_channels=1, out_channels=2)
    except ValueError:
        pass


def test_cli_import_schema_url_and_output_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps(_plans(**{"3d_fullres": NEW_3D})))
    base = [
        "import",
        "nnunet",
        str(plans),
        "--configuration",
        "3d_fullres",
        "--in-channels",
        "1",
        "--out-channels",
        "2",
    ]
    out = tmp_path / "m.yml"
    assert main([*base, "-o", str(out), "--schema", "https://example.org/unet.schema.json"]) == 0
    assert out.read_text().splitlines()[0] == "# yaml-language-server: $schema=https://example.org/unet.schema.json"
    with pytest.raises(SystemExit) as usage:  # argparse: usage errors exit 2
        main([*base, "-o", str(tmp_path / "m.json")])
    assert usage.value.code == 2 and "must end in .yaml or .yml" in capsys.readouterr().err
