"""The guard between model and analysis: `network_ops(config)` lists exactly the modules the
real model runs, in order, with their kind, channels, settings and spatial shapes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tests.conftest import DROPOUTS, config_dicts, valid_shapes
from tests.small import small_presets
from unetgen import UNetConfig, build_unet, shapes
from unetgen.analysis import ops
from unetgen.model import layers

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
ACT_TYPES = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.PReLU)
OWN_LAYERS = (layers.PixelShuffle, layers.NearestResize, layers.ChannelLinear)
DROP_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _describe_module(module: nn.Module, dims: int) -> tuple:
    """What an op must say about the module that runs it."""
    match module:
        case nn.modules.conv._ConvNd():
            bias = module.bias is not None
            extra = tuple(module.output_padding) if module.transposed else ()
            return ("conv", module.transposed, module.kernel_size, module.stride, module.padding, bias, extra)
        case _ if isinstance(module, NORM_TYPES):
            affine = module.weight is not None
            groups = module.num_groups if isinstance(module, nn.GroupNorm) else None
            return ("norm", type(module).__name__.rstrip("123d"), affine, groups)
        case _ if isinstance(module, ACT_TYPES):
            return ("act", type(module).__name__, getattr(module, "inplace", False))
        case _ if isinstance(module, DROP_TYPES):
            return ("drop", module.p, type(module) is not nn.Dropout)
        case nn.MaxPool1d() | nn.MaxPool2d() | nn.MaxPool3d() | nn.AvgPool1d() | nn.AvgPool2d() | nn.AvgPool3d():
            mode = "max" if "Max" in type(module).__name__ else "avg"
            per_axis = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims  # noqa: E731
            return ("pool", mode, per_axis(module.kernel_size), per_axis(module.stride))
        case nn.Upsample():
            return ("interpolate", module.mode)
        case layers.PixelShuffle():
            return ("shuffle", module.factors)
        case layers.NearestResize():
            return ("resize", module.grow)
        case nn.Sigmoid():
            return ("sigmoid",)
        case nn.Linear():
            return ("linear", module.in_features, module.out_features, module.bias is not None)
        case nn.AdaptiveAvgPool1d() | nn.AdaptiveAvgPool2d() | nn.AdaptiveAvgPool3d():
            size = module.output_size
            return ("global_pool", size if isinstance(size, int) else tuple(size))
    if type(module).__name__.startswith("ConstantPad"):
        return ("pad",)
    raise AssertionError(f"a leaf module the guard does not know: {type(module).__name__}")


def _describe_op(op: ops.Op, dims: int) -> tuple:
    match op:
        case ops.Conv():
            return (
                "conv",
                op.transposed,
                op.kernel,
                op.stride,
                op.padding,
                op.bias,
                op.output_padding if op.transposed else (),
            )
        case ops.NormOp():
            names = {
                "BatchNorm": "BatchNorm",
                "InstanceNorm": "InstanceNorm",
                "GroupNorm": "GroupNorm",
                "LayerNorm": "GroupNorm",
            }
            groups = op.groups if names[type(op.option).__name__] == "GroupNorm" else None
            return ("norm", names[type(op.option).__name__], op.affine, groups)
        case ops.Act():
            names = {
                "ReLU": "ReLU",
                "LeakyReLU": "LeakyReLU",
                "ELU": "ELU",
                "GELU": "GELU",
                "SiLU": "SiLU",
                "PReLU": "PReLU",
            }
            return ("act", names[type(op.option).__name__], op.inplace)
        case ops.Drop():
            return ("drop", op.rate, op.spatial)
        case ops.Pool():
            return ("pool", op.mode, op.kernel, op.stride)
        case ops.Interpolate():
            return ("interpolate", op.mode)
        case ops.Shuffle():
            return ("shuffle", op.factors)
        case ops.Resize():
            return ("resize", op.grow)
        case ops.Sigmoid():
            return ("sigmoid",)
        case ops.Linear():
            return ("linear", op.in_channels, op.out_channels, op.bias)
        case ops.GlobalPool():
            return ("global_pool", 1)
        case ops.Pad():
            return ("pad",)
    raise AssertionError(f"op {op!r} has no module")


def _is_layer(module: nn.Module) -> bool:
    """A torch layer (or unetgen's N-d pixel shuffle), not one of the model's containers."""
    own = type(module).__module__.startswith("torch.") or isinstance(module, OWN_LAYERS)
    container = isinstance(module, (nn.Sequential, nn.ModuleList))  # an empty Sequential: the identity
    return own and not container and not list(module.children())


def run_and_record(model: nn.Module, x: torch.Tensor) -> list[tuple]:
    """(name, description, in channels, out channels, in spatial, out spatial) of every leaf
    module, in the order the forward pass completes them."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        x_in = args[0]
        seen.append((names[module], x_in.shape[1], out.shape[1], tuple(x_in.shape[2:]), tuple(out.shape[2:])))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _is_layer(m)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


BIG_INPUT = 100_000
"""Voxels from which the guard runs the model on the meta device: it compares modules, channels and
shapes only, and deep 3D valid-padding nets start at 188^3 voxels (seconds on the CPU per example)."""


def check_ops_match_model(config: UNetConfig, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    device = "meta" if math.prod(shape) > BIG_INPUT else "cpu"
    model = build_unet(config, init="torch", device=device).train()
    x = torch.randn(2, config.in_channels, *shape, device=device)
    seen = run_and_record(model, x)
    listed = ops.network_ops(config)
    out = ops.op_shapes(config, shape)
    modules = dict(model.named_modules())
    expected = []
    for op in listed:
        if op.module is None:
            continue
        src = shape if op.inputs[0] == ops.INPUT else out[op.inputs[0]]
        expected.append((op.module, op.in_channels, op.out_channels, tuple(src), out[op.index]))
    assert [s[0] for s in seen] == [e[0] for e in expected]  # the same modules in the same order
    assert seen == expected  # channels and shapes
    for op in listed:
        if op.module is not None:
            assert _describe_op(op, config.spatial_dims) == _describe_module(modules[op.module], config.spatial_dims), (
                op.module
            )
    # every module with parameters or buffers is one op (none is built and left unused)
    leaves = {n for n, m in model.named_modules() if _is_layer(m) and (list(m.parameters()) or list(m.buffers()))}
    assert leaves <= {op.module for op in listed}
    assert out[-1] == shapes.output_shape(config, shape)


@given(data=st.data())
def test_ops_match_the_model(data: st.DataObject) -> None:
    raw = data.draw(config_dicts(max_depth=3))
    if data.draw(st.booleans()):  # dropout everywhere it can be, element-wise or per channel
        raw["dropout"] = {"rate": 0.25, **data.draw(st.sampled_from(DROPOUTS)), "spatial": data.draw(st.booleans())}
        if raw["dropout"].get("after") == "norm" and raw.get("norm") == "none":
            raw["dropout"]["after"] = "conv"
    if data.draw(st.booleans()) and raw.get("norm") != "none":
        raw["norm"] = data.draw(st.sampled_from(["instance", {"type": "instance", "affine": True}]))
    config = UNetConfig.model_validate(raw)
    shape = data.draw(valid_shapes(config, max_steps=1))
    try:
        shapes.output_shape(config, shape)
    except shapes.InputShapeError:  # instance norm on a 1-element map
        shape = shapes.min_input_shape(config)
    check_ops_match_model(config, shape)


@pytest.mark.parametrize("name", sorted(small_presets()))
def test_ops_match_every_preset(name: str) -> None:
    config = small_presets()[name]
    check_ops_match_model(config, shapes.min_input_shape(config))


def test_parameters_are_the_sum_over_ops() -> None:
    config = small_presets()["ronneberger2015"]
    model = build_unet(config)
    assert sum(op.parameters for op in ops.network_ops(config)) == sum(p.numel() for p in model.parameters())


@given(data=st.data())
def test_group_norm_rule_agrees_with_the_model(data: st.DataObject) -> None:
    """The config refuses a group norm exactly when some norm layer of the model would see a
    channel count that `num_groups` does not divide (whatever `norm_position` puts where)."""
    raw = data.draw(config_dicts(max_depth=3))
    raw["norm"] = {"type": "group", "num_groups": 1}
    try:
        loose = UNetConfig.model_validate(raw)
    except Exception:  # another rule refused it (for instance half up-channels of 1)
        return
    groups = data.draw(st.integers(2, 4))
    seen = {op.in_channels for op in ops.network_ops(loose) if isinstance(op, ops.NormOp)}
    try:
        UNetConfig.model_validate({**raw, "norm": {"type": "group", "num_groups": groups}})
    except Exception as err:
        assert f"num_groups={groups} does not divide" in str(err)
        assert any(ch % groups for ch in seen)
    else:
        assert all(ch % groups == 0 for ch in seen)
