"""An inference fast path: batch norm folded into the convolutions, channels-last memory layout
and, optionally, `torch.compile`. Outputs equal the eager model's (to float rounding)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .unet import UNet

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYOUT = {2: torch.channels_last, 3: torch.channels_last_3d}


def fold_batch_norm_(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a conv in a `Sequential` into that conv (eval
    statistics; the conv gets new weight and bias parameters), replacing it by `Identity`.
    Returns the number of folded norms."""
    folded = 0
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, norm = seq[i], seq[i + 1]
            if isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats:
                # torch's fuse_conv_bn_eval, without its deep copy of the conv (weights included)
                stats = (norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias)
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, *stats)
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded


class InferenceUNet(nn.Module):
    """A `UNet` prepared for inference; `forward` takes and returns ordinary (contiguous) tensors.
    It stays in eval mode (`train()` keeps it there): it may share tensors with the model it was
    made from, whose batch-norm statistics must not move."""

    def __init__(self, model: UNet, memory_format: torch.memory_format | None) -> None:
        super().__init__()
        self.model, self.memory_format = model, memory_format
        self.config = model.config

    def train(self, mode: bool = True) -> InferenceUNet:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is None:
            return self.model(x)
        y = self.model(x.contiguous(memory_format=self.memory_format))
        return y.contiguous()


def optimize_for_inference(
    model: UNet,
    *,
    fold_batch_norm: bool = True,
    channels_last: bool | None = None,
    compile: bool = False,
    compile_kwargs: dict | None = None,
) -> nn.Module:
    """A copy of `model` for fast inference; the original is left untouched.

    Memory: the copy shares the tensors it does not change with `model` (new `Parameter`
    objects over the same storage, so nothing done to the copy reaches the original); folded
    convs and, with `channels_last`, every 4D/5D weight get their own storage: for a 2D/3D model
    on CPU or CUDA that is about the model's parameter memory once more while the copy lives.
    Make the copy after training: weights changed in place later (an optimizer step) change the
    copy's shared tensors too, not its folded or relaid ones.

    - eval mode (kept: `train()` leaves it in eval mode), gradients off for every parameter;
    - `fold_batch_norm`: conv -> BatchNorm pairs become one conv (no effect on other norms);
    - `channels_last`: NHWC/NDHWC layout, which oneDNN (CPU) and cuDNN run faster for 2D and 3D
      convs; `None` = on for 2D/3D models on CPU and CUDA;
    - `compile`: wrap in `torch.compile(**compile_kwargs)`; the first call per input shape then
      compiles (15-35 s on CPU), later calls may be faster (measured on 2 CPU cores: no faster
      for 2D tiles, about 10% for 3D tiles; docs/tiling.md).
    """
    if not isinstance(model, UNet):
        raise TypeError(f"optimize_for_inference expects a unetgen UNet, got {type(model).__name__}")
    shared: dict[int, Any] = {id(p): nn.Parameter(p.detach(), requires_grad=False) for p in model.parameters()}
    shared.update((id(b), b.detach()) for b in model.buffers())
    fast = copy.deepcopy(model, shared).eval()
    if fold_batch_norm:
        fold_batch_norm_(fast)
    dims = model.config.spatial_dims
    device = next(fast.parameters()).device
    if channels_last is None:
        channels_last = dims in _LAYOUT and device.type in ("cpu", "cuda")
    if channels_last and dims not in _LAYOUT:
        raise ValueError(f"channels_last needs spatial_dims 2 or 3, got spatial_dims={dims}")
    layout = _LAYOUT[dims] if channels_last else None
    if layout is not None:
        fast = fast.to(memory_format=layout)
    wrapped: nn.Module = InferenceUNet(fast, layout)
    if compile:
        wrapped = torch.compile(wrapped, **(compile_kwargs or {}))
    return wrapped
