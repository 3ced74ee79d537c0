"""Export: TorchScript (traced) and ONNX (onnxruntime, dynamic batch and spatial axes) agree with
eager at two different valid sizes, for every preset and a few option-covering variants;
`torch.compile` runs a full-graph training step."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from small import small_presets

from unetgen import UNetConfig, build_unet, output_shape
from unetgen.export import example_input, to_onnx, to_torchscript

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: threads only add overhead

MONAI_UNET = {  # MONAI's UNet with num_res_units=2 and AttentionUnet's gate and decoder norm
    "depth": 2, "channels": [2, 3, 4], "strides": [[2, 2], [1, 1]], "stem_stride": 2, "resample_bottleneck": False,
    "padding": "same", "down": "first_conv", "decoder_convs_per_block": 0, "norm": "batch", "activation": "prelu",
    "block": {"type": "residual", "shortcut": "conv", "last_activation": "before_sum"}, "decoder_block": "plain",
    "up": {"type": "transpose", "kernel_size": 3, "norm_act": True, "residual_unit": True},
    "head": {"type": "transpose", "norm_act": True, "residual_unit": True},
    "merge": {"type": "attention", "psi_norm": True, "branch_order": "gate_first"}, "decoder_norm": "instance",
}  # fmt: skip
RESNET_UNET = {  # segmentation_models_pytorch's Unet with a ResNet-50-style encoder
    "depth": 2, "channels": [4, [2, 2, 4], [2, 2, 6]], "blocks_per_level": [0, 1, 2], "convs_per_block": 3,
    "stem": True, "stem_stride": 2, "kernel_size": [7, 3, 3], "down": {"type": "first_conv", "first_step": "max_pool"},
    "padding": "same", "norm": "batch", "block": {"type": "residual", "bottleneck": True}, "decoder_block": "plain",
    "decoder_channels": [3, 4], "decoder_convs_per_block": 2, "decoder_kernel": "level_below",
    "up": {"type": "nearest", "conv": "when_channels_change"}, "up_channels": "keep",
    "merge": {"type": "concat", "order": "up_first"},
    "head": {"type": "upsample", "channels": [2, 2], "kernel_size": 3},
}  # fmt: skip
VARIANTS = {
    "residual-attention-linear-2d": {
        "depth": 2,
        "base_channels": 2,
        "block": "residual",
        "merge": "attention",
        "up": "linear",
        "norm": {"type": "group", "num_groups": 1},
        "activation": "gelu",
    },
    "anisotropic-3d": {
        "spatial_dims": 3,
        "depth": 2,
        "base_channels": 2,
        "strides": [[1, 2, 2], [2, 2, 2]],
        "kernel_size": [[1, 3, 3], 3, 3],
        "down": "conv",
        "up": "nearest",
        "norm": "instance",
        "up_channels": "keep",
    },
    "same-preact-deep-supervision": {
        "depth": 3,
        "base_channels": 2,
        "padding": "same",
        "block": {"type": "residual", "preactivation": True},
        "norm": "batch",
        "down": "avg",
        "deep_supervision": [1, 2],
    },
    "peer-options-2d": {  # nnU-Net ResEnc and MONAI options: strided first convs, units, PReLU, ...
        "depth": 2,
        "base_channels": 2,
        "padding": "same",
        "down": "first_conv",
        "stem": True,
        "stem_stride": [2, 1],
        "blocks_per_level": [1, 2, 2],
        "block": {"type": "residual", "shortcut": "resnet_d"},
        "decoder_block": "residual",
        "norm": "batch",
        "norm_position": "after_activation",
        "activation": {"type": "prelu", "num_parameters": "channels"},
        "up": {"type": "transpose", "kernel_size": 3, "norm_act": True, "bias": False},
        "merge": {"type": "concat", "order": "up_first"},
        "decoder_kernel": "level_below",
    },
    "basic-unet-3d": {
        "spatial_dims": 3,
        "depth": 2,
        "channels": [2, 2, 4],
        "up_channels": "half",
        "up": {"type": "linear", "conv": "when_channels_change", "align_corners": True},
        "norm": "instance",
    },
    "add-1d": {"spatial_dims": 1, "depth": 3, "base_channels": 2, "merge": "add", "up": "linear", "out_channels": 3},
    "monai-unet-2d": MONAI_UNET,
    "resnet-unet-2d": RESNET_UNET,
}
CASES = {**{f"preset:{k}": v for k, v in small_presets().items()}, **VARIANTS}


def model_for(name: str) -> torch.nn.Module:
    return build_unet(UNetConfig.model_validate(CASES[name]), seed=0).eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", sorted(CASES))
def test_torchscript_matches_eager(name: str) -> None:
    model = model_for(name).train()
    traced = to_torchscript(model)  # traced at the smallest valid size, batch 1
    assert model.training  # the caller's mode is restored
    model.eval()
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    loaded = torch.jit.load(io.BytesIO(buffer.getvalue()))
    x = example_input(model, periods=1)  # another spatial size
    with torch.no_grad():
        want = model(x)
        got = loaded(x)
    assert got.shape == (1, model.config.out_channels, *output_shape(model.config, tuple(x.shape[2:])))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_runtime_matches_eager(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="ONNX export needs the optional extra: pip install unetgen[export]")
    ort = pytest.importorskip("onnxruntime", reason="ONNX parity needs the optional extra: pip install unetgen[export]")
    model = model_for(name)
    path = to_onnx(model, tmp_path / f"{name}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # tiny networks, as torch's one thread
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape[0] == "batch" and inp.shape[2:] == [f"in_{a}" for a in range(model.config.spatial_dims)]
    for batch, periods in ((2, 0), (1, 1)):  # exported at (1, 0): dynamic batch, then dynamic spatial size
        x = example_input(model, batch=batch, periods=periods)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = model(x)
        assert got.shape == tuple(want.shape)
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)


def test_torch_compile_full_graph_training_step() -> None:
    """Dynamo captures forward (input check skipped while compiling, deep-supervision list output)
    and AOT autograd the backward, without graph breaks. Backend `aot_eager`: inductor works too
    but compiles for over a minute on 2 CPU cores, too slow for the suite."""
    config = UNetConfig(
        depth=2, base_channels=2, norm={"type": "group", "num_groups": 2}, deep_supervision=(1,), dropout={"rate": 0}
    )
    eager, compiled_model = build_unet(config, seed=0), build_unet(config, seed=0)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x = example_input(eager, batch=2)
    for run in (eager, compiled):
        outs = run(x)
        assert isinstance(outs, list) and len(outs) == 2
        sum(o.square().mean() for o in outs).backward()
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
