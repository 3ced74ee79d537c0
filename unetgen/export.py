"""Export a `UNet` for deployment: TorchScript (by tracing) and ONNX with dynamic batch and spatial axes.

Why tracing rather than `torch.jit.script`: `UNet.forward` checks the input with the pydantic
config and `unetgen.shapes`, `SkipMerge` dispatches on the config with `match`, and the
decoder indexes `ModuleList`/`ModuleDict` with loop variables; TorchScript's compiler accepts
none of these. Tracing records the tensor operations of one eval-mode call instead. The graph
is the same for every input size because the only size-dependent values, the centre crops
of the skips, are computed from traced `shape` reads; the tests check traced and ONNX models
against eager ones at two different valid sizes. Traced and exported models skip the input
check, so feed them sizes from `unetgen.shapes.valid_input_sizes`; the `example` given to
`to_torchscript` and `to_onnx` is checked here instead (a tensor of the model's dtype and device,
(N, in_channels, *valid spatial shape); channels that look last are named).

`to_onnx` writes through an exclusive temporary beside the target and a rename (`unetgen.atomic`):
a failure leaves what was at the path and no partial file; it replaces only an ONNX file it
wrote (its metadata entry ``unetgen``: `unetgen.outputs`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import atomic
from .analysis import shapes
from .config.unet_config import UNetConfig
from .model.unet import UNet
from .outputs import MARK, SOFTWARE, check_replaceable
from .reprs import short_repr

MAX_ONNX_BYTES = 2**31 - 2**26
"""Most weight bytes `to_onnx` exports: one ONNX protobuf holds at most 2 GiB (less some room for the graph)."""


def example_input(
    model: UNet, *, batch: int = 1, periods: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """A random input of the smallest valid spatial size plus `periods` periods on every axis,
    on the model's device and in its dtype unless `device` is given."""
    cfg = _config(model, "example_input")
    for name, value, low in (("batch", batch, 1), ("periods", periods, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 2**20:
            raise ValueError(f"{name}={short_repr(value)} must be an int from {low} to {2**20:,}")
    size = [s + periods * shapes.axis_rule(cfg, a).period for a, s in enumerate(shapes.min_input_shape(cfg))]
    ref = next(model.parameters())
    return torch.randn(batch, cfg.in_channels, *size, device=device or ref.device, dtype=ref.dtype)


def _config(model: Any, what: str) -> UNetConfig:
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, UNetConfig):
        raise ValueError(
            f"{what} needs a unetgen UNet (from build_unet or load_unet), not {type(model).__name__}; "
            "for a DDP or compiled wrapper pass its .module or ._orig_mod"
        )
    return config


def channels_last_hint(shape: tuple[int, ...], in_channels: int, spatial_dims: int) -> str:
    """`` (the channels look last ...: move them first with ...)`` when `shape`, which does not have
    `in_channels` channels where they belong, has them on its last axis; else ``""``."""
    if len(shape) < spatial_dims + 1 or shape[-1] != in_channels:
        return ""
    first = 1 if len(shape) == spatial_dims + 2 else 0
    if len(shape) > spatial_dims + 2 or shape[first] == in_channels:
        return ""
    return (
        f"; the channels look last ({', '.join(map(str, shape))}): move them first with "
        f"np.moveaxis(x, -1, {first}) or x.movedim(-1, {first})"
    )


def check_example(model: nn.Module, example: Any, what: str = "example") -> torch.Tensor:
    """`example`, or `ValueError`/`InputShapeError` naming what is wrong: a float tensor on the
    model's device and in its dtype, shaped (N, in_channels, *valid spatial shape), N >= 1."""
    cfg = _config(model, what)
    if not isinstance(example, torch.Tensor):
        shape = getattr(example, "shape", None)
        hint = channels_last_hint(tuple(shape), cfg.in_channels, cfg.spatial_dims) if shape is not None else ""
        raise ValueError(
            f"{what} must be a torch.Tensor (N, {cfg.in_channels}, *spatial), not {type(example).__name__}"
            f"{hint}; convert an array with torch.from_numpy(x)"
        )
    shape, dims = tuple(example.shape), cfg.spatial_dims
    if len(shape) != dims + 2 or shape[1] != cfg.in_channels:
        hint = channels_last_hint(shape, cfg.in_channels, dims)
        unbatched = len(shape) == dims + 1 and (hint or shape[0] == cfg.in_channels)
        batch = f"; {'then ' if hint else ''}add the batch axis with x[None]" if unbatched else ""
        raise shapes.InputShapeError(
            f"{what} of shape {shape} must be (N, in_channels={cfg.in_channels}, {dims} spatial axes){hint}{batch}"
        )
    if shape[0] < 1:
        raise shapes.InputShapeError(f"{what} of shape {shape} holds no image; give a batch of at least 1")
    if isinstance(model, UNet):  # the model's own rule (a mirror-padded net takes other sizes)
        model.check_spatial(shape[2:])
    else:
        shapes.output_shape(cfg, shape[2:])  # an invalid spatial shape: the error names the nearest valid sizes
    ref = next(model.parameters())
    if example.dtype != ref.dtype or example.device != ref.device:
        raise ValueError(
            f"{what} is {str(example.dtype).removeprefix('torch.')} on {example.device} but the model is "
            f"{str(ref.dtype).removeprefix('torch.')} on {ref.device}; use x.to(device, dtype) "
            "(or example_input(model))"
        )
    return example


def to_torchscript(model: UNet, example: torch.Tensor | None = None) -> torch.jit.ScriptModule:
    """A TorchScript module (traced in eval mode) computing `model`'s eval-mode output for any
    valid input size and batch; save it with `torch.jit.save`. `model`'s mode is restored."""
    example = example_input(model) if example is None else check_example(model, example)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.jit.trace(model, example, check_trace=False)
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
    onnxscript. Running the file needs onnxruntime (`pip install unetgen[export]`).

    The file is written to a new file created exclusively beside `path` and renamed over it, so a
    failed export or a full disk leaves what was at `path` and no partial file (an `OSError` names
    `path` and why). Weights above `MAX_ONNX_BYTES` (protobuf's 2 GiB) are refused before export.

    The file carries unetgen's mark, the metadata entry ``unetgen`` (set through onnx), and an
    existing file at `path` is replaced only if it carries it (`unetgen.outputs`); another file or a
    symbolic link there raises `ValueError` (give a new name, or remove it yourself)."""
    p = check_replaceable(path, "the ONNX file")
    example = example_input(model) if example is None else check_example(model, example)
    if opset_version is not None and (isinstance(opset_version, bool) or not isinstance(opset_version, int)):
        raise ValueError(f"opset_version={short_repr(opset_version)} must be an int (e.g. 17) or None")
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if weights > MAX_ONNX_BYTES:
        raise ValueError(
            f"the model's weights are {weights:,} bytes; one ONNX file holds at most {MAX_ONNX_BYTES:,} "
            "(protobuf's 2 GiB limit): export a half-precision copy (model.half()) or use to_torchscript"
        )
    dims = model.config.spatial_dims
    axes_in = {0: "batch", **{2 + a: f"in_{a}" for a in range(dims)}}
    axes_out = {0: "batch", **{2 + a: f"out_{a}" for a in range(dims)}}
    was_training = model.training
    model.eval()
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            # instance norm always normalises with its input's statistics, in eval mode too
            warnings.filterwarnings("ignore", message=".*'instance_norm' is set to train=True", category=UserWarning)
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes_in, "output": axes_out},
                opset_version=opset_version,
            )
    finally:
        model.train(was_training)
    data = _marked_onnx(buffer.getvalue())
    del buffer
    atomic.write_bytes(p, data)
    return p


def _marked_onnx(data: bytes) -> bytes:
    """The serialised ONNX model `data` with unetgen's mark, the metadata entry ``unetgen`` (onnx)."""
    try:
        import onnx
    except ImportError:
        raise ImportError("to_onnx needs onnx: pip install 'unetgen[export]'") from None
    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = MARK, SOFTWARE
    return proto.SerializeToString()
