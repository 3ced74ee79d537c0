"""Export a `UNet` for deployment: TorchScript (by tracing) and ONNX with dynamic batch and spatial axes.

Why tracing rather than `torch.jit.script`: `UNet.forward` checks the input with the pydantic
config and `unetgen.shapes`, `SkipMerge` dispatches on the config with `match`, and the
decoder indexes `ModuleList`/`ModuleDict` with loop variables; TorchScript's compiler accepts
none of these. Tracing records the tensor operations of one eval-mode call instead. The graph
is the same for every input size because the only size-dependent values, the centre crops
of the skips, are computed from traced `shape` reads; the tests check traced and ONNX models
against eager ones at two different valid sizes. Traced and exported models skip the input
check, so feed them sizes from `unetgen.shapes.valid_input_sizes`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .analysis import shapes
from .model.unet import UNet


def example_input(
    model: UNet, *, batch: int = 1, periods: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """A random input of the smallest valid spatial size plus `periods` periods on every axis,
    on the model's device and in its dtype unless `device` is given."""
    cfg = model.config
    size = [s + periods * shapes.axis_rule(cfg, a).period for a, s in enumerate(shapes.min_input_shape(cfg))]
    ref = next(model.parameters())
    return torch.randn(batch, cfg.in_channels, *size, device=device or ref.device, dtype=ref.dtype)


def to_torchscript(model: UNet, example: torch.Tensor | None = None) -> torch.jit.ScriptModule:
    """A TorchScript module (traced in eval mode) computing `model`'s eval-mode output for any
    valid input size and batch; save it with `torch.jit.save`. `model`'s mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.jit.trace(model, example if example is not None else example_input(model), check_trace=False)
    finally:
        model.train(was_training)


def to_onnx(
    model: UNet, path: str | Path, *, example: torch.Tensor | None = None, opset_version: int | None = None
) -> Path:
    """Write `model` (eval mode) as ONNX with dynamic batch and spatial axes and return the path.

    The input is named "input" (N, C, *spatial) and the output "output"; spatial axes are
    named `in_<axis>` and `out_<axis>` because valid padding makes them differ. Uses PyTorch's
    TorchScript-based exporter (`dynamo=False`): the torch.export-based one would need the
    valid-size rule `offset + period * b` stated as symbolic shape constraints, and needs
    onnxscript. Running the file needs onnxruntime (`pip install unetgen[export]`)."""
    dims = model.config.spatial_dims
    axes_in = {0: "batch", **{2 + a: f"in_{a}" for a in range(dims)}}
    axes_out = {0: "batch", **{2 + a: f"out_{a}" for a in range(dims)}}
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            # instance norm always normalises with its input's statistics, in eval mode too
            warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True", category=UserWarning)
            torch.onnx.export(
                model,
                (example if example is not None else example_input(model),),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes_in, "output": axes_out},
                opset_version=opset_version,
            )
    finally:
        model.train(was_training)
    return Path(path)
